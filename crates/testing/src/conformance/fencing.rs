//! Cases for fenced writes: the highest token per key wins, and the mark outlives the value.

use std::time::Duration;

use state_core::{ErrorKind, FencingToken, ImportMode, Result};

use super::ctx::Ctx;
use crate::clock::sleep_past;
use crate::harness::{entries_stream, expect_kind, some, value};

/// A lower token fails with `Fenced` (not retryable) and changes nothing.
pub async fn put_fenced_rejects_a_lower_token_and_keeps_the_value(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_fenced(b"k", b"from-5", FencingToken(5)).await?;
    let result = b.put_fenced(b"k", b"from-3", FencingToken(3)).await;
    let err = expect_kind("put_fenced with a lower token", result, ErrorKind::Fenced);
    assert!(!err.is_retryable(), "a fenced write must not be retried");
    assert_eq!(
        value(b, b"k").await?,
        some(b"from-5"),
        "a rejected write changed the value"
    );
    let result = b.put_fenced(b"k", b"from-0", FencingToken(0)).await;
    expect_kind("put_fenced with token 0", result, ErrorKind::Fenced);
    assert_eq!(value(b, b"k").await?, some(b"from-5"));
    Ok(())
}

/// An equal token may write again; a higher one raises the mark.
pub async fn put_fenced_accepts_equal_and_higher_tokens(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_fenced(b"k", b"a", FencingToken(5)).await?;
    b.put_fenced(b"k", b"b", FencingToken(5)).await?;
    assert_eq!(
        value(b, b"k").await?,
        some(b"b"),
        "an equal token must write"
    );
    b.put_fenced(b"k", b"c", FencingToken(7)).await?;
    assert_eq!(value(b, b"k").await?, some(b"c"));
    let result = b.put_fenced(b"k", b"d", FencingToken(6)).await;
    expect_kind(
        "put_fenced below the raised mark",
        result,
        ErrorKind::Fenced,
    );
    b.put_fenced(b"k", b"e", FencingToken(u64::MAX)).await?;
    assert_eq!(value(b, b"k").await?, some(b"e"), "the largest token");
    Ok(())
}

/// The mark is per key: a high token on one key does not fence another.
pub async fn fences_are_per_key(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_fenced(b"a", b"v", FencingToken(100)).await?;
    b.put_fenced(b"b", b"v", FencingToken(1)).await?;
    b.put_fenced(b"a\0", b"v", FencingToken(1)).await?;
    assert_eq!(value(b, b"b").await?, some(b"v"));
    assert_eq!(value(b, b"a\0").await?, some(b"v"));
    Ok(())
}

/// A plain `put`, a `delete` or expiry of the value does not forget the mark.
pub async fn fence_survives_put_delete_and_expiry(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_fenced(b"k", b"v5", FencingToken(5)).await?;
    b.put(b"k", b"plain").await?;
    assert_eq!(
        value(b, b"k").await?,
        some(b"plain"),
        "a plain put is not fenced"
    );
    expect_kind(
        "after put",
        b.put_fenced(b"k", b"v4", FencingToken(4)).await,
        ErrorKind::Fenced,
    );
    assert!(b.delete(b"k").await?);
    expect_kind(
        "after delete",
        b.put_fenced(b"k", b"v4", FencingToken(4)).await,
        ErrorKind::Fenced,
    );
    assert_eq!(
        value(b, b"k").await?,
        None,
        "a rejected write recreated the key"
    );
    b.put_with_ttl(b"k", b"short", Duration::from_millis(20))
        .await?;
    sleep_past(Duration::from_millis(70)).await;
    expect_kind(
        "after expiry",
        b.put_fenced(b"k", b"v4", FencingToken(4)).await,
        ErrorKind::Fenced,
    );
    b.put_fenced(b"k", b"v5", FencingToken(5)).await?;
    assert_eq!(value(b, b"k").await?, some(b"v5"));
    Ok(())
}

/// `clear` of a prefix forgets the marks under it (only those), as does `import(Replace)`.
pub async fn clear_and_replace_forget_fence_marks(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_fenced(b"f:k", b"v", FencingToken(5)).await?;
    b.clear(b"g:").await?;
    expect_kind(
        "clear of another prefix",
        b.put_fenced(b"f:k", b"v", FencingToken(1)).await,
        ErrorKind::Fenced,
    );
    assert_eq!(b.clear(b"f:").await?, 1);
    b.put_fenced(b"f:k", b"v1", FencingToken(1)).await?;
    assert_eq!(value(b, b"f:k").await?, some(b"v1"), "clear kept the mark");

    b.put_fenced(b"r:k", b"v", FencingToken(9)).await?;
    b.import(entries_stream(Vec::new()), ImportMode::Replace)
        .await?;
    b.put_fenced(b"r:k", b"v2", FencingToken(2)).await?;
    assert_eq!(
        value(b, b"r:k").await?,
        some(b"v2"),
        "import(Replace) kept the mark"
    );
    Ok(())
}
