//! `WatchedGuard` and `LeaderElector` on the real locks: Redis (standalone) and PostgreSQL
//! in both modes, with the same checks as on `MemoryLock` (tests/common/leader.rs).

mod common;
mod pg_lock_common;

use std::future::Future;
use std::sync::Arc;

use common::leader::{self, Stalling};
use state_lock::LockMode;
use testing::locks::LockSubject;

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
    all_checks(|| Box::pin(common::redis::standalone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_and_election_on_postgres_lease() {
    all_checks(|| Box::pin(postgres(LockMode::Lease))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_and_election_on_postgres_session() {
    all_checks(|| Box::pin(postgres(LockMode::Session))).await;
}
