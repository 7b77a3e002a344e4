//! `WatchedGuard` and `LeaderElector` on the real locks: Redis (standalone) and PostgreSQL
//! in both modes, with the same checks as on `MemoryLock` (tests/common/leader.rs).

mod common;
mod pg_lock_common;

use std::future::Future;
use std::sync::Arc;

use common::leader::{self, Stalling};
use state_core::StateBackend;
use state_lock::{LockMode, RedisDistributedLock, RedisLockConfig};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::locks::{LockSubject, WAIT_TIMEOUT};

/// Two Redis lock handles and a backend under one fresh prefix, cleared afterwards.
async fn redis() -> LockSubject {
    let service = testing::services::redis()
        .await
        .unwrap_or_else(|e| panic!("no Redis for the tests: {e}"));
    let prefix = format!("rleader-{}", testing::conformance::unique_namespace());
    let config = || {
        RedisConfig::builder()
            .url(service.url())
            .key_prefix(&prefix)
            .build()
            .unwrap_or_else(|e| panic!("bad test config: {e}"))
    };
    let lock = || async {
        let config = RedisLockConfig::new(config()).with_wait_timeout(WAIT_TIMEOUT);
        RedisDistributedLock::with_config(config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect the lock: {e}"))
    };
    let backend = Arc::new(
        RedisStateBackend::new(config())
            .await
            .unwrap_or_else(|e| panic!("cannot connect the backend: {e}")),
    );
    let cleaner = Arc::clone(&backend);
    LockSubject {
        lock: Arc::new(lock().await),
        other: Arc::new(lock().await),
        kind: testing::locks::LockKind::Lease,
        backend,
        cleanup: Some(Box::new(move || {
            Box::pin(async move {
                if let Err(e) = cleaner.clear(b"").await {
                    eprintln!("cleanup of the test's keys failed: {e}");
                }
            })
        })),
    }
}

async fn postgres(mode: LockMode) -> LockSubject {
    let url = pg_lock_common::url().await;
    pg_lock_common::subject_at(&url, mode, "leader").await
}

/// Runs `check` on a subject, then its cleanup.
async fn with<F, Fut>(subject: LockSubject, check: F)
where
    F: FnOnce(LockSubject) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut subject = subject;
    let cleanup = subject.cleanup.take();
    let outcome = tokio::spawn(check(subject)).await;
    if let Some(cleanup) = cleanup {
        cleanup().await;
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn all_checks(
    subject: impl Fn() -> std::pin::Pin<Box<dyn Future<Output = LockSubject> + Send>>,
) {
    with(subject().await, |s| {
        leader::watchdog_keeps_the_lease(s.lock, s.other)
    })
    .await;
    with(subject().await, |s| async move {
        leader::watchdog_reports_loss(Arc::new(Stalling::new(s.lock)), s.other).await
    })
    .await;
    with(subject().await, |s| leader::hand_over(s.lock, s.other)).await;
    with(subject().await, |s| async move {
        leader::paused_leader_is_fenced(Arc::new(Stalling::new(s.lock)), s.other, s.backend).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_and_election_on_redis() {
    all_checks(|| Box::pin(redis())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_and_election_on_postgres_lease() {
    all_checks(|| Box::pin(postgres(LockMode::Lease))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_and_election_on_postgres_session() {
    all_checks(|| Box::pin(postgres(LockMode::Session))).await;
}
