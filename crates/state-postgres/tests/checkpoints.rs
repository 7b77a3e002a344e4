//! Server-side checkpoints: consistent copies made inside the server, restored in one
//! transaction with their absolute expiry, scoped to the key prefix.

mod common;

use std::time::Duration;

use state_core::{ErrorKind, StateBackend, stream};
use state_postgres::PostgresStateBackend;

const ROWS: usize = 20_000;

async fn open(schema: &str, prefix: &str) -> PostgresStateBackend {
    let config = common::config(schema).await.with_key_prefix(prefix);
    match PostgresStateBackend::new(config).await {
        Ok(b) => b,
        Err(e) => panic!("cannot open the backend: {e}"),
    }
}

async fn snapshot(backend: &PostgresStateBackend) -> Vec<state_core::Entry> {
    match stream::try_collect(backend.export(b"")).await {
        Ok(entries) => entries,
        Err(e) => panic!("export failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_restore_exactly_and_stay_in_their_namespace() {
    common::in_schema("cp", |schema| async move { run(&schema).await }).await;
}

async fn run(schema: &str) -> state_core::Result<()> {
    let backend = open(schema, "a:").await;
    let other = open(schema, "b:").await;
    let keys: Vec<Vec<u8>> = (0..ROWS).map(|i| format!("k{i:06}").into_bytes()).collect();
    for chunk in keys.chunks(1000) {
        let entries: Vec<(&[u8], &[u8])> = chunk.iter().map(|k| (&k[..], &k[1..])).collect();
        backend.batch_put(&entries).await?;
    }
    backend
        .put_with_ttl(b"lasting", b"ttl", Duration::from_secs(3600))
        .await?;
    backend
        .put_with_metadata(b"meta", b"m", serde_json::json!({"source": "kafka"}))
        .await?;
    backend
        .put_with_ttl(b"short", b"gone soon", Duration::from_millis(2000))
        .await?;
    other.put(b"k000001", b"other namespace").await?;

    let before = snapshot(&backend).await;
    let id = backend.create_checkpoint().await?;
    let list = backend.list_checkpoints().await?;
    assert_eq!(list.len(), 1);
    let info = &list[0];
    assert_eq!(info.checkpoint_id, id);
    assert_eq!(info.row_count, before.len() as u64);
    let size: usize = before
        .iter()
        .map(|e| "a:".len() + e.key.len() + e.value.len())
        .sum();
    assert_eq!(info.data_size, size as u64);
    assert!(
        other.list_checkpoints().await?.is_empty(),
        "checkpoints leak across prefixes"
    );

    // Change everything, then wait for the short TTL to pass.
    backend.clear(b"k00").await?;
    backend.put(b"new", b"not in the checkpoint").await?;
    backend.put(b"lasting", b"overwritten").await?;
    testing::clock::sleep_past(Duration::from_millis(2100)).await;

    let restored = backend.restore_checkpoint(id).await?;
    let after = snapshot(&backend).await;
    assert_eq!(restored, after.len() as u64);
    let expected: Vec<_> = before
        .into_iter()
        .filter(|e| &e.key[..] != b"short")
        .collect();
    assert_eq!(
        after, expected,
        "restore is exact, expiry and metadata included"
    );
    assert_eq!(
        backend.get(b"short").await?,
        None,
        "an entry expired since stays absent"
    );
    assert_eq!(
        other.get(b"k000001").await?.as_deref(),
        Some(&b"other namespace"[..]),
        "restore touched another namespace"
    );

    let err = other.restore_checkpoint(id).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));
    assert!(
        other
            .delete_checkpoint(id)
            .await
            .is_ok_and(|deleted| !deleted)
    );
    assert!(backend.delete_checkpoint(id).await?);
    assert!(!backend.delete_checkpoint(id).await?);
    let err = backend.restore_checkpoint(id).await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::NotFound));
    Ok(())
}
