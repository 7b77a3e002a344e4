//! The retry rule, provoked deterministically through a fault-injecting proxy: a request
//! reaches Redis and is executed, its reply is dropped and the connection reset
//! (`testing::faults::LostReply`).
//!
//! - A blind write of unknown outcome is not sent again: a `put` whose item another client
//!   consumed in the meantime does not come back, nor a `batch_put`'s entries, and a
//!   `delete` that deleted never reports `false` (both anomalies were seen under connection
//!   kills before the rule); every conditional write reports the unknown outcome too.
//! - A read is sent again and succeeds.

use std::sync::Arc;

use state_core::StateBackend;
use state_redis::RedisStateBackend;
use testing::conformance::unique_namespace;
use testing::faults::{LostReply, executed, proxy_in_front_of};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The backend through a proxy (one connection, so the armed fault hits the request under
/// test) and one straight to the server, both under one fresh namespace.
async fn subject() -> Result<LostReply, Box<dyn std::error::Error + Send + Sync>> {
    let server = testing::services::redis().await?.url();
    let url = format!(
        "{server}/?prefix={}&pool_min=1&pool_max=1",
        unique_namespace()
    );
    let (proxy, proxied) = proxy_in_front_of(&url).await?;
    let through = RedisStateBackend::from_url(&proxied).await?;
    // The connection is open and idle: the next request is the one under test.
    through.get(b"warm-up").await?;
    Ok(LostReply {
        proxy,
        through: Arc::new(through),
        direct: Arc::new(RedisStateBackend::from_url(&url).await?),
    })
}

testing::lost_reply_suite!(subject);

type Call =
    fn(
        Arc<dyn StateBackend>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = state_core::Result<()>> + Send>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_blind_and_conditional_write_reports_the_unknown_outcome() -> TestResult {
    let s = subject().await?;
    let calls: [(&str, Call); 4] = [
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
        s.through.get(b"warm-up").await?;
        let lost = s.proxy.drop_next_reply();
        let sent = tokio::spawn(call(Arc::clone(&s.through)));
        executed(&lost).await?;
        lost.release();
        let err = sent
            .await?
            .err()
            .ok_or_else(|| format!("{name} reported success although its reply was lost"))?;
        assert!(err.outcome_unknown(), "{name}: {err}");
    }
    assert_eq!(s.proxy.stats().replies_dropped, 4);
    s.clean_up().await
}
