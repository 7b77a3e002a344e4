//! `WatchedGuard` and `LeaderElector` on `MemoryLock` (here) and on the distributed locks
//! (each backend's test file calls the same checks through `common::leader`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use state_core::{DistributedLock, MemoryBackend};
use state_lock::MemoryLock;

fn pair() -> (Arc<dyn DistributedLock>, Arc<dyn DistributedLock>) {
    let lock = MemoryLock::with_wait_timeout(Duration::from_secs(2));
    (Arc::new(lock.clone()), Arc::new(lock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_keeps_the_lease_past_its_ttl() {
    let (a, b) = pair();
    common::leader::watchdog_keeps_the_lease(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_reports_a_lease_it_could_not_extend() {
    // A holder whose extends stall past the deadline, as a paused process's would.
    let lock = MemoryLock::with_wait_timeout(Duration::from_secs(2));
    let stalling = Arc::new(common::leader::Stalling::new(Arc::new(lock.clone())));
    common::leader::watchdog_reports_loss(stalling, Arc::new(lock)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_per_epoch_and_hand_over_on_step_down() {
    let (a, b) = pair();
    common::leader::hand_over(a, b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_former_leader_is_fenced_by_epoch() {
    let lock = MemoryLock::with_wait_timeout(Duration::from_secs(2));
    let stalling = Arc::new(common::leader::Stalling::new(Arc::new(lock.clone())));
    let backend = Arc::new(MemoryBackend::new());
    common::leader::paused_leader_is_fenced(stalling, Arc::new(lock), backend).await;
}
