//! Cases for the batch operations: order, missing keys, duplicates, validation, counts.

use std::time::Duration;

use state_core::{ErrorKind, Result, Ttl};

use super::ctx::Ctx;
use crate::clock::sleep_past;
use crate::harness::{expect_kind, some, value};

/// `batch_get` answers in the order asked, with `None` for missing keys and repeats kept.
pub async fn batch_get_keeps_order_and_reports_missing(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"a", b"1").await?;
    b.put(b"b", b"2").await?;
    b.put(b"c", b"").await?;
    let got = b.batch_get(&[b"c", b"missing", b"a", b"a", b"b"]).await?;
    let got: Vec<Option<Vec<u8>>> = got.into_iter().map(|v| v.map(|v| v.to_vec())).collect();
    assert_eq!(
        got,
        vec![some(b""), None, some(b"1"), some(b"1"), some(b"2")]
    );
    Ok(())
}

/// `batch_put` writes every entry (more than one chunk's worth) as `put` would.
pub async fn batch_put_writes_every_entry(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"k:0000", b"old", Duration::from_secs(3600))
        .await?;
    let owned: Vec<(Vec<u8>, Vec<u8>)> = (0..1200u32)
        .map(|i| (format!("k:{i:04}").into_bytes(), i.to_be_bytes().to_vec()))
        .collect();
    let entries: Vec<(&[u8], &[u8])> = owned.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    b.batch_put(&entries).await?;
    assert_eq!(b.count(b"k:").await?, 1200);
    for i in [0u32, 1, 599, 1199] {
        let k = format!("k:{i:04}");
        assert_eq!(value(b, k.as_bytes()).await?, some(&i.to_be_bytes()), "{k}");
    }
    assert_eq!(
        b.ttl(b"k:0000").await?,
        Ttl::Persistent,
        "batch_put kept an old TTL"
    );
    let wanted: Vec<&[u8]> = owned.iter().map(|(k, _)| &k[..]).collect();
    let got = b.batch_get(&wanted).await?;
    assert_eq!(got.len(), owned.len());
    for ((k, v), got) in owned.iter().zip(got) {
        assert_eq!(
            got.as_deref(),
            Some(&v[..]),
            "batch_get {}",
            String::from_utf8_lossy(k)
        );
    }
    Ok(())
}

/// A key repeated within one `batch_put` ends with its last value, as sequential puts.
pub async fn batch_put_last_duplicate_wins(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.batch_put(&[(b"k", b"1"), (b"other", b"x"), (b"k", b"2"), (b"k", b"3")])
        .await?;
    assert_eq!(value(b, b"k").await?, some(b"3"));
    assert_eq!(b.count(b"").await?, 2);
    Ok(())
}

/// One invalid entry fails the whole `batch_put` with `InvalidInput` before any write.
pub async fn batch_put_validates_every_entry_first(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let too_long = vec![b'k'; ctx.caps().max_key_len + 1];
    let result = b.batch_put(&[(b"a", b"1"), (b"", b"2")]).await;
    expect_kind(
        "batch_put with an empty key",
        result,
        ErrorKind::InvalidInput,
    );
    let result = b.batch_put(&[(b"a", b"1"), (&too_long, b"2")]).await;
    expect_kind("batch_put with a long key", result, ErrorKind::InvalidInput);
    assert_eq!(
        value(b, b"a").await?,
        None,
        "an invalid batch wrote its valid entries"
    );
    let result = b.batch_get(&[b"a", b""]).await;
    expect_kind(
        "batch_get with an empty key",
        result,
        ErrorKind::InvalidInput,
    );
    let result = b.batch_delete(&[b"a", &too_long]).await;
    expect_kind(
        "batch_delete with a long key",
        result,
        ErrorKind::InvalidInput,
    );
    Ok(())
}

/// `batch_delete` returns how many live keys it deleted: not missing, expired or repeats.
pub async fn batch_delete_counts_live_keys(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"a", b"1").await?;
    b.put(b"b", b"").await?;
    b.put(b"keep", b"1").await?;
    b.put_with_ttl(b"c", b"1", Duration::from_millis(20))
        .await?;
    sleep_past(Duration::from_millis(70)).await;
    let deleted = b
        .batch_delete(&[b"a", b"b", b"c", b"missing", b"a"])
        .await?;
    assert_eq!(deleted, 2, "batch_delete count");
    assert_eq!(
        b.batch_get(&[b"a", b"b", b"c"]).await?,
        vec![None, None, None]
    );
    assert_eq!(value(b, b"keep").await?, some(b"1"));
    Ok(())
}

/// Empty batches succeed and change nothing.
pub async fn empty_batches_are_no_ops(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"k", b"v").await?;
    assert!(b.batch_get(&[]).await?.is_empty());
    b.batch_put(&[]).await?;
    assert_eq!(b.batch_delete(&[]).await?, 0);
    assert_eq!(b.count(b"").await?, 1);
    assert_eq!(value(b, b"k").await?, some(b"v"));
    Ok(())
}
