//! The retry rule on the Redis lock, with a reply really lost after Redis executed the
//! script (`testing::faults::FaultProxy::drop_next_reply`):
//!
//! - an acquire whose reply is lost is sent again with the same owner token, recognises the
//!   lock it already holds and returns it: the owner and token the server stored while
//!   the reply was in limbo, one holder (RELIABILITY 5);
//! - a release whose reply is lost is sent once more to learn whether the lock is still
//!   held; it is not, so the error says the outcome is unknown, not `NotOwner`, and the
//!   lock is free.

use std::time::Duration;

use state_core::{DistributedLock, StateBackend};
use state_lock::RedisDistributedLock;
use state_redis::RedisStateBackend;
use testing::faults::{FaultProxy, executed, proxy_in_front_of};

mod common;

use common::redis::{lock_on, redis_config};

const TTL: Duration = Duration::from_secs(30);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A lock through a proxy (one connection: the armed fault hits the script under test)
/// and one straight to the server, on one fresh prefix.
async fn locks() -> Result<
    (
        FaultProxy,
        RedisDistributedLock,
        RedisDistributedLock,
        RedisStateBackend,
    ),
    Box<dyn std::error::Error + Send + Sync>,
> {
    let server = testing::services::redis().await?.url();
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let url = format!("{server}/?pool_min=1&pool_max=1");
    let (proxy, proxied) = proxy_in_front_of(&url).await?;
    let through = lock_on(&proxied, &prefix).await;
    let direct = lock_on(&url, &prefix).await;
    // Loads the scripts and opens the connection: the next reply is the one under test.
    let warm = through
        .try_acquire("warm-up", TTL)
        .await?
        .ok_or("warm-up is free")?;
    through.release(warm).await?;
    // The same prefix, to read the lock's key as the server has it.
    let raw = RedisStateBackend::new(redis_config(&url, &prefix)).await?;
    Ok((proxy, through, direct, raw))
}

/// The owner and token stored under the lock `name` (`"<owner> <token>"`).
async fn holder(
    raw: &RedisStateBackend,
    name: &str,
) -> Result<Option<(String, u64)>, Box<dyn std::error::Error + Send + Sync>> {
    let Some(value) = raw.get(format!("lock:{{{name}}}").as_bytes()).await? else {
        return Ok(None);
    };
    let value = String::from_utf8(value.to_vec())?;
    let (owner, token) = value.split_once(' ').ok_or("not `<owner> <token>`")?;
    Ok(Some((owner.to_string(), token.parse()?)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_whose_reply_is_lost_recognises_its_own_lock() -> TestResult {
    let (proxy, through, direct, raw) = locks().await?;
    let lost = proxy.drop_next_reply();
    let acquire = tokio::spawn(async move {
        let guard = through.try_acquire("job", TTL).await;
        (through, guard)
    });
    executed(&lost).await?;
    // The lock is taken on the server; nobody else can have it.
    let (owner, token) = holder(&raw, "job")
        .await?
        .ok_or("the acquire was not applied before its reply was dropped")?;
    assert!(direct.try_acquire("job", TTL).await?.is_none());
    lost.release();
    let (through, guard) = acquire.await?;
    let guard = guard?.ok_or("the retried acquire did not recognise its own lock")?;
    assert_eq!(guard.owner(), owner, "the retry used another owner token");
    assert_eq!(
        guard.fencing_token().0,
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
    assert_eq!(holder(&raw, "job").await?, Some((owner, token)));
    through.release(guard).await?;
    assert!(!direct.is_locked("job").await?);
    raw.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_whose_reply_is_lost_reports_an_unknown_outcome() -> TestResult {
    let (proxy, through, direct, raw) = locks().await?;
    let guard = through
        .try_acquire("job", TTL)
        .await?
        .ok_or("the lock is free")?;
    let lost = proxy.drop_next_reply();
    let release = tokio::spawn(async move { through.release(guard).await });
    executed(&lost).await?;
    lost.release();
    let err = release
        .await?
        .err()
        .ok_or("the release reported success although its reply was lost")?;
    assert!(err.outcome_unknown(), "{err}");
    assert_ne!(err.kind(), state_core::ErrorKind::NotOwner, "{err}");
    assert!(!direct.is_locked("job").await?, "the release was applied");
    raw.clear(b"").await?;
    Ok(())
}
