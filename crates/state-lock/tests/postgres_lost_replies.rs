//! RELIABILITY 5 on PostgreSQL's Lease mode, with a reply really lost after the server
//! executed the acquire (`testing::faults::FaultProxy::drop_next_reply`): the lock's own
//! retry, on a new connection, sends the same statement with the same owner, recognises the
//! row it already holds and returns its token. One holder, one token, and no wait for
//! itself. (Session mode cannot be ambiguous in this way: the lost reply breaks the
//! connection that held the lock, which frees it; the conformance suite's
//! `ambiguous_acquire_is_recognised` covers that.)

mod pg_lock_common;

use std::time::Duration;

use pg_lock_common::{admin, config, drop_schema, open, unique_schema, url};
use sqlx::{AssertSqlSafe, Row};
use state_lock::{DistributedLock, LockMode};
use testing::faults::{executed, proxy_in_front_of};

const TTL: Duration = Duration::from_secs(30);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The owner and token of the lease row of `name`, read straight from the server.
async fn lease_row(schema: &str, name: &str) -> Result<Option<(String, i64)>, sqlx::Error> {
    let mut conn = admin().await;
    let sql = format!("SELECT owner, token FROM \"{schema}\".state_locks WHERE name = $1");
    let row = sqlx::query(AssertSqlSafe(sql))
        .bind(name)
        .fetch_optional(&mut conn)
        .await?;
    row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
}

async fn lost_acquire_reply(schema: String) -> TestResult {
    let url = url().await;
    let (proxy, proxied) = proxy_in_front_of(&url).await?;
    // One connection through the proxy, so the armed fault hits the acquire under test.
    let through = open(config(&proxied, &schema, LockMode::Lease).with_pool_max(1)).await;
    let direct = open(config(&url, &schema, LockMode::Lease)).await;
    // Opens the connection and prepares acquire and release on it: the next reply is the
    // acquire's result, not a Parse's.
    let warm = through
        .try_acquire("warm-up", TTL)
        .await?
        .ok_or("warm-up is free")?;
    through.release(warm).await?;

    let lost = proxy.drop_next_reply();
    let acquire = tokio::spawn(async move {
        let guard = through.try_acquire("job", TTL).await;
        (through, guard)
    });
    executed(&lost).await?;
    // Applied on the server while the client has no answer: the row is there.
    let (owner, token) = lease_row(&schema, "job")
        .await?
        .ok_or("the acquire was not applied before its reply was dropped")?;
    assert!(
        direct.try_acquire("job", TTL).await?.is_none(),
        "another owner got the lock the lost acquire holds"
    );
    lost.release();
    let (through, guard) = acquire.await?;
    let guard = guard?.ok_or("the retried acquire did not recognise its own lock")?;
    assert_eq!(guard.owner(), owner, "the retry used another owner token");
    assert_eq!(
        i64::try_from(guard.fencing_token().0)?,
        token,
        "the retry took the lock again under a new token instead of recognising it"
    );
    assert_eq!(
        proxy.stats().replies_dropped,
        1,
        "the fault did not fire once"
    );
    assert!(
        direct.try_acquire("job", TTL).await?.is_none(),
        "two holders"
    );
    assert_eq!(lease_row(&schema, "job").await?, Some((owner, token)));
    through.release(guard).await?;
    assert!(!direct.is_locked("job").await?, "released");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_acquire_whose_reply_is_lost_recognises_its_own_lock() -> TestResult {
    let schema = unique_schema("llost");
    let outcome = tokio::spawn(lost_acquire_reply(schema.clone())).await;
    drop_schema(&schema).await;
    outcome?
}
