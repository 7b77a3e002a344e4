//! `RedisDistributedLock` on a standalone Redis (`STATE_TEST_REDIS_URL`, else a local
//! redis-server; see `testing::services::redis`): the lock conformance suite and property,
//! each case under a random key prefix that is cleared afterwards, plus what only Redis can
//! show — tokens that keep increasing across a restart that lost every key, and the
//! counter winning over a server clock that is behind it.

use std::time::{Duration, Instant};

use state_core::{DistributedLock, ErrorKind, FencingToken, StateBackend};
use state_lock::{RedisDistributedLock, RedisLockConfig};
use testing::services::{LocalRedis, LocalRedisOptions};

const LONG: Duration = Duration::from_secs(30);

mod common;

use common::redis::{lock_on, redis_config, standalone};

testing::lock_conformance_suite!(standalone);
testing::lock_property_suite!(standalone);

/// Calls `attempt` until it succeeds, retrying retryable errors (a server coming back)
/// for at most 15 s and 100 attempts.
async fn until_ok<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = state_core::Result<T>>,
{
    let started = Instant::now();
    for _ in 0..100 {
        match attempt().await {
            Ok(value) => return value,
            Err(e) if e.is_retryable() && started.elapsed() < Duration::from_secs(15) => {
                eprintln!("{what}: retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
    panic!("{what}: still failing after 100 attempts")
}

/// RELIABILITY 4: a restart of a server without persistence loses the lock and its
/// counter; the next holder's token is still higher, because tokens are seeded from the
/// server clock. The same handle reconnects by itself (and reloads its scripts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_increase_across_a_restart_that_loses_every_key() {
    let mut redis = LocalRedis::start(LocalRedisOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start a redis-server: {e}"));
    let lock = lock_on(&redis.url(), "").await;
    let name = "restart";
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let guard = lock
            .try_acquire(name, LONG)
            .await
            .expect("acquire before the restart")
            .expect("the lock is free");
        tokens.push(guard.fencing_token());
        lock.release(guard).await.expect("release");
    }
    let counter = redis
        .cli(&["EXISTS", "lock:{restart}:fence"])
        .await
        .expect("redis-cli");
    assert_eq!(counter.trim(), "1", "the counter key is where the docs say");

    redis.restart().await.expect("restart the server");
    let counter = redis
        .cli(&["EXISTS", "lock:{restart}:fence"])
        .await
        .expect("redis-cli");
    assert_eq!(
        counter.trim(),
        "0",
        "the restart lost the counter (no persistence)"
    );

    let guard = until_ok("acquire after the restart", || lock.try_acquire(name, LONG))
        .await
        .expect("the lock is free after the restart");
    tokens.push(guard.fencing_token());
    lock.release(guard)
        .await
        .expect("release after the restart");
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens must increase strictly across the restart: {tokens:?}"
    );
}

/// The counter wins when it is ahead of the server clock (a clock stepped back, or
/// acquisitions within one microsecond): the next token is the counter plus one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_wins_over_a_clock_that_is_behind_it() {
    let service = testing::services::redis()
        .await
        .expect("a Redis for the tests");
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let lock = lock_on(&service.url(), &prefix).await;
    let name = "ahead";
    let first = lock
        .try_acquire(name, LONG)
        .await
        .expect("acquire")
        .expect("free");
    lock.release(first).await.expect("release");
    // A counter an hour ahead of the clock, as after a clock step back by an hour.
    let ahead = 1_700_000_000_000_000u64.max(now_micros()) + 3_600_000_000;
    lock.backend()
        .put(b"lock:{ahead}:fence", ahead.to_string().as_bytes())
        .await
        .expect("set the counter");
    for expected in [ahead + 1, ahead + 2] {
        let guard = lock
            .try_acquire(name, LONG)
            .await
            .expect("acquire")
            .expect("free");
        assert_eq!(guard.fencing_token(), FencingToken(expected));
        lock.release(guard).await.expect("release");
    }
    lock.backend().clear(b"").await.expect("cleanup");
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A key that is not in the lock's format (written by another program) reads as held by
/// someone else: never taken over, never released by us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_value_under_the_lock_key_is_never_taken_over() {
    let service = testing::services::redis()
        .await
        .expect("a Redis for the tests");
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let lock = lock_on(&service.url(), &prefix).await;
    let backend = lock.backend().clone();
    backend
        .put_with_ttl(b"lock:{foreign}", b"not a lock value", LONG)
        .await
        .expect("write the foreign value");
    assert!(lock.is_locked("foreign").await.expect("is_locked"));
    let got = lock.try_acquire("foreign", LONG).await.expect("acquire");
    assert!(got.is_none(), "a foreign value was taken over: {got:?}");
    assert_eq!(
        backend
            .get(b"lock:{foreign}")
            .await
            .expect("get")
            .as_deref(),
        Some(&b"not a lock value"[..])
    );
    backend.clear(b"").await.expect("cleanup");
}

/// A prefix whose empty hash tag would split a lock from its counter across Cluster slots
/// is refused when the lock is built; an unreachable server is a connection error that
/// names the server and no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_fail_clearly() {
    let service = testing::services::redis()
        .await
        .expect("a Redis for the tests");
    let config = RedisLockConfig::new(redis_config(&service.url(), "app{}")).with_key_prefix("l:");
    let e = RedisDistributedLock::with_config(config)
        .await
        .expect_err("an empty hash tag in the prefix");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");

    let port = testing::services::process::free_port().expect("a free port");
    let url = format!("redis://:s3cret-pass@127.0.0.1:{port}");
    let config = RedisLockConfig::from_url(&url).expect("valid URL");
    assert!(!format!("{config:?}").contains("s3cret-pass"));
    let e = RedisDistributedLock::with_config(config)
        .await
        .expect_err("nothing listens there");
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.to_string().contains(&port.to_string()), "{e}");
    assert!(!e.to_string().contains("s3cret-pass"), "{e}");
}

/// The backend's `eval_script` (what the lock is built on) refuses keys of different
/// Cluster slots, and a script with no key, before sending anything — in standalone mode
/// too, so that a script that runs here also runs on a Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_script_keeps_to_one_slot() {
    use state_redis::{Idempotency, Script, redis::Value};
    static TOUCH: Script = Script::new("return #KEYS");
    let service = testing::services::redis()
        .await
        .expect("a Redis for the tests");
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let lock = lock_on(&service.url(), &prefix).await;
    let backend = lock.backend();
    let same: [&[u8]; 2] = [b"{x}a", b"{x}b"];
    let reply = backend
        .eval_script("touch", Idempotency::Idempotent, &TOUCH, &same, &[])
        .await
        .expect("keys of one slot");
    assert_eq!(reply, Value::Int(2));
    let split: [&[u8]; 2] = [b"a", b"b"];
    let e = backend
        .eval_script("touch", Idempotency::Idempotent, &TOUCH, &split, &[])
        .await
        .expect_err("keys of two slots");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(e.to_string().contains("hash tag"), "{e}");
    let e = backend
        .eval_script("touch", Idempotency::Idempotent, &TOUCH, &[], &[])
        .await
        .expect_err("no key");
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
}
