//! RELIABILITY 6: a guard's deadline is measured on the monotonic clock from before the
//! acquire (or extend) was sent, so it can only run out before the server's lease.
//!
//! On loopback a deadline taken after the reply is indistinguishable from one taken before
//! the request, so here every lock talks to its server through a `FaultProxy` that delays
//! each chunk by [`LATENCY`], each way. A deadline taken after the reply would then be at
//! least two latencies later than one taken before the request, and the server's lease
//! (which starts when the request arrives, one latency after sending) would end before
//! the guard's. The tests compare the guard's deadline with the instants around the call
//! and, for the leases, with the lease the server reports (Redis `PTTL`, the lease row's
//! `expires_at` against `clock_timestamp()`).
//!
//! The wall clock: no deadline reads it. `guards_run_on_the_monotonic_clock_only` shows it by
//! construction: deadlines are `Instant`s, and no source file of this crate names the wall
//! clock, so stepping it cannot extend (or shorten) a guard.

mod common;
mod pg_lock_common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{lock_on, redis_config};
use pg_lock_common::{admin, config, drop_schema, open, unique_schema, url};
use sqlx::AssertSqlSafe;
use state_core::{FencingToken, LockGuard, StateBackend, Ttl};
use state_lock::{DistributedLock, Lease, LockMode, WatchedGuard};
use state_redis::RedisStateBackend;
use testing::faults::{FaultProxy, proxy_in_front_of};

/// Injected each way on every chunk; a request and its reply cross the proxy once each.
const LATENCY: Duration = Duration::from_millis(300);
const TTL: Duration = Duration::from_secs(30);
/// Rounding of the servers' clocks (Redis keeps milliseconds) and of `PTTL`.
const ROUNDING: Duration = Duration::from_millis(5);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Acquires `name` through the slow proxy, then extends it, and checks both deadlines
/// against the instants around the calls: each is at least `ttl` after the call began (the
/// request was sent after it began), and at least two latencies (the request's way there
/// and the reply's way back) before `ttl` after it returned. Returns the extended guard and
/// the instant the extend returned.
async fn acquire_and_extend_slowly(
    proxy: &FaultProxy,
    lock: &dyn DistributedLock,
    name: &str,
) -> Result<LockGuard, Box<dyn std::error::Error + Send + Sync>> {
    proxy.set_latency(LATENCY, Duration::ZERO);
    let before = Instant::now();
    let mut guard = lock
        .try_acquire(name, TTL)
        .await?
        .ok_or("the lock is free")?;
    let after = Instant::now();
    check_deadline("acquire", guard.deadline(), before, after);
    let before = Instant::now();
    lock.extend(&mut guard, TTL).await?;
    let after = Instant::now();
    check_deadline("extend", guard.deadline(), before, after);
    proxy.set_latency(Duration::ZERO, Duration::ZERO);
    Ok(guard)
}

fn check_deadline(what: &str, deadline: Instant, before: Instant, after: Instant) {
    // The proxy delays the request and the reply by at least LATENCY each.
    assert!(
        after - before >= 2 * LATENCY,
        "{what}: the latency was not injected"
    );
    assert!(
        deadline >= before + TTL,
        "{what}: the deadline is earlier than the call's start + ttl"
    );
    assert!(
        deadline + 2 * LATENCY <= after + TTL,
        "{what}: the deadline was taken after the request was sent (it is less than two \
         latencies before the reply + ttl)"
    );
}

/// The server's lease runs at least one latency longer than the guard believes: the
/// request needed [`LATENCY`] to reach the server, where the lease began. `server_left` is
/// the lease's remaining time as the server reported it, `read_at` an instant taken after
/// that report arrived.
fn check_against_server(guard: &LockGuard, server_left: Duration, read_at: Instant) {
    let guard_left = guard.deadline().saturating_duration_since(read_at);
    assert!(
        server_left + ROUNDING >= guard_left + LATENCY,
        "the guard expects its lease to last {guard_left:?}, the server {server_left:?}: the \
         guard's deadline must end at least {LATENCY:?} (the request's way there) earlier"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_deadlines_are_taken_before_the_request() -> TestResult {
    let server = testing::services::redis().await?.url();
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let url = format!("{server}/?pool_min=1&pool_max=1");
    let (proxy, proxied) = proxy_in_front_of(&url).await?;
    let through = lock_on(&proxied, &prefix).await;
    let backend = RedisStateBackend::new(redis_config(&server, &prefix)).await?;
    // In a task, so that the keys are cleared even when a check panics.
    let outcome = tokio::spawn(async move {
        // Loads the scripts and opens the connection before the latency.
        let mut warm = through.try_acquire("warm-up", TTL).await?.ok_or("free")?;
        through.extend(&mut warm, TTL).await?;
        through.release(warm).await?;
        let guard = acquire_and_extend_slowly(&proxy, &through, "job").await?;
        let Ttl::Remaining(server_left) = backend.ttl(b"lock:{job}").await? else {
            return Err("the lock key has no lease on the server".into());
        };
        check_against_server(&guard, server_left, Instant::now());
        through.release(guard).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await;
    let cleaner = RedisStateBackend::new(redis_config(&server, &prefix)).await?;
    cleaner.clear(b"").await?;
    outcome?
}

/// The lease row's remaining time by the database clock.
async fn lease_left(schema: &str, name: &str) -> Result<Duration, sqlx::Error> {
    let mut conn = admin().await;
    let sql = format!(
        "SELECT (extract(epoch FROM expires_at - clock_timestamp()) * 1000000)::int8 \
         FROM \"{schema}\".state_locks WHERE name = $1"
    );
    let micros: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    Ok(Duration::from_micros(u64::try_from(micros).unwrap_or(0)))
}

async fn postgres_deadlines(mode: LockMode, schema: String) -> TestResult {
    let url = url().await;
    let (proxy, proxied) = proxy_in_front_of(&url).await?;
    let through = open(config(&proxied, &schema, mode).with_pool_max(2)).await;
    // Opens a connection and prepares the statements before the latency.
    let mut warm = through.try_acquire("warm-up", TTL).await?.ok_or("free")?;
    through.extend(&mut warm, TTL).await?;
    through.release(warm).await?;
    let guard = acquire_and_extend_slowly(&proxy, &through, "job").await?;
    if mode == LockMode::Lease {
        let left = lease_left(&schema, "job").await?;
        check_against_server(&guard, left, Instant::now());
    }
    through.release(guard).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lease_deadlines_are_taken_before_the_request() -> TestResult {
    let schema = unique_schema("ldead");
    let outcome = tokio::spawn(postgres_deadlines(LockMode::Lease, schema.clone())).await;
    drop_schema(&schema).await;
    outcome?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_session_deadlines_are_taken_before_the_request() -> TestResult {
    let schema = unique_schema("sdead");
    let outcome = tokio::spawn(postgres_deadlines(LockMode::Session, schema.clone())).await;
    drop_schema(&schema).await;
    outcome?
}

/// Every `.rs` file under `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            sources(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Stepping the wall clock cannot move a guard: every deadline a holder sees is an
/// `Instant` (the types below do not compile otherwise), and no file of the lock crate reads
/// the wall clock (`SystemTime`, `UNIX_EPOCH`) or a date library. The server's clock still
/// decides when a lease ends on the server: that is what fencing tokens are for.
#[tokio::test]
async fn guards_run_on_the_monotonic_clock_only() -> TestResult {
    fn monotonic(_: Instant) {}
    let guard = LockGuard::new("n", "owner", FencingToken(1), Instant::now(), None);
    monotonic(guard.deadline());
    let lock = Arc::new(state_lock::MemoryLock::new());
    let held = lock.try_acquire("n2", TTL).await?.ok_or("free")?;
    monotonic(held.deadline());
    let watched = WatchedGuard::new(lock, held, TTL);
    match *watched.subscribe().borrow() {
        Lease::Held { deadline } => monotonic(deadline),
        Lease::Lost | Lease::Released => return Err("a fresh watched guard is held".into()),
    }
    watched.release().await?;

    let mut files = Vec::new();
    sources(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut files,
    )?;
    assert!(files.len() > 5, "the crate's sources were not found");
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for wall in [
            "SystemTime",
            "UNIX_EPOCH",
            "chrono::",
            "time::OffsetDateTime",
        ] {
            assert!(
                !text.contains(wall),
                "{} reads the wall clock (`{wall}`): a guard's deadline must not depend on it",
                file.display()
            );
        }
    }
    Ok(())
}
