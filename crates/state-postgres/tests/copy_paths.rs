//! The COPY paths of `export` and of `import(Replace)`: repeated keys in an import stream
//! (the last one wins, whichever path each copy of the key takes), bytes that need care
//! (empty values, 0x00 and 0xFF in keys), metadata and absolute expiry kept exactly, a
//! failing stream leaving the old contents, and the connection usable afterwards.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::json;
use state_core::{
    BoxStream, Entry, ErrorKind, ImportMode, Result, StateBackend, StateError, stream,
};
use state_postgres::PostgresStateBackend;

async fn open(schema: &str, prefix: &[u8]) -> Result<PostgresStateBackend> {
    let config = common::config(schema).await.with_key_prefix(prefix);
    PostgresStateBackend::new(config).await
}

/// A time `offset` from now, whole microseconds (what the table stores).
fn at(offset: Duration, ahead: bool) -> SystemTime {
    let now = SystemTime::now();
    let t = if ahead { now + offset } else { now - offset };
    let micros = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::from_micros(micros)
}

fn entry(key: &[u8], value: &[u8]) -> Entry {
    Entry {
        key: Bytes::copy_from_slice(key),
        value: Bytes::copy_from_slice(value),
        expires_at: None,
        metadata: None,
    }
}

fn boxed(entries: Vec<Result<Entry>>) -> BoxStream<'static, Result<Entry>> {
    Box::pin(futures_util::stream::iter(entries))
}

async fn export(backend: &PostgresStateBackend, prefix: &[u8]) -> Result<Vec<Entry>> {
    stream::try_collect(backend.export(prefix)).await
}

/// What a replace import of `entries` must leave: the last entry of each key, unless it
/// has expired.
fn model(entries: &[Entry]) -> Vec<Entry> {
    let now = SystemTime::now();
    let mut last: BTreeMap<Bytes, Entry> = BTreeMap::new();
    for e in entries {
        last.insert(e.key.clone(), e.clone());
    }
    last.into_values()
        .filter(|e| e.expires_at.is_none_or(|t| t > now))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_import_keeps_the_last_of_repeated_keys() {
    common::in_schema(
        "copydup",
        |schema| async move { repeated_keys(&schema).await },
    )
    .await;
}

async fn repeated_keys(schema: &str) -> Result<()> {
    let backend = open(schema, b"dup:").await?;
    backend.put(b"old", b"replaced away").await?;
    let later = at(Duration::from_secs(3600), true);
    let past = at(Duration::from_secs(60), false);
    let mut entries = vec![
        entry(b"a", b"first"),
        entry(b"b", b"live then expired"),
        Entry {
            expires_at: Some(past),
            ..entry(b"c", b"expired then live")
        },
        entry(b"a", b"second"),
        Entry {
            expires_at: Some(past),
            ..entry(b"b", b"now expired")
        },
        entry(b"c", b"live now"),
        Entry {
            metadata: Some(json!({"v": 1})),
            expires_at: Some(later),
            ..entry(b"m", b"one")
        },
    ];
    // One key written many times, and more repeated keys than an upsert chunk holds,
    // interleaved with fresh keys, so that COPY segments and upsert chunks alternate.
    for i in 0..2500u32 {
        entries.push(entry(format!("twice{i:05}").as_bytes(), b"1"));
    }
    for i in 0..2500u32 {
        entries.push(entry(b"hot", &i.to_be_bytes()));
        entries.push(entry(format!("twice{i:05}").as_bytes(), b"2"));
        entries.push(entry(format!("fresh{i:05}").as_bytes(), b"f"));
    }
    entries.push(Entry {
        metadata: Some(json!({"v": 2})),
        ..entry(b"m", b"two")
    });
    entries.push(entry(b"a", b"third"));
    let expected = model(&entries);
    let written = backend
        .import(
            boxed(entries.into_iter().map(Ok).collect()),
            ImportMode::Replace,
        )
        .await?;
    assert!(written >= expected.len() as u64);
    let after = export(&backend, b"").await?;
    assert_eq!(after.len(), expected.len());
    assert_eq!(after, expected, "the last write of each key wins");
    assert_eq!(backend.get(b"a").await?.as_deref(), Some(&b"third"[..]));
    assert_eq!(backend.get(b"b").await?, None, "an expired repeat deletes");
    assert_eq!(backend.get(b"c").await?.as_deref(), Some(&b"live now"[..]));
    assert_eq!(backend.get(b"old").await?, None);
    assert_eq!(
        backend.get(b"hot").await?.as_deref(),
        Some(&2499u32.to_be_bytes()[..])
    );
    assert_eq!(backend.ttl(b"m").await?, state_core::Ttl::Persistent);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_keep_bytes_metadata_and_expiry_exactly() {
    common::in_schema("copybytes", |schema| async move { exact(&schema).await }).await;
}

async fn exact(schema: &str) -> Result<()> {
    // A prefix that ends in 0xFF, with another namespace right after it in key order.
    let source = open(schema, b"s\xff").await?;
    let neighbour = open(schema, b"t").await?;
    let target = open(schema, b"\x00d:").await?;
    neighbour.put(b"x", b"not exported").await?;
    let later = at(Duration::from_secs(7200), true);
    let entries = vec![
        entry(b"a\x00b", b"0x00 inside"),
        entry(b"\x00", b""),
        entry(b"\x00\x00\xff", &[0, 255, 0]),
        Entry {
            metadata: Some(json!({"source": "kafka", "nested": {"n": [1, 2.5, null]}})),
            ..entry(b"meta", b"m")
        },
        Entry {
            expires_at: Some(later),
            metadata: Some(json!("just a string")),
            ..entry(b"ttl", &vec![7; 100_000])
        },
        entry(&[0xff; 40], b"high"),
    ];
    source
        .import(
            boxed(entries.iter().cloned().map(Ok).collect()),
            ImportMode::Replace,
        )
        .await?;
    let mut expected = entries.clone();
    expected.sort_by(|a, b| a.key.cmp(&b.key));
    let exported = export(&source, b"").await?;
    assert_eq!(
        exported, expected,
        "export returns exactly what was imported"
    );
    assert_eq!(
        export(&source, b"\x00").await?.len(),
        2,
        "export of a sub-prefix"
    );
    // Into another namespace through the COPY path again: the same entries.
    target
        .import(
            boxed(exported.into_iter().map(Ok).collect()),
            ImportMode::Replace,
        )
        .await?;
    assert_eq!(export(&target, b"").await?, expected);
    assert_eq!(export(&neighbour, b"").await?.len(), 1);
    match target.ttl(b"ttl").await? {
        state_core::Ttl::Remaining(left) => assert!(left > Duration::from_secs(7000)),
        other => panic!("the absolute expiry was lost: {other:?}"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_import_stream_leaves_the_old_contents() {
    common::in_schema("copyfail", |schema| async move { failing(&schema).await }).await;
}

async fn failing(schema: &str) -> Result<()> {
    let backend = open(schema, b"f:").await?;
    backend.put(b"kept", b"old").await?;
    let before = export(&backend, b"").await?;
    // Fails inside the first COPY segment, then inside a later one (after repeats made
    // the import write an upsert chunk), then on an entry over the key limit.
    let mut late: Vec<Result<Entry>> = (0..3000u32)
        .map(|i| Ok(entry(format!("r{}", i % 1500).as_bytes(), &i.to_be_bytes())))
        .collect();
    late.push(Err(StateError::corrupt("the checkpoint file is damaged")));
    let too_long = vec![0u8; 70_000];
    let cases = vec![
        vec![
            Ok(entry(b"new", b"x")),
            Err(StateError::corrupt("the checkpoint file is damaged")),
        ],
        late,
        vec![Ok(entry(b"new", b"x")), Ok(entry(&too_long, b"x"))],
    ];
    for (i, entries) in cases.into_iter().enumerate() {
        let outcome = backend.import(boxed(entries), ImportMode::Replace).await;
        let kind = outcome.err().map(|e| e.kind());
        assert!(
            matches!(kind, Some(ErrorKind::Corrupt | ErrorKind::InvalidInput)),
            "case {i}: {kind:?}"
        );
        assert_eq!(export(&backend, b"").await?, before, "case {i}: all-old");
    }
    // The connections are still good for work.
    backend.put(b"after", b"ok").await?;
    assert_eq!(backend.get(b"after").await?.as_deref(), Some(&b"ok"[..]));
    Ok(())
}
