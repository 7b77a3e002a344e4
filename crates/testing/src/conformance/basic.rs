//! Cases for the plain key-value operations, binary data and metadata.

use serde_json::json;
use state_core::{ErrorKind, Result, Ttl};

use super::ctx::Ctx;
use crate::harness::{entries_stream, expect_kind, keys, show, some, value};

/// Capabilities name the backend and leave room for the suite's keys.
pub async fn capabilities_describe_the_backend(ctx: &Ctx) -> Result<()> {
    let caps = ctx.caps();
    assert!(!caps.backend.is_empty(), "capabilities name no backend");
    assert!(
        caps.max_key_len >= 64,
        "max_key_len {} is below 64 bytes",
        caps.max_key_len
    );
    assert!(
        caps.max_value_len >= 1024,
        "max_value_len {} is below 1 KiB",
        caps.max_value_len
    );
    assert_eq!(
        &ctx.backend().capabilities(),
        caps,
        "capabilities changed between calls"
    );
    Ok(())
}

/// `health_check` answers healthy with a detail.
pub async fn health_check_reports_healthy(ctx: &Ctx) -> Result<()> {
    let health = ctx.backend().health_check().await?;
    assert!(
        health.is_healthy(),
        "health_check is unhealthy: {}",
        health.detail
    );
    assert!(!health.detail.is_empty(), "health_check gives no detail");
    Ok(())
}

/// `put` then `get` returns the value; a second `put` overwrites it.
pub async fn put_then_get_round_trips(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"user:1", b"alice").await?;
    assert_eq!(value(b, b"user:1").await?, some(b"alice"));
    b.put(b"user:1", b"bob").await?;
    assert_eq!(
        value(b, b"user:1").await?,
        some(b"bob"),
        "put must overwrite"
    );
    assert_eq!(b.count(b"").await?, 1, "an overwrite must not add a key");
    Ok(())
}

/// A key never written reads as `None` everywhere.
pub async fn get_of_missing_key_is_none(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"present", b"v").await?;
    assert_eq!(value(b, b"absent").await?, None);
    assert_eq!(
        value(b, b"presen").await?,
        None,
        "a prefix of a key is another key"
    );
    assert_eq!(value(b, b"present!").await?, None);
    assert_eq!(b.ttl(b"absent").await?, Ttl::Missing);
    assert_eq!(b.get_and_delete(b"absent").await?, None);
    Ok(())
}

/// `delete` returns true once for a live key, false afterwards and for a missing key.
pub async fn delete_reports_whether_a_live_key_existed(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"k", b"v").await?;
    b.put(b"other", b"v").await?;
    assert!(b.delete(b"k").await?, "deleting a live key returns true");
    assert_eq!(value(b, b"k").await?, None);
    assert!(!b.delete(b"k").await?, "deleting it again returns false");
    assert!(
        !b.delete(b"never").await?,
        "deleting a missing key returns false"
    );
    assert_eq!(
        value(b, b"other").await?,
        some(b"v"),
        "delete touched another key"
    );
    Ok(())
}

/// Keys and values are arbitrary bytes: 0x00, 0xFF, invalid UTF-8, every byte value.
pub async fn binary_keys_and_values_round_trip(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let long_key: Vec<u8> = every_byte
        .iter()
        .copied()
        .take(ctx.caps().max_key_len)
        .collect();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (vec![0x00], vec![]),
        (vec![0xFF], vec![0x00]),
        (vec![0x00, 0xFF, 0x00], vec![0xFF]),
        (vec![0xFF, 0xFF, 0xFF], vec![0xFF, 0xFF]),
        (vec![0xC3, 0x28], vec![0xC3, 0x28, 0x00]),
        (b"\r\n\t ".to_vec(), b"line\nbreak\0".to_vec()),
        (long_key, every_byte.clone()),
        (b"big".to_vec(), vec![0xFF; 10_000]),
    ];
    for (k, v) in &pairs {
        b.put(k, v).await?;
    }
    for (k, v) in &pairs {
        assert_eq!(value(b, k).await?.as_ref(), Some(v), "get {}", show(k));
    }
    let wanted: Vec<&[u8]> = pairs.iter().map(|(k, _)| &k[..]).collect();
    let got = b.batch_get(&wanted).await?;
    for ((k, v), got) in pairs.iter().zip(got) {
        assert_eq!(got.as_deref(), Some(&v[..]), "batch_get {}", show(k));
    }
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = pairs.clone();
    expected.sort();
    let scanned = ctx.scan(b, b"").await?;
    let scanned: Vec<(Vec<u8>, Vec<u8>)> = scanned
        .iter()
        .map(|e| (e.key.to_vec(), e.value.to_vec()))
        .collect();
    assert_eq!(scanned, expected, "scan of binary keys");
    for prefix in [&[0xFF][..], &[0x00], &[0xFF, 0xFF], &[0x00, 0x01]] {
        let wanted = pairs.iter().filter(|(k, _)| k.starts_with(prefix)).count() as u64;
        assert_eq!(
            b.count(prefix).await?,
            wanted,
            "count under {}",
            show(prefix)
        );
    }
    Ok(())
}

/// An empty value is a value: visible to every read, distinct from a missing key.
pub async fn empty_value_is_stored_not_missing(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"empty", b"").await?;
    assert_eq!(value(b, b"empty").await?, some(b""));
    assert_eq!(b.ttl(b"empty").await?, Ttl::Persistent);
    assert_eq!(b.count(b"").await?, 1);
    assert_eq!(
        b.batch_get(&[b"empty"])
            .await?
            .first()
            .cloned()
            .flatten()
            .as_deref(),
        Some(&b""[..])
    );
    let scanned = ctx.scan(b, b"").await?;
    assert_eq!(keys(&scanned), vec![b"empty".to_vec()]);
    assert!(scanned.iter().all(|e| e.value.is_empty()));
    let exported = ctx.export(b, b"").await?;
    assert_eq!(keys(&exported), vec![b"empty".to_vec()]);
    assert!(
        !b.set_if_not_exists(b"empty", b"x", None).await?,
        "an empty value exists"
    );
    assert_eq!(b.get_and_delete(b"empty").await?.as_deref(), Some(&b""[..]));
    assert_eq!(value(b, b"empty").await?, None);
    Ok(())
}

/// `get_and_delete` returns the value and removes the key, once.
pub async fn get_and_delete_returns_the_value_once(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"job", b"payload").await?;
    assert_eq!(
        b.get_and_delete(b"job").await?.as_deref(),
        Some(&b"payload"[..])
    );
    assert_eq!(
        b.get_and_delete(b"job").await?,
        None,
        "the second call finds nothing"
    );
    assert_eq!(value(b, b"job").await?, None);
    assert_eq!(b.count(b"").await?, 0);
    Ok(())
}

/// With [`Capabilities::metadata`](state_core::Capabilities::metadata), metadata
/// survives export, checkpoint and import, and a plain `put` drops it; without, the write
/// is `Unsupported` and stores nothing.
pub async fn metadata_round_trips_or_is_unsupported(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let meta = json!({"source": "sensor-7", "tags": [1, true, null], "nested": {"x": 1.5}});
    if !ctx.caps().metadata {
        let result = b.put_with_metadata(b"m", b"v", meta).await;
        expect_kind(
            "put_with_metadata without metadata support",
            result,
            ErrorKind::Unsupported,
        );
        assert_eq!(
            value(b, b"m").await?,
            None,
            "an unsupported write stored a value"
        );
        return Ok(());
    }
    b.put_with_metadata(b"m", b"v", meta.clone()).await?;
    assert_eq!(value(b, b"m").await?, some(b"v"));
    let exported = ctx.export(b, b"").await?;
    assert_eq!(exported.len(), 1);
    assert_eq!(
        exported.first().and_then(|e| e.metadata.clone()),
        Some(meta.clone())
    );
    let checkpoint = b.checkpoint().await?;
    assert_eq!(
        checkpoint
            .entries()
            .first()
            .and_then(|e| e.metadata.clone()),
        Some(meta.clone())
    );

    let copy = ctx.sibling("copy").await;
    let written = copy
        .import(entries_stream(exported), state_core::ImportMode::Replace)
        .await?;
    assert_eq!(written, 1);
    let imported = ctx.export(copy.as_ref(), b"").await?;
    assert_eq!(
        imported.first().and_then(|e| e.metadata.clone()),
        Some(meta)
    );

    b.put(b"m", b"plain").await?;
    let exported = ctx.export(b, b"").await?;
    assert_eq!(
        exported.first().and_then(|e| e.metadata.clone()),
        None,
        "put keeps no metadata"
    );
    Ok(())
}
