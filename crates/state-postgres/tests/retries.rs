//! The retry rule, provoked deterministically through a fault-injecting proxy: a statement
//! reaches PostgreSQL and commits, its reply is dropped and the connection reset.
//!
//! - A blind write of unknown outcome is not sent again: a `put` (an upsert) whose row
//!   another client consumed in the meantime does not come back, and neither does a
//!   `batch_put`'s; a `delete` that deleted never reports `false`.
//! - A read is sent again and succeeds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use state_core::{ErrorKind, StateBackend};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use testing::faults::{FaultProxy, ReplyDrop, proxy_in_front_of};

const SCHEMA: &str = common::SHARED_SCHEMA;
/// How long a dropped reply may take to arrive at the proxy.
const ARRIVAL: Duration = Duration::from_secs(10);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A backend through a proxy (one connection, so the armed fault hits the statement under
/// test) and one straight to the server, both under one fresh key prefix.
async fn backends()
-> Result<(FaultProxy, Arc<PostgresStateBackend>, PostgresStateBackend), Box<dyn std::error::Error>>
{
    let prefix = testing::conformance::unique_namespace();
    let url = common::url().await;
    let (proxy, proxied) = proxy_in_front_of(&url).await?;
    let config = |url: &str| {
        PostgresConfig::new(url)
            .with_schema(SCHEMA)
            .with_ssl_mode("disable")
            .with_key_prefix(&prefix)
    };
    let through =
        PostgresStateBackend::new(config(&proxied).with_pool_size(1, 1).with_coalescing(0)).await?;
    let direct = PostgresStateBackend::new(config(&url)).await?;
    // The connection is open, idle, and has prepared every statement under test: the next
    // reply is the one of the statement under test, not of its preparation.
    through.put(b"warm-up", b"x").await?;
    through.batch_put(&[(b"warm-up", b"x")]).await?;
    through.get(b"warm-up").await?;
    through.delete(b"warm-up").await?;
    Ok((proxy, Arc::new(through), direct))
}

/// Waits until the proxy has dropped a reply: the server has executed the statement.
async fn executed(lost: &ReplyDrop) -> TestResult {
    tokio::time::timeout(ARRIVAL, lost.dropped())
        .await
        .map_err(|_| "the statement never reached the server")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_whose_reply_is_lost_is_not_applied_twice() -> TestResult {
    let (proxy, through, direct) = backends().await?;
    let lost = proxy.drop_next_reply();
    let writer = Arc::clone(&through);
    let put = tokio::spawn(async move { writer.put(b"job", b"item-1").await });
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
    direct.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_put_whose_reply_is_lost_is_not_applied_twice() -> TestResult {
    let (proxy, through, direct) = backends().await?;
    let lost = proxy.drop_next_reply();
    let writer = Arc::clone(&through);
    let put = tokio::spawn(async move { writer.batch_put(&[(b"a", b"1"), (b"b", b"2")]).await });
    executed(&lost).await?;
    assert_eq!(direct.batch_delete(&[b"a", b"b"]).await?, 2);
    lost.release();
    let outcome = put.await?;
    assert_eq!(
        direct.batch_get(&[b"a", b"b"]).await?,
        vec![None, None],
        "the batch was applied a second time after its rows were deleted ({outcome:?})"
    );
    let err = outcome
        .err()
        .ok_or("the batch reported success for an unknown outcome")?;
    assert!(err.outcome_unknown(), "{err}");
    direct.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_whose_reply_is_lost_never_reports_false() -> TestResult {
    let (proxy, through, direct) = backends().await?;
    direct.put(b"k", b"v").await?;
    let lost = proxy.drop_next_reply();
    let deleter = Arc::clone(&through);
    let delete = tokio::spawn(async move { deleter.delete(b"k").await });
    executed(&lost).await?;
    lost.release();
    match delete.await? {
        Ok(deleted) => assert!(deleted, "the delete deleted the row and reported false"),
        Err(err) => assert!(err.outcome_unknown(), "{err}"),
    }
    assert_eq!(direct.get(b"k").await?, None);
    direct.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_reply_is_lost_is_sent_again() -> TestResult {
    let (proxy, through, direct) = backends().await?;
    direct.put(b"k", b"v").await?;
    let lost = proxy.drop_next_reply();
    let reader = Arc::clone(&through);
    let get = tokio::spawn(async move { reader.get(b"k").await });
    executed(&lost).await?;
    lost.release();
    assert_eq!(get.await??.as_deref(), Some(&b"v"[..]));
    direct.clear(b"").await?;
    Ok(())
}
