//! Unit tests of the memory backend.

use super::*;
use crate::ErrorKind;

/// Sleeps `d` and then until the wall clock, which expiry follows, has moved `d` too: a
/// VM's wall clock can be set back under a running test (bounded, at 1000 more naps).
/// `testing::clock::sleep_past` in small: state-core cannot depend on `testing`, which
/// depends on it.
async fn sleep_past(d: Duration) {
    let start = SystemTime::now();
    tokio::time::sleep(d).await;
    for _ in 0..1000 {
        if SystemTime::now()
            .duration_since(start)
            .is_ok_and(|moved| moved >= d)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn sweep_reclaims_expired_entries_in_bounded_steps() -> Result<()> {
    let backend = MemoryBackend::new();
    for i in 0..100u32 {
        backend
            .put_with_ttl(&i.to_be_bytes(), b"v", Duration::from_millis(1))
            .await?;
    }
    sleep_past(Duration::from_millis(5)).await;
    assert_eq!(
        backend.count(b"").await?,
        0,
        "expired keys are invisible at once"
    );
    let before = backend.store().raw_len();
    backend.put(b"trigger", b"v").await?;
    let after = backend.store().raw_len();
    assert_eq!(
        before - after + 1,
        SWEEP_BATCH,
        "one write sweeps one batch"
    );
    while backend.store().sweep(SWEEP_BATCH) > 0 {}
    assert_eq!(backend.store().raw_len(), 1);
    Ok(())
}

#[tokio::test]
async fn overwriting_a_ttl_key_drops_its_expiry_index_entry() -> Result<()> {
    let backend = MemoryBackend::new();
    backend
        .put_with_ttl(b"k", b"v", Duration::from_millis(1))
        .await?;
    backend.put(b"k", b"v2").await?;
    sleep_past(Duration::from_millis(5)).await;
    backend.store().sweep(usize::MAX);
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v2"[..]));
    Ok(())
}

#[tokio::test]
async fn scan_pages_through_more_than_one_page_in_order() -> Result<()> {
    let backend = MemoryBackend::new();
    let n = SCAN_PAGE * 2 + 7;
    for i in 0..n as u32 {
        backend.put(&i.to_be_bytes(), b"").await?;
    }
    let keys: Vec<Bytes> = stream::try_collect(backend.scan(b""))
        .await?
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(keys.len(), n);
    assert!(keys.windows(2).all(|w| w[0] < w[1]));
    Ok(())
}

#[tokio::test]
async fn from_url_reads_prefix_and_ttl_and_rejects_unknowns() -> Result<()> {
    let url = StateUrl::parse("memory://?prefix=a:&ttl=1h", &[MEMORY])?;
    let backend = MemoryBackend::from_url(&url)?;
    backend.put(b"k", b"v").await?;
    assert!(matches!(backend.ttl(b"k").await?, Ttl::Remaining(_)));
    assert_eq!(backend.store().raw_len(), 1);
    let url = StateUrl::parse("memory://?pool_max=3", &[MEMORY])?;
    let err = MemoryBackend::from_url(&url).err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Config));
    Ok(())
}

#[test]
fn builder_rejects_a_zero_default_ttl() {
    let err = MemoryBackend::builder()
        .default_ttl(Duration::ZERO)
        .build()
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("default_ttl")));
}
