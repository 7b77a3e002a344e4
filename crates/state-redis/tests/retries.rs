//! The retry rule, provoked deterministically through a fault-injecting proxy: a request
//! reaches Redis and is executed, its reply is dropped and the connection reset.
//!
//! - A blind write of unknown outcome is not sent again: a `put` whose item another client
//!   consumed in the meantime does not come back, and a `delete` that deleted never
//!   reports `false` (both anomalies were seen under connection kills before the rule).
//! - A read is sent again and succeeds.
//! - A Cluster write goes through the driver's exact connections (no re-send of its own),
//!   so the same holds there.

use std::time::Duration;

use state_core::{ErrorKind, StateBackend};
use state_redis::RedisStateBackend;
use testing::conformance::unique_namespace;
use testing::faults::{FaultProxy, ReplyDrop, proxy_in_front_of};

/// How long a dropped reply may take to arrive at the proxy.
const ARRIVAL: Duration = Duration::from_secs(10);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A backend through a proxy (one connection, so the armed fault hits the request under
/// test) and one straight to the server, both under one fresh namespace.
async fn backends()
-> Result<(FaultProxy, RedisStateBackend, RedisStateBackend), Box<dyn std::error::Error>> {
    let server = testing::services::redis().await?.url();
    let namespace = unique_namespace();
    let url = format!("{server}/?prefix={namespace}&pool_min=1&pool_max=1");
    let (proxy, proxied) = proxy_in_front_of(&url).await?;
    let through = RedisStateBackend::from_url(&proxied).await?;
    let direct = RedisStateBackend::from_url(&url).await?;
    // The connection is open and idle: the next request is the one under test.
    through.get(b"warm-up").await?;
    Ok((proxy, through, direct))
}

/// Waits until the proxy has dropped a reply: the server has executed the request.
async fn executed(lost: &ReplyDrop) -> TestResult {
    tokio::time::timeout(ARRIVAL, lost.dropped())
        .await
        .map_err(|_| "the request never reached the server")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_reply_is_lost_is_not_applied_twice() -> TestResult {
    let (proxy, through, direct) = backends().await?;
    let lost = proxy.drop_next_reply();
    let put = tokio::spawn(async move { through.put(b"job", b"item-1").await });
    executed(&lost).await?;
    // A worker consumes the item while the writer's reply is in limbo.
    assert_eq!(
        direct.get_and_delete(b"job").await?.as_deref(),
        Some(&b"item-1"[..])
    );
    lost.release();
    let outcome = put.await?;
    assert_eq!(
        direct.get(b"job").await?,
        None,
        "the put was applied a second time after its item was consumed ({outcome:?})"
    );
    let err = outcome
        .err()
        .ok_or("the put reported success for an unknown outcome")?;
    assert!(err.outcome_unknown(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(err.to_string().contains("may have been applied"), "{err}");
    direct.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_reply_is_lost_never_reports_false() -> TestResult {
    let (proxy, through, direct) = backends().await?;
    direct.put(b"k", b"v").await?;
    let lost = proxy.drop_next_reply();
    let delete = tokio::spawn(async move { through.delete(b"k").await });
    executed(&lost).await?;
    lost.release();
    match delete.await? {
        Ok(deleted) => assert!(deleted, "the delete deleted the key and reported false"),
        Err(err) => assert!(err.outcome_unknown(), "{err}"),
    }
    assert_eq!(direct.get(b"k").await?, None);
    direct.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_batches_and_conditional_writes_are_not_sent_again() -> TestResult {
    let (proxy, through, direct) = backends().await?;
    let through = std::sync::Arc::new(through);
    type Call = fn(
        std::sync::Arc<RedisStateBackend>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = state_core::Result<()>> + Send>,
    >;
    let calls: [(&str, Call); 5] = [
        ("batch_put", |b| {
            Box::pin(async move { b.batch_put(&[(b"a", b"1"), (b"b", b"2")]).await })
        }),
        ("batch_delete", |b| {
            Box::pin(async move { b.batch_delete(&[b"a", b"b"]).await.map(|_| ()) })
        }),
        ("compare_and_swap", |b| {
            Box::pin(async move { b.compare_and_swap(b"c", None, b"1").await.map(|_| ()) })
        }),
        ("set_if_not_exists", |b| {
            Box::pin(async move { b.set_if_not_exists(b"s", b"1", None).await.map(|_| ()) })
        }),
        ("get_and_delete", |b| {
            Box::pin(async move { b.get_and_delete(b"c").await.map(|_| ()) })
        }),
    ];
    for (name, call) in calls {
        // A new connection after the last reset, so the dropped reply is the call's own.
        through.get(b"warm-up").await?;
        let lost = proxy.drop_next_reply();
        let sent = tokio::spawn(call(std::sync::Arc::clone(&through)));
        executed(&lost).await?;
        lost.release();
        let err = sent
            .await?
            .err()
            .ok_or_else(|| format!("{name} reported success although its reply was lost"))?;
        assert!(err.outcome_unknown(), "{name}: {err}");
    }
    assert_eq!(proxy.stats().replies_dropped, 5);
    direct.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_reply_is_lost_is_sent_again() -> TestResult {
    let (proxy, through, direct) = backends().await?;
    direct.put(b"k", b"v").await?;
    let lost = proxy.drop_next_reply();
    let get = tokio::spawn(async move { through.get(b"k").await });
    executed(&lost).await?;
    lost.release();
    assert_eq!(get.await??.as_deref(), Some(&b"v"[..]));
    direct.clear(b"").await?;
    Ok(())
}
