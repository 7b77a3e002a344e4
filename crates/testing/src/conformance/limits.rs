//! Cases for input limits: an empty key, a key or value over the backend's limit is
//! `InvalidInput` naming the limit, raised before anything is written.

use std::time::Duration;

use state_core::{Entry, ErrorKind, FencingToken, ImportMode, Result, StateError};

use super::ctx::Ctx;
use crate::harness::{bytes, entries_stream, expect_kind, keys, some, value};

/// Checks that `result` is `InvalidInput` and its message names `limit`.
#[track_caller]
fn names_limit<T: std::fmt::Debug>(what: &str, result: Result<T>, limit: usize) {
    let err: StateError = expect_kind(what, result, ErrorKind::InvalidInput);
    assert!(
        err.message().contains(&limit.to_string()),
        "{what}: the error does not name the limit {limit}: {err}"
    );
}

/// Every operation that takes a key rejects an empty one with `InvalidInput`.
pub async fn empty_key_is_invalid_input_everywhere(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let k: &[u8] = b"";
    let invalid = ErrorKind::InvalidInput;
    expect_kind("get", b.get(k).await, invalid);
    expect_kind("put", b.put(k, b"v").await, invalid);
    expect_kind(
        "put_with_ttl",
        b.put_with_ttl(k, b"v", Duration::from_secs(1)).await,
        invalid,
    );
    expect_kind("delete", b.delete(k).await, invalid);
    expect_kind("get_and_delete", b.get_and_delete(k).await, invalid);
    expect_kind(
        "set_if_not_exists",
        b.set_if_not_exists(k, b"v", None).await,
        invalid,
    );
    expect_kind(
        "compare_and_swap",
        b.compare_and_swap(k, None, b"v").await,
        invalid,
    );
    expect_kind(
        "put_fenced",
        b.put_fenced(k, b"v", FencingToken(1)).await,
        invalid,
    );
    expect_kind("ttl", b.ttl(k).await, invalid);
    expect_kind("batch_get", b.batch_get(&[k]).await, invalid);
    expect_kind("batch_put", b.batch_put(&[(k, b"v")]).await, invalid);
    expect_kind("batch_delete", b.batch_delete(&[k]).await, invalid);
    let meta = b.put_with_metadata(k, b"v", serde_json::json!(null)).await;
    let kind = if ctx.caps().metadata {
        invalid
    } else {
        ErrorKind::Unsupported
    };
    expect_kind("put_with_metadata", meta, kind);
    assert_eq!(b.count(b"").await?, 0, "an empty key was stored");
    Ok(())
}

/// A key of exactly `max_key_len` bytes works everywhere; one byte more is `InvalidInput`.
pub async fn key_length_limit_is_enforced(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let max = ctx.caps().max_key_len;
    let longest: Vec<u8> = (0..max).map(|i| b'a' + (i % 26) as u8).collect();
    b.put(&longest, b"v").await?;
    assert_eq!(value(b, &longest).await?, some(b"v"));
    assert_eq!(b.count(&longest).await?, 1);
    assert_eq!(keys(&ctx.scan(b, b"").await?), vec![longest.clone()]);
    assert!(b.compare_and_swap(&longest, Some(b"v"), b"w").await?);
    assert!(b.delete(&longest).await?);

    let over = vec![b'k'; max + 1];
    names_limit("put", b.put(&over, b"v").await, max);
    names_limit("get", b.get(&over).await, max);
    names_limit(
        "put_with_ttl",
        b.put_with_ttl(&over, b"v", Duration::from_secs(1)).await,
        max,
    );
    names_limit(
        "set_if_not_exists",
        b.set_if_not_exists(&over, b"v", None).await,
        max,
    );
    names_limit(
        "compare_and_swap",
        b.compare_and_swap(&over, None, b"v").await,
        max,
    );
    names_limit(
        "put_fenced",
        b.put_fenced(&over, b"v", FencingToken(1)).await,
        max,
    );
    names_limit("delete", b.delete(&over).await, max);
    names_limit("ttl", b.ttl(&over).await, max);
    names_limit("batch_get", b.batch_get(&[&over]).await, max);
    assert_eq!(b.count(b"").await?, 0, "an over-long key was stored");
    Ok(())
}

/// A value of `max_value_len + 1` bytes is `InvalidInput` for every write; a large value
/// within the limit round-trips.
pub async fn value_length_limit_is_enforced(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let max = ctx.caps().max_value_len;
    let large = vec![0xA5; max.min(1 << 20)];
    b.put(b"large", &large).await?;
    assert_eq!(
        value(b, b"large").await?.map(|v| v.len()),
        Some(large.len())
    );
    assert_eq!(
        value(b, b"large").await?,
        Some(large),
        "a large value changed"
    );

    let over = vec![0x5A; max + 1];
    names_limit("put", b.put(b"k", &over).await, max);
    names_limit(
        "put_with_ttl",
        b.put_with_ttl(b"k", &over, Duration::from_secs(1)).await,
        max,
    );
    names_limit(
        "set_if_not_exists",
        b.set_if_not_exists(b"k", &over, None).await,
        max,
    );
    names_limit(
        "compare_and_swap",
        b.compare_and_swap(b"k", None, &over).await,
        max,
    );
    names_limit(
        "put_fenced",
        b.put_fenced(b"k", &over, FencingToken(1)).await,
        max,
    );
    names_limit(
        "batch_put",
        b.batch_put(&[(b"j", b"ok"), (b"k", &over)]).await,
        max,
    );
    let stream = entries_stream(vec![Entry::new(bytes(b"k"), over)]);
    names_limit("import", b.import(stream, ImportMode::Merge).await, max);
    assert_eq!(
        b.batch_get(&[b"k", b"j"]).await?,
        vec![None, None],
        "an over-long value was stored"
    );
    Ok(())
}
