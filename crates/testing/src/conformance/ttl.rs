//! Cases for expiry: millisecond TTLs, clearing on write, invisibility once expired.
//!
//! Sleep-based cases use sub-second TTLs so the whole suite sleeps little. None asserts a
//! speed: where a slow machine could let a key expire before it is read, the case checks
//! the clock before deciding what it expects.

use std::time::Duration;

use state_core::{ErrorKind, FencingToken, MAX_TTL, Result, Ttl};

use super::ctx::Ctx;
use crate::clock::{Stopwatch, sleep_past};
use crate::harness::{expect_kind, keys, some, value};

const HOUR: Duration = Duration::from_secs(3600);

/// Asserts that `ttl` is `Remaining(d)` with `0 < d <= at_most`.
#[track_caller]
fn assert_remaining(what: &str, ttl: Ttl, at_most: Duration) {
    match ttl {
        Ttl::Remaining(left) => assert!(
            !left.is_zero() && left <= at_most,
            "{what}: remaining TTL {left:?} is not in (0, {at_most:?}]"
        ),
        other => panic!("{what}: expected a remaining TTL, got {other:?}"),
    }
}

/// After `put_with_ttl(ttl)`, `ttl()` reports a remaining time in `(0, ttl]`.
pub async fn put_with_ttl_reports_remaining_within_ttl(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"minute", b"v", Duration::from_secs(60))
        .await?;
    assert_remaining("60s TTL", b.ttl(b"minute").await?, Duration::from_secs(60));
    // Sub-millisecond TTLs round up to 1ms instead of becoming zero (which would delete).
    b.put_with_ttl(b"tiny", b"v", Duration::from_micros(1))
        .await?;
    b.put_with_ttl(b"odd", b"v", Duration::from_micros(2_500_100))
        .await?;
    assert_remaining(
        "2.5001s TTL",
        b.ttl(b"odd").await?,
        Duration::from_millis(2_501),
    );
    assert_eq!(value(b, b"minute").await?, some(b"v"));
    Ok(())
}

/// `ttl()` tells a missing key, a persistent key and a key with a lifetime apart.
pub async fn ttl_reports_missing_persistent_and_remaining(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    assert_eq!(b.ttl(b"k").await?, Ttl::Missing);
    b.put(b"k", b"v").await?;
    assert_eq!(
        b.ttl(b"k").await?,
        Ttl::Persistent,
        "a plain put has no expiry"
    );
    b.put_with_ttl(b"k", b"v", HOUR).await?;
    assert_remaining("1h TTL", b.ttl(b"k").await?, HOUR);
    assert!(b.delete(b"k").await?);
    assert_eq!(b.ttl(b"k").await?, Ttl::Missing);
    Ok(())
}

/// A 1ms TTL expires (it is neither rounded to zero nor up to a second).
pub async fn one_millisecond_ttl_expires(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"blink", b"v", Duration::from_millis(1))
        .await?;
    sleep_past(Duration::from_millis(50)).await;
    assert_eq!(
        value(b, b"blink").await?,
        None,
        "a 1ms key is still readable after 50ms"
    );
    assert_eq!(b.ttl(b"blink").await?, Ttl::Missing);
    assert_eq!(b.count(b"").await?, 0);
    Ok(())
}

/// A 300ms TTL keeps the key until it passes, and not after.
pub async fn sub_second_ttl_expires(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let ttl = Duration::from_millis(300);
    let watch = Stopwatch::start();
    b.put_with_ttl(b"short", b"v", ttl).await?;
    let early = value(b, b"short").await?;
    // Only a machine stalled past the TTL may have lost the key already.
    assert!(
        early.is_some() || watch.started().elapsed() >= ttl,
        "a 300ms key vanished after {:?}",
        watch.started().elapsed()
    );
    watch.wait_until(ttl + Duration::from_millis(150)).await;
    assert_eq!(
        value(b, b"short").await?,
        None,
        "a 300ms key is still readable after 450ms"
    );
    assert_eq!(b.ttl(b"short").await?, Ttl::Missing);
    assert_eq!(b.count(b"").await?, 0);
    Ok(())
}

/// `put` over a key with a TTL makes it persistent: it outlives the old TTL.
pub async fn put_clears_an_old_ttl(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"k", b"old", Duration::from_millis(100))
        .await?;
    b.put(b"k", b"new").await?;
    assert_eq!(b.ttl(b"k").await?, Ttl::Persistent, "put kept the old TTL");
    sleep_past(Duration::from_millis(200)).await;
    assert_eq!(
        value(b, b"k").await?,
        some(b"new"),
        "the key expired on the old TTL"
    );
    Ok(())
}

/// `batch_put`, `compare_and_swap`, `put_fenced` and `put_with_metadata` clear a TTL as
/// `put` does.
pub async fn every_plain_write_clears_an_old_ttl(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    for k in [&b"batch"[..], b"cas", b"fenced", b"meta"] {
        b.put_with_ttl(k, b"old", HOUR).await?;
    }
    b.batch_put(&[(b"batch", b"new")]).await?;
    assert!(b.compare_and_swap(b"cas", Some(b"old"), b"new").await?);
    b.put_fenced(b"fenced", b"new", FencingToken(1)).await?;
    for k in [&b"batch"[..], b"cas", b"fenced"] {
        assert_eq!(
            b.ttl(k).await?,
            Ttl::Persistent,
            "{} kept its TTL",
            String::from_utf8_lossy(k)
        );
    }
    if ctx.caps().metadata {
        b.put_with_metadata(b"meta", b"new", serde_json::json!(1))
            .await?;
        assert_eq!(
            b.ttl(b"meta").await?,
            Ttl::Persistent,
            "put_with_metadata kept the TTL"
        );
    } else {
        let result = b
            .put_with_metadata(b"meta", b"new", serde_json::json!(1))
            .await;
        expect_kind("put_with_metadata", result, ErrorKind::Unsupported);
        assert_remaining("untouched TTL", b.ttl(b"meta").await?, HOUR);
    }
    Ok(())
}

/// A zero TTL and one beyond [`MAX_TTL`] are `InvalidInput` and store nothing.
pub async fn zero_and_oversized_ttls_are_invalid_input(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    for ttl in [Duration::ZERO, MAX_TTL + Duration::from_secs(1)] {
        let result = b.put_with_ttl(b"k", b"v", ttl).await;
        expect_kind(
            &format!("put_with_ttl({ttl:?})"),
            result,
            ErrorKind::InvalidInput,
        );
        let result = b.set_if_not_exists(b"k", b"v", Some(ttl)).await;
        expect_kind(
            &format!("set_if_not_exists({ttl:?})"),
            result,
            ErrorKind::InvalidInput,
        );
    }
    assert_eq!(value(b, b"k").await?, None, "an invalid TTL stored a value");
    Ok(())
}

/// Expired keys are invisible to `get`, `batch_get`, `ttl`, `scan`, `count`, `export` and
/// `checkpoint` at once, whatever the cleanup schedule.
pub async fn expired_keys_are_invisible_to_every_read(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"x:gone1", b"v", Duration::from_millis(30))
        .await?;
    b.put_with_ttl(b"x:gone2", b"", Duration::from_millis(30))
        .await?;
    b.put(b"x:live", b"v").await?;
    b.put_with_ttl(b"x:later", b"v", HOUR).await?;
    sleep_past(Duration::from_millis(80)).await;
    assert_eq!(value(b, b"x:gone1").await?, None, "get");
    assert_eq!(
        value(b, b"x:gone2").await?,
        None,
        "get of an expired empty value"
    );
    assert_eq!(b.ttl(b"x:gone1").await?, Ttl::Missing, "ttl");
    let got = b.batch_get(&[b"x:gone1", b"x:live", b"x:gone2"]).await?;
    let got: Vec<Option<Vec<u8>>> = got.into_iter().map(|v| v.map(|v| v.to_vec())).collect();
    assert_eq!(got, vec![None, some(b"v"), None], "batch_get");
    assert_eq!(b.count(b"x:").await?, 2, "count");
    assert_eq!(b.count(b"x:gone").await?, 0, "count of an expired prefix");
    let live = vec![b"x:later".to_vec(), b"x:live".to_vec()];
    assert_eq!(keys(&ctx.scan(b, b"x:").await?), live, "scan");
    assert_eq!(keys(&ctx.export(b, b"").await?), live, "export");
    let checkpoint = b.checkpoint().await?;
    assert_eq!(checkpoint.len(), 2, "checkpoint");
    assert!(
        !b.compare_and_swap(b"x:gone1", Some(b"v"), b"new").await?,
        "compare_and_swap matched an expired value"
    );
    Ok(())
}

/// Deleting writes do not count or return keys that have expired.
pub async fn expired_keys_do_not_count_as_deleted(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    for k in [&b"e:1"[..], b"e:2", b"e:3", b"c:1"] {
        b.put_with_ttl(k, b"v", Duration::from_millis(30)).await?;
    }
    b.put(b"c:2", b"v").await?;
    sleep_past(Duration::from_millis(80)).await;
    assert!(
        !b.delete(b"e:1").await?,
        "delete of an expired key returned true"
    );
    assert_eq!(
        b.get_and_delete(b"e:2").await?,
        None,
        "get_and_delete returned an expired value"
    );
    assert_eq!(
        b.batch_delete(&[b"e:3"]).await?,
        0,
        "batch_delete counted an expired key"
    );
    assert_eq!(b.clear(b"c:").await?, 1, "clear counted an expired key");
    assert_eq!(b.count(b"").await?, 0);
    Ok(())
}
