//! Checks of `WatchedGuard` and `LeaderElector`, run on every lock implementation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use state_core::{DistributedLock, ErrorKind, LockGuard, Result, StateBackend};
use state_lock::{LeaderElector, Leadership, Lease, WatchedGuard};
use testing::locks::unique_name;

/// Renewed every 400 ms: a loaded machine still gets an extend through in time.
const TTL: Duration = Duration::from_millis(1200);

/// A real lock whose `extend` stalls for twice the TTL while `stall` is set: what a holder
/// paused by SIGSTOP or a long GC sees. Fault injection around a real implementation.
#[derive(Debug)]
pub struct Stalling {
    inner: Arc<dyn DistributedLock>,
    pub stall: AtomicBool,
}

impl Stalling {
    pub fn new(inner: Arc<dyn DistributedLock>) -> Self {
        Stalling {
            inner,
            stall: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl DistributedLock for Stalling {
    async fn try_acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: &str,
    ) -> Result<Option<LockGuard>> {
        self.inner.try_acquire_as(name, ttl, owner).await
    }
    async fn acquire(&self, name: &str, ttl: Duration) -> Result<LockGuard> {
        self.inner.acquire(name, ttl).await
    }
    async fn extend(&self, guard: &mut LockGuard, ttl: Duration) -> Result<()> {
        if self.stall.load(Ordering::SeqCst) {
            tokio::time::sleep(ttl * 2).await;
        }
        self.inner.extend(guard, ttl).await
    }
    async fn release(&self, guard: LockGuard) -> Result<()> {
        self.inner.release(guard).await
    }
    async fn is_locked(&self, name: &str) -> Result<bool> {
        self.inner.is_locked(name).await
    }
}

/// A watched lease outlives several TTLs, excludes others meanwhile, and releases.
pub async fn watchdog_keeps_the_lease(a: Arc<dyn DistributedLock>, b: Arc<dyn DistributedLock>) {
    let name = unique_name("watched");
    let guard = a
        .try_acquire(&name, TTL)
        .await
        .expect("acquire")
        .expect("free lock");
    let watched = WatchedGuard::new(Arc::clone(&a), guard, TTL);
    tokio::time::sleep(TTL * 3).await;
    assert!(watched.is_held(), "the watchdog kept the lease");
    assert!(
        b.try_acquire(&name, TTL).await.expect("try").is_none(),
        "still exclusive"
    );
    watched.release().await.expect("release");
    let again = b
        .try_acquire(&name, TTL)
        .await
        .expect("try")
        .expect("free after release");
    b.release(again).await.expect("release");
}

/// When extends stall past the deadline, the watchdog reports the lease lost, `is_held`
/// turns false, and another holder can take the lock.
pub async fn watchdog_reports_loss(stalling: Arc<Stalling>, b: Arc<dyn DistributedLock>) {
    let name = unique_name("lost");
    let guard = stalling
        .try_acquire(&name, TTL)
        .await
        .expect("acquire")
        .expect("free");
    let lock: Arc<dyn DistributedLock> = stalling.clone();
    let watched = WatchedGuard::new(lock, guard, TTL);
    let mut lease = watched.subscribe();
    stalling.stall.store(true, Ordering::SeqCst);
    tokio::time::timeout(TTL * 10, watched.lost())
        .await
        .expect("the loss was reported within 10 TTLs");
    assert!(!watched.is_held());
    // The state channel ends in Lost once the stalled extend comes back refused.
    tokio::time::timeout(TTL * 10, lease.wait_for(|l| *l == Lease::Lost))
        .await
        .expect("Lost within 10 TTLs")
        .expect("the watchdog is alive");
    // The lost guard was dropped, which frees even a session lock (asynchronously).
    let b_guard = b
        .acquire(&name, TTL)
        .await
        .expect("free soon after the loss");
    let e = watched
        .release()
        .await
        .expect_err("a lost lease cannot be released");
    assert_eq!(e.kind(), ErrorKind::NotOwner);
    b.release(b_guard).await.expect("release");
}

/// Two electors: one leads; the other waits; on step-down the other leads with a higher
/// epoch; `leadership()` and subscribers follow.
pub async fn hand_over(a: Arc<dyn DistributedLock>, b: Arc<dyn DistributedLock>) {
    let name = unique_name("leader");
    let first = LeaderElector::new(a, &name, TTL).with_retry_interval(Duration::from_millis(20));
    let second = LeaderElector::new(b, &name, TTL).with_retry_interval(Duration::from_millis(20));
    let term = first.campaign().await.expect("first campaign");
    assert_eq!(
        first.leadership(),
        Leadership::Leader {
            epoch: term.epoch()
        }
    );
    let mut watch_second = second.subscribe();
    let waiting = tokio::spawn(async move {
        let term = second.campaign().await;
        (second, term)
    });
    tokio::time::sleep(TTL * 2).await;
    assert!(term.is_leader(), "renewed while the other campaigns");
    assert!(
        !waiting.is_finished(),
        "a second leader was elected during the first's term"
    );
    let first_epoch = term.epoch();
    term.step_down().await.expect("step down");
    assert_eq!(first.leadership(), Leadership::Follower);
    let (second, second_term) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the second elector leads within 10 s of the step-down")
        .expect("campaign task");
    let second_term = second_term.expect("second campaign");
    assert!(second_term.epoch() > first_epoch, "epochs increase");
    let seen = watch_second
        .wait_for(|l| matches!(l, Leadership::Leader { .. }))
        .await
        .map(|l| *l)
        .expect("subscriber");
    assert_eq!(
        seen,
        Leadership::Leader {
            epoch: second_term.epoch()
        }
    );
    second_term.step_down().await.expect("step down");
    assert_eq!(second.leadership(), Leadership::Follower);
}

/// RELIABILITY 12: a leader paused past its lease loses leadership; the next leader's
/// epoch is higher and the former leader's write with its old epoch is rejected.
pub async fn paused_leader_is_fenced(
    stalling: Arc<Stalling>,
    b: Arc<dyn DistributedLock>,
    backend: Arc<dyn StateBackend>,
) {
    let name = unique_name("fenced-leader");
    let key = format!("{name}/state").into_bytes();
    let lock: Arc<dyn DistributedLock> = stalling.clone();
    let first = LeaderElector::new(lock, &name, TTL).with_retry_interval(Duration::from_millis(20));
    let term = first.campaign().await.expect("campaign");
    term.put_fenced(backend.as_ref(), &key, b"first")
        .await
        .expect("leader writes");
    stalling.stall.store(true, Ordering::SeqCst); // the leader is paused from here
    tokio::time::timeout(TTL * 10, term.lost())
        .await
        .expect("loss noticed");
    assert!(
        !term.is_leader(),
        "re-checked after the pause: no longer leader"
    );
    // Nobody else has written yet, so the storage alone would take it: the term refuses.
    let refused = term.put_fenced(backend.as_ref(), &key, b"late").await;
    assert_eq!(refused.expect_err("ended term").kind(), ErrorKind::NotOwner);
    assert_eq!(
        backend.get(&key).await.expect("get").as_deref(),
        Some(&b"first"[..])
    );

    let second = LeaderElector::new(b, &name, TTL).with_retry_interval(Duration::from_millis(20));
    let next = tokio::time::timeout(Duration::from_secs(10), second.campaign())
        .await
        .expect("elected within 10 s")
        .expect("campaign");
    assert!(next.epoch() > term.epoch());
    backend
        .put_fenced(&key, b"second", next.epoch())
        .await
        .expect("new leader writes");
    let late = backend.put_fenced(&key, b"late", term.epoch()).await;
    assert_eq!(late.expect_err("old epoch").kind(), ErrorKind::Fenced);
    assert_eq!(first.leadership(), Leadership::Follower);
    next.step_down().await.expect("step down");
    backend.clear(&key).await.expect("clean up");
}
