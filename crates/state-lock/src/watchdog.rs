//! [`WatchedGuard`]: a guard whose lease is extended in the background while it lives.

use std::sync::Arc;
use std::time::{Duration, Instant};

use state_core::{
    DistributedLock, ErrorKind, FencingToken, LockGuard, Result, StateBackend, StateError,
};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinHandle;

/// The state of a watched lease, as its watchers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Held until `deadline` (monotonic), extended before it runs out.
    Held {
        /// When the lease runs out unless extended again.
        deadline: Instant,
    },
    /// Lost: an extend was refused (expired, taken over, connection gone) or could not
    /// get through before the deadline. The protected work must stop.
    Lost,
    /// Released by [`WatchedGuard::release`].
    Released,
}

/// A [`LockGuard`] with a watchdog: a task extends the lease to `ttl` every `ttl / 3`
/// while the guard lives, and tells the holder through [`lost`](Self::lost) when it could
/// not (refused, or no extend got through before the deadline).
///
/// Even a watched lease can be lost: a process paused longer than the TTL cannot extend.
/// Check [`is_held`](Self::is_held) before acting and pass
/// [`fencing_token`](Self::fencing_token) to fenced writes. Dropping it stops the
/// watchdog and drops the guard, which releases the lock.
#[derive(Debug)]
pub struct WatchedGuard {
    lock: Arc<dyn DistributedLock>,
    guard: Arc<Mutex<Option<LockGuard>>>,
    lease: watch::Receiver<Lease>,
    lease_tx: Arc<watch::Sender<Lease>>,
    name: String,
    token: FencingToken,
    task: JoinHandle<()>,
}

impl WatchedGuard {
    /// Watches `guard`, taken from `lock` with `ttl`. Must be called inside a Tokio
    /// runtime (it spawns the watchdog task).
    pub fn new(lock: Arc<dyn DistributedLock>, guard: LockGuard, ttl: Duration) -> WatchedGuard {
        let name = guard.name().to_string();
        let token = guard.fencing_token();
        let (tx, lease) = watch::channel(Lease::Held {
            deadline: guard.deadline(),
        });
        let guard = Arc::new(Mutex::new(Some(guard)));
        let lease_tx = Arc::new(tx);
        let task = tokio::spawn(renew(
            Arc::clone(&lock),
            Arc::clone(&guard),
            ttl,
            Arc::clone(&lease_tx),
        ));
        WatchedGuard {
            lock,
            guard,
            lease,
            lease_tx,
            name,
            token,
            task,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this acquisition.
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }

    /// Whether the lease is held now: not reported lost, and its deadline (monotonic clock)
    /// not passed.
    pub fn is_held(&self) -> bool {
        match *self.lease.borrow() {
            Lease::Held { deadline } => Instant::now() < deadline,
            Lease::Lost | Lease::Released => false,
        }
    }

    /// A fenced write made by the holder: refused here, with `NotOwner` and nothing sent,
    /// once the lease is lost or past its deadline; otherwise
    /// [`put_fenced`](StateBackend::put_fenced) with this guard's token.
    ///
    /// The two checks cover each other. The storage alone refuses a former holder only
    /// after a later holder has written the key with its higher token; this check refuses
    /// it as soon as the holder knows, even if nobody else has written yet. For a lease
    /// (Redis, PostgreSQL Lease mode) the deadline, measured before the last acquire or
    /// extend was sent, runs out no later than the server's lease, so no one else can hold
    /// the lock while this check passes, unless the write itself is delayed past the
    /// deadline, which is what the token is for. A session lock (PostgreSQL Session mode)
    /// is freed by the server as soon as its connection drops: the holder learns it at the
    /// watchdog's next extend (within `ttl / 3`), or at the deadline if the connection hangs.
    pub async fn put_fenced(
        &self,
        backend: &dyn StateBackend,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if !self.is_held() {
            return Err(StateError::new(
                ErrorKind::NotOwner,
                format!(
                    "fenced write under lock `{}` refused: the lease was lost or ran past its \
                     deadline; nothing was sent",
                    self.name
                ),
            ));
        }
        backend.put_fenced(key, value, self.token).await
    }

    /// A receiver of the lease's state, to `select!` on alongside the protected work.
    pub fn subscribe(&self) -> watch::Receiver<Lease> {
        self.lease.clone()
    }

    /// Waits until the lease is lost or released (or its deadline passes unextended).
    pub async fn lost(&self) {
        lease_ended(self.lease.clone()).await;
    }

    /// Stops the watchdog and releases the lock; `NotOwner` if the lease was lost first.
    pub async fn release(self) -> Result<()> {
        self.task.abort();
        let guard = self.guard.lock().await.take();
        self.lease_tx.send_replace(Lease::Released);
        match guard {
            Some(guard) => self.lock.release(guard).await,
            None => Err(StateError::not_owner(&self.name, "release")),
        }
    }
}

impl Drop for WatchedGuard {
    fn drop(&mut self) {
        // The guard itself releases when the last Arc (ours or the aborted task's) goes.
        self.task.abort();
    }
}

/// Waits until `lease` is lost, released, dropped, or past its deadline.
pub(crate) async fn lease_ended(mut lease: watch::Receiver<Lease>) {
    loop {
        let deadline = match *lease.borrow_and_update() {
            Lease::Held { deadline } => deadline,
            Lease::Lost | Lease::Released => return,
        };
        tokio::select! {
            changed = lease.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline.into()) => {
                let now = Instant::now();
                if matches!(*lease.borrow(), Lease::Held { deadline } if deadline <= now) {
                    return;
                }
            }
        }
    }
}

/// The watchdog: extends every `ttl / 3` and retries a retryable failure, until an extend
/// is refused or the deadline passes without one getting through. Then the lease counts as
/// lost, even if the server might still grant the lock a little longer (a session lock
/// would keep it for ever): the guard is dropped, which releases whatever is left, and the
/// holder is told `Lost`. Being conservative is what keeps one holder per fencing token.
async fn renew(
    lock: Arc<dyn DistributedLock>,
    guard: Arc<Mutex<Option<LockGuard>>>,
    ttl: Duration,
    lease: Arc<watch::Sender<Lease>>,
) {
    let period = (ttl / 3).max(Duration::from_millis(1));
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let mut slot = guard.lock().await;
        let Some(held) = slot.as_mut() else { return };
        let old_deadline = held.deadline();
        let extended = match held.is_expired() {
            true => false,
            false => match lock.extend(held, ttl).await {
                Ok(()) => true,
                Err(e) if e.is_retryable() => {
                    // Try again soon, but never sleep past the deadline.
                    let soon = Instant::now() + (period / 4).max(Duration::from_millis(1));
                    next = soon.min(held.deadline());
                    continue;
                }
                Err(_) => false,
            },
        };
        // An extend that came back after the old deadline leaves a gap in which another
        // holder may have had the lock: it does not count.
        if extended && Instant::now() < old_deadline {
            lease.send_replace(Lease::Held {
                deadline: held.deadline(),
            });
            next = Instant::now() + period;
            continue;
        }
        drop(slot.take());
        lease.send_replace(Lease::Lost);
        return;
    }
}
