//! RELIABILITY 10: a held lock whose connections are cut, or left half-open, through a
//! `FaultProxy`. The holder A reaches its server only through the proxy; B and the state
//! backend (where the fenced writes go) reach it directly. A holds the lock under a
//! `WatchedGuard`, whose watchdog extends it through the proxy.
//!
//! - **cut**: every connection reset (the client gets an RST, the server sees it close) and
//!   new ones black-holed, so the holder cannot reconnect: a partition;
//! - **half-open**: the server side of every connection closed while the client's stays
//!   open and silent (no FIN, no RST), and new ones black-holed: the holder's requests go
//!   nowhere and it is never told.
//!
//! Then B waits for the lock, and the tests check what "the holder learns it lost the lock
//! before its next fenced write" means:
//!
//! 1. Lease locks (Redis, PostgreSQL Lease mode): the server frees the lock only when the
//!    lease runs out, and A's deadline (taken before its last extend was sent) runs out no
//!    later: when B gets the lock, A already knows it lost it (`is_held()` is false).
//!    Session mode: the server frees the lock as soon as it sees the connection close, and
//!    A learns it at its watchdog's next check (an RST) or at its deadline (half-open, where
//!    the check hangs): the test waits for that, bounded by a few TTLs.
//! 2. "Refused": the storage alone cannot refuse A yet. `put_fenced` rejects a token lower
//!    than the highest that wrote the key, and nobody but A has written it. So A's next
//!    fenced write goes through `WatchedGuard::put_fenced`, which refuses it (`NotOwner`,
//!    nothing sent) because the lease is lost, and the key keeps A's last value.
//! 3. Once B has written with its higher token, the storage refuses A's token too
//!    (`Fenced`), even from a holder that ignores the guard.

mod common;
mod pg_lock_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::redis_config;
use pg_lock_common::{config, drop_schema, open, unique_schema};
use state_core::{ErrorKind, StateBackend};
use state_lock::{DistributedLock, LockMode, RedisDistributedLock, RedisLockConfig, WatchedGuard};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::faults::{FaultProxy, proxy_in_front_of};
use testing::locks::unique_name;

/// The lease; the watchdog extends every third of it.
const TTL: Duration = Duration::from_secs(2);
/// How long B may wait for the lock, and A to learn of the loss.
const BOUND: Duration = Duration::from_secs(20);

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone, Copy)]
enum Fault {
    Cut,
    HalfOpen,
}

impl Fault {
    fn inject(self, proxy: &FaultProxy) {
        // Black-holed first, so that no reconnect slips through between the two calls.
        proxy.set_black_hole(true);
        let changed = match self {
            Fault::Cut => proxy.reset_all(),
            Fault::HalfOpen => proxy.half_open_all(),
        };
        assert!(changed > 0, "{self:?}: the holder had no connection open");
    }
}

/// A through the proxy, B direct, the backend direct.
struct Setup {
    proxy: FaultProxy,
    a: Arc<dyn DistributedLock>,
    b: Arc<dyn DistributedLock>,
    backend: Arc<dyn StateBackend>,
    /// The server frees the lock only when its lease runs out (not Session mode).
    lease: bool,
}

/// Waits until B gets `name` (polling, bounded).
async fn b_takes_over(
    b: &dyn DistributedLock,
    name: &str,
) -> Result<state_core::LockGuard, String> {
    let started = Instant::now();
    loop {
        match b.try_acquire(name, TTL * 10).await {
            Ok(Some(guard)) => return Ok(guard),
            Ok(None) | Err(_) if started.elapsed() < BOUND => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return Err(format!("B never got the lock within {BOUND:?}: {other:?}")),
        }
    }
}

async fn check(setup: Setup, fault: Fault) -> TestResult {
    let Setup {
        proxy,
        a,
        b,
        backend,
        lease,
    } = setup;
    let name = unique_name("cut");
    let key = format!("{name}/data").into_bytes();
    let guard = a.try_acquire(&name, TTL).await?.ok_or("the lock is free")?;
    let token = guard.fencing_token();
    let watched = WatchedGuard::new(Arc::clone(&a), guard, TTL);
    watched.put_fenced(backend.as_ref(), &key, b"a1").await?;

    fault.inject(&proxy);
    let b_guard = b_takes_over(b.as_ref(), &name).await?;
    if lease {
        assert!(
            !watched.is_held(),
            "{fault:?}: B holds the lock while A still believes it holds it"
        );
    }
    tokio::time::timeout(BOUND, watched.lost())
        .await
        .map_err(|_| format!("{fault:?}: A never learned that it lost the lock"))?;
    assert!(!watched.is_held());

    // A's next fenced write, with nobody else's write on the key yet: refused by the guard.
    let refused = watched.put_fenced(backend.as_ref(), &key, b"a2").await;
    match refused {
        Err(e) => assert_eq!(e.kind(), ErrorKind::NotOwner, "{fault:?}: {e}"),
        Ok(()) => panic!("{fault:?}: A's fenced write after losing the lock was accepted"),
    }
    assert_eq!(
        backend.get(&key).await?.as_deref(),
        Some(&b"a1"[..]),
        "{fault:?}: the refused write reached the storage"
    );

    // B writes; from then on the storage refuses A's token by itself.
    assert!(b_guard.fencing_token() > token, "tokens increase");
    backend
        .put_fenced(&key, b"b1", b_guard.fencing_token())
        .await?;
    let late = backend.put_fenced(&key, b"a3", token).await;
    match late {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Fenced, "{fault:?}: {e}"),
        Ok(()) => panic!("{fault:?}: the storage accepted A's older token after B's write"),
    }
    assert_eq!(backend.get(&key).await?.as_deref(), Some(&b"b1"[..]));
    b.release(b_guard).await?;
    drop(watched);
    drop(proxy);
    Ok(())
}

/// A Redis config with short timeouts, so the faulted holder gives up on a request soon.
fn quick(url: &str, prefix: &str) -> Result<RedisConfig, state_core::StateError> {
    RedisConfig::builder()
        .url(url)
        .key_prefix(prefix)
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .build()
}

async fn on_redis(fault: Fault) -> TestResult {
    let server = testing::services::redis().await?.url();
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let (proxy, proxied) = proxy_in_front_of(&server).await?;
    let a =
        RedisDistributedLock::with_config(RedisLockConfig::new(quick(&proxied, &prefix)?)).await?;
    let b =
        RedisDistributedLock::with_config(RedisLockConfig::new(quick(&server, &prefix)?)).await?;
    let backend = Arc::new(RedisStateBackend::new(redis_config(&server, &prefix)).await?);
    let setup = Setup {
        proxy,
        a: Arc::new(a),
        b: Arc::new(b),
        backend: backend.clone(),
        lease: true,
    };
    // In a task, so that the keys are cleared even when a check panics.
    let outcome = tokio::spawn(check(setup, fault)).await;
    backend.clear(b"").await?;
    outcome?
}

async fn on_postgres(mode: LockMode, fault: Fault) -> TestResult {
    let schema = unique_schema("lcut");
    let run = {
        let schema = schema.clone();
        async move {
            let url = pg_lock_common::url().await;
            let (proxy, proxied) = proxy_in_front_of(&url).await?;
            let quick = |url: &str| {
                config(url, &schema, mode)
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_acquire_timeout(Duration::from_millis(500))
            };
            let setup = Setup {
                proxy,
                a: Arc::new(open(quick(&proxied)).await),
                b: Arc::new(open(quick(&url)).await),
                backend: Arc::new(pg_lock_common::backend(&schema).await),
                lease: mode == LockMode::Lease,
            };
            check(setup, fault).await
        }
    };
    let outcome = tokio::spawn(run).await;
    drop_schema(&schema).await;
    outcome?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holder_cut_off_learns_before_its_next_fenced_write() -> TestResult {
    on_redis(Fault::Cut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holder_half_open_learns_before_its_next_fenced_write() -> TestResult {
    on_redis(Fault::HalfOpen).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lease_holder_cut_off_learns_before_its_next_fenced_write() -> TestResult {
    on_postgres(LockMode::Lease, Fault::Cut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lease_holder_half_open_learns_before_its_next_fenced_write() -> TestResult {
    on_postgres(LockMode::Lease, Fault::HalfOpen).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_session_holder_cut_off_learns_before_its_next_fenced_write() -> TestResult {
    on_postgres(LockMode::Session, Fault::Cut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_session_holder_half_open_learns_before_its_next_fenced_write() -> TestResult {
    on_postgres(LockMode::Session, Fault::HalfOpen).await
}
