//! [`LeaderElector`]: leader election on any [`DistributedLock`].

use std::sync::Arc;
use std::time::Duration;

use state_core::{DistributedLock, FencingToken, Result, StateBackend};
use tokio::sync::watch;

use crate::watchdog::{WatchedGuard, lease_ended};

/// Who leads, as one elector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// This elector does not lead (never did, stepped down, or lost its lease).
    Follower,
    /// This elector leads in `epoch`: the fencing token of its lease. Epochs increase
    /// strictly from one leader to the next, so storage written with
    /// [`put_fenced`](state_core::StateBackend::put_fenced) rejects a former leader.
    Leader {
        /// The fencing token of this term.
        epoch: FencingToken,
    },
}

/// Campaigns for the lock `name` and keeps the lease while leading.
///
/// ```no_run
/// # async fn demo(lock: std::sync::Arc<dyn state_lock::DistributedLock>) -> state_lock::Result<()> {
/// use std::time::Duration;
/// let elector = state_lock::LeaderElector::new(lock, "leader", Duration::from_secs(30));
/// loop {
///     let term = elector.campaign().await?;        // waits until elected
///     while term.is_leader() {                      // re-checked after every wait
///         // lead: write with term.epoch() as the fencing token
///         tokio::time::sleep(Duration::from_secs(10)).await;
///     }
///     // lost (paused past the TTL, partitioned): campaign again
/// }
/// # }
/// ```
///
/// At most one elector leads per epoch: leadership is a lease on the lock, renewed in the
/// background every `ttl / 3` by a [`WatchedGuard`]. A leader that cannot renew before the
/// lease runs out steps down by itself and tells its subscribers.
#[derive(Debug)]
pub struct LeaderElector {
    lock: Arc<dyn DistributedLock>,
    name: String,
    ttl: Duration,
    retry_interval: Duration,
    state: Arc<watch::Sender<Leadership>>,
}

impl LeaderElector {
    /// An elector for the lock `name` with leases of `ttl`; a follower retries every
    /// `ttl / 3` (see [`with_retry_interval`](Self::with_retry_interval)).
    pub fn new(lock: Arc<dyn DistributedLock>, name: impl Into<String>, ttl: Duration) -> Self {
        LeaderElector {
            lock,
            name: name.into(),
            ttl,
            retry_interval: (ttl / 3).max(Duration::from_millis(1)),
            state: Arc::new(watch::channel(Leadership::Follower).0),
        }
    }

    /// How often a follower tries to take the lock.
    pub fn with_retry_interval(mut self, interval: Duration) -> Self {
        self.retry_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Waits until this elector leads, then returns its term. A retryable error (the
    /// server is away) is retried at the retry interval; any other error is returned.
    pub async fn campaign(&self) -> Result<Term> {
        loop {
            match self.lock.try_acquire(&self.name, self.ttl).await {
                Ok(Some(guard)) => {
                    let guard = WatchedGuard::new(Arc::clone(&self.lock), guard, self.ttl);
                    let epoch = guard.fencing_token();
                    self.state.send_replace(Leadership::Leader { epoch });
                    // Step down in the state channel when the lease ends, however it ends.
                    let state = Arc::clone(&self.state);
                    let lease = guard.subscribe();
                    tokio::spawn(async move {
                        lease_ended(lease).await;
                        end_term(&state, epoch);
                    });
                    let state = Arc::clone(&self.state);
                    return Ok(Term { guard, state });
                }
                Ok(None) => {}
                Err(e) if e.is_retryable() => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(self.retry_interval).await;
        }
    }

    /// Whether this elector leads now, as last reported (see [`Term::is_leader`] for the
    /// check against the lease's own deadline).
    pub fn leadership(&self) -> Leadership {
        *self.state.borrow()
    }

    /// A receiver that sees every change of [`leadership`](Self::leadership).
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.state.subscribe()
    }
}

/// One term of leadership: holds the lease until dropped or [`step_down`](Self::step_down).
#[derive(Debug)]
pub struct Term {
    guard: WatchedGuard,
    state: Arc<watch::Sender<Leadership>>,
}

/// Reports `epoch` over, unless a later term has already been reported.
fn end_term(state: &watch::Sender<Leadership>, epoch: FencingToken) {
    state.send_if_modified(|now| {
        let ours = *now == Leadership::Leader { epoch };
        if ours {
            *now = Leadership::Follower;
        }
        ours
    });
}

impl Term {
    /// The epoch of this term (its fencing token).
    pub fn epoch(&self) -> FencingToken {
        self.guard.fencing_token()
    }

    /// Whether this term still leads: its lease was not lost and its deadline (on the
    /// monotonic clock, from before the last renewal was sent) has not passed. Check it
    /// after every wait before acting as the leader.
    pub fn is_leader(&self) -> bool {
        self.guard.is_held()
    }

    /// A write fenced with this term's epoch, refused with `NotOwner` (nothing sent) once
    /// the term has ended: see [`WatchedGuard::put_fenced`].
    pub async fn put_fenced(
        &self,
        backend: &dyn StateBackend,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        self.guard.put_fenced(backend, key, value).await
    }

    /// Waits until this term ends (lease lost or past its deadline).
    pub async fn lost(&self) {
        self.guard.lost().await;
    }

    /// Steps down: stops renewing and releases the lock so another elector can lead at
    /// once. `NotOwner` if the lease had already been lost.
    pub async fn step_down(self) -> Result<()> {
        end_term(&self.state, self.epoch());
        self.guard.release().await
    }
}
