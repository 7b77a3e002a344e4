//! Damaged checkpoints: `restore(id)` is `Corrupt`, naming the file, and changes nothing;
//! `restore_latest` falls back to the next older valid checkpoint and says so.

mod support;

use std::sync::Arc;
use std::time::Duration;

use state_checkpoint::format::MAGIC;
use state_checkpoint::{
    CheckpointCoordinator, CheckpointId, CheckpointOptions, CheckpointStore, DirStore, Manifest,
    MemoryStore,
};
use state_core::{Entry, ErrorKind, ImportMode, MemoryBackend, StateBackend, StateError, stream};
use support::{assert_same, churn, seed, state};

const SLACK: Duration = Duration::from_millis(2);

/// Damage done to the newest checkpoint's data.
fn damages(file: &[u8], older: &[u8]) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut flipped = file.to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x10;
    let mut future = file.to_vec();
    future[8..10].copy_from_slice(&2u16.to_le_bytes());
    let crc = crc32fast::hash(&future[..12]);
    future[12..16].copy_from_slice(&crc.to_le_bytes());
    let mut foreign = b"PK\x03\x04 this is a zip file, not a checkpoint".to_vec();
    foreign.resize(200, 0);
    assert_eq!(&file[..8], &MAGIC);
    vec![
        ("truncated", file[..file.len() - 10].to_vec(), "truncated"),
        ("empty", Vec::new(), "empty"),
        ("bit flip", flipped, "checksum"),
        ("future version", future, "newer version"),
        ("foreign", foreign, "not a checkpoint"),
        // A whole valid file, but not the one the manifest describes.
        ("swapped", older.to_vec(), "does not match its manifest"),
    ]
}

/// State A at checkpoint 1, B at checkpoint 2, then C; returns the ids and the states.
async fn three_states(
    backend: &dyn StateBackend,
    c: &CheckpointCoordinator,
) -> (CheckpointId, CheckpointId, Vec<Entry>, Vec<Entry>) {
    seed(backend, "k:", 30, "a").await;
    let a = state(backend).await;
    let first = c.checkpoint_now().await.expect("checkpoint 1").id;
    churn(backend, "k:").await;
    let second = c.checkpoint_now().await.expect("checkpoint 2").id;
    backend.put(b"k:after", b"c").await.expect("put");
    backend.delete(b"k:0009").await.expect("delete");
    (first, second, a, state(backend).await)
}

async fn reset(backend: &dyn StateBackend, to: &[Entry]) {
    let entries = stream::iter(to.iter().cloned().map(Ok));
    backend
        .import(entries, ImportMode::Replace)
        .await
        .expect("reset");
}

#[track_caller]
fn assert_corrupt_naming(err: &StateError, name: &str, what: &str) {
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let text = err.to_string();
    assert!(text.contains(name), "`{text}` does not name `{name}`");
    assert!(text.contains(what), "`{text}` does not say `{what}`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_data_is_refused_and_the_older_checkpoint_restored() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let store = Arc::new(MemoryStore::new());
    let c = CheckpointCoordinator::new(backend.clone(), store.clone(), CheckpointOptions::new())
        .expect("coordinator");
    let (first, second, at_first, now) = three_states(backend.as_ref(), &c).await;
    let data = format!("{second}.data");
    let file = store.object(&data).expect("data");
    let older = store.object(&format!("{first}.data")).expect("older data");

    for (damage, bytes, says) in damages(&file, &older) {
        store.put_object(&data, bytes);
        let err = c.restore(second).await.expect_err(damage);
        assert_corrupt_naming(&err, &format!("memory://{data}"), says);
        assert_same(&state(backend.as_ref()).await, &now, SLACK);
        // `verify` is the same first pass, and writes nothing either.
        let err = c.verify(second).await.expect_err(damage);
        assert_corrupt_naming(&err, &format!("memory://{data}"), says);
        assert_eq!(c.verify(first).await.expect(damage).id, first);

        let restored = c.restore_latest().await.expect(damage);
        assert_eq!(restored.id, first, "{damage}");
        assert!(restored.fell_back());
        assert_eq!(restored.skipped.len(), 1);
        let (skipped, why) = &restored.skipped[0];
        assert_eq!(*skipped, second);
        assert_corrupt_naming(why, &data, says);
        assert_same(&state(backend.as_ref()).await, &at_first, SLACK);
        reset(backend.as_ref(), &now).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_manifest_is_refused_and_skipped() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let store = Arc::new(MemoryStore::new());
    let c = CheckpointCoordinator::new(backend.clone(), store.clone(), CheckpointOptions::new())
        .expect("coordinator");
    let (first, second, at_first, now) = three_states(backend.as_ref(), &c).await;
    let name = format!("{second}.manifest.json");
    let json = store.object(&name).expect("manifest");
    let mut manifest: serde_json::Value = serde_json::from_slice(&json).expect("json");
    manifest["format_version"] = serde_json::json!(99);
    let cases = [
        ("garbage", b"{ not json".to_vec(), "not a valid manifest"),
        (
            "future",
            serde_json::to_vec(&manifest).expect("json"),
            "newer version",
        ),
    ];
    for (damage, bytes, says) in cases {
        store.put_object(&name, bytes);
        let err = c.restore(second).await.expect_err(damage);
        assert_corrupt_naming(&err, &name, says);
        assert_same(&state(backend.as_ref()).await, &now, SLACK);
        let restored = c.restore_latest().await.expect(damage);
        assert_eq!((restored.id, restored.skipped.len()), (first, 1));
        assert_eq!(restored.skipped[0].0, second);
        assert_same(&state(backend.as_ref()).await, &at_first, SLACK);
        reset(backend.as_ref(), &now).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_on_disk_is_named_by_its_path() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(dir.path()).expect("dir store"));
    let c = CheckpointCoordinator::new(backend.clone(), store.clone(), CheckpointOptions::new())
        .expect("coordinator");
    let (first, second, at_first, now) = three_states(backend.as_ref(), &c).await;
    let path = dir.path().join(format!("{second}.data"));
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");

    let err = c.restore(second).await.expect_err("truncated");
    assert_corrupt_naming(&err, &format!("{}", path.display()), "truncated");
    assert_same(&state(backend.as_ref()).await, &now, SLACK);
    let restored = c.restore_latest().await.expect("fall back");
    assert_eq!((restored.id, restored.skipped.len()), (first, 1));
    assert_same(&state(backend.as_ref()).await, &at_first, SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_to_restore_says_why_and_changes_nothing() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let store = Arc::new(MemoryStore::new());
    let c = CheckpointCoordinator::new(backend.clone(), store.clone(), CheckpointOptions::new())
        .expect("coordinator");
    let err = c.restore_latest().await.expect_err("empty store");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let missing = CheckpointId { token: 0, seq: 9 };
    let err = c.restore(missing).await.expect_err("no such checkpoint");
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let err = c.verify(missing).await.expect_err("no such checkpoint");
    assert_eq!(err.kind(), ErrorKind::NotFound);

    backend.put(b"k", b"v").await.expect("put");
    let only = c.checkpoint_now().await.expect("checkpoint").id;
    backend.put(b"k", b"w").await.expect("put");
    store.put_object(&format!("{only}.data"), b"junk".to_vec());
    let err = c.restore_latest().await.expect_err("all damaged");
    assert_corrupt_naming(&err, &format!("{only}.data"), "not a checkpoint");
    assert_eq!(
        backend.get(b"k").await.expect("get").as_deref(),
        Some(&b"w"[..])
    );
    // The store lists it as valid (its manifest is fine): only reading the data tells.
    let listing: Vec<Manifest> = store.manifests().await.expect("list").valid;
    assert_eq!(listing.len(), 1);
}
