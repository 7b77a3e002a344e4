//! Leadership: which coordinator may write to the store, and under which fencing token.
//!
//! With a lock, the coordinator that holds it leads: it takes the lock with `try_acquire`
//! (never waiting behind another leader) and keeps it with a [`WatchedGuard`], the same
//! lease-and-watchdog that `state_lock::LeaderElector` stands on. Without a lock, the
//! coordinator always leads, under [`NO_LOCK_TOKEN`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use state_core::{DistributedLock, ErrorKind, Result, StateError};
use state_lock::{Lease, WatchedGuard};
use tokio::sync::watch;

/// The fencing token of checkpoints taken without a lock (a single process, a single
/// coordinator per store). Lock services issue tokens from 1 up, so the first checkpoint
/// taken under a lock sorts after every lockless one.
pub const NO_LOCK_TOKEN: u64 = 0;

/// Leave to write checkpoints under a token, valid while the lease it came with is held.
#[derive(Debug, Clone)]
pub(crate) struct Mandate {
    pub(crate) token: u64,
    /// `None` without a lock: always valid.
    lease: Option<watch::Receiver<Lease>>,
}

impl Mandate {
    /// Whether the lease is still held now (its deadline, on the monotonic clock, has not
    /// passed and it was neither lost nor released). Checked before every commit.
    pub(crate) fn is_valid(&self) -> bool {
        match &self.lease {
            None => true,
            Some(lease) => match *lease.borrow() {
                Lease::Held { deadline } => Instant::now() < deadline,
                Lease::Lost | Lease::Released => false,
            },
        }
    }
}

/// The coordinator's side of leader election.
#[derive(Debug)]
pub(crate) struct Leadership {
    lock: Option<Arc<dyn DistributedLock>>,
    name: String,
    ttl: Duration,
    /// The lease while leading.
    held: tokio::sync::Mutex<Option<WatchedGuard>>,
    /// The current mandate, readable without waiting (for `stats`).
    current: Mutex<Option<Mandate>>,
}

impl Leadership {
    pub(crate) fn new(lock: Option<Arc<dyn DistributedLock>>, name: &str, ttl: Duration) -> Self {
        Leadership {
            lock,
            name: name.to_string(),
            ttl,
            held: tokio::sync::Mutex::new(None),
            current: Mutex::new(None),
        }
    }

    /// The mandate to write: the one held, or a new one if the lock is free. `None` when
    /// another coordinator leads.
    pub(crate) async fn mandate(&self) -> Result<Option<Mandate>> {
        let Some(lock) = &self.lock else {
            return Ok(Some(Mandate {
                token: NO_LOCK_TOKEN,
                lease: None,
            }));
        };
        let mut held = self.held.lock().await;
        if let Some(guard) = held.as_ref() {
            if guard.is_held() {
                return Ok(Some(Mandate {
                    token: guard.fencing_token().0,
                    lease: Some(guard.subscribe()),
                }));
            }
            // Lost (a pause past the lease, a takeover): campaign again below.
            *held = None;
            self.set_current(None);
        }
        // The watchdog is a Tokio task: refuse rather than panic under another executor.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StateError::config(
                "the checkpoint coordinator needs a Tokio runtime to keep its lease",
            ));
        }
        let Some(guard) = lock.try_acquire(&self.name, self.ttl).await? else {
            return Ok(None);
        };
        let guard = WatchedGuard::new(Arc::clone(lock), guard, self.ttl);
        let mandate = Mandate {
            token: guard.fencing_token().0,
            lease: Some(guard.subscribe()),
        };
        *held = Some(guard);
        self.set_current(Some(mandate.clone()));
        Ok(Some(mandate))
    }

    /// The fencing token this coordinator leads under now, if it leads.
    pub(crate) fn token(&self) -> Option<u64> {
        match &self.lock {
            None => Some(NO_LOCK_TOKEN),
            Some(_) => self
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .filter(|m| m.is_valid())
                .map(|m| m.token),
        }
    }

    /// Steps down: releases the lock if held. A lease already lost counts as released.
    pub(crate) async fn release(&self) -> Result<()> {
        let guard = self.held.lock().await.take();
        self.set_current(None);
        match guard {
            Some(guard) => match guard.release().await {
                Err(e) if e.kind() == ErrorKind::NotOwner => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    fn set_current(&self, mandate: Option<Mandate>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = mandate;
    }
}

/// The error for a coordinator that does not lead.
pub(crate) fn not_leader(lock_name: &str) -> StateError {
    StateError::new(
        ErrorKind::NotOwner,
        format!(
            "this checkpoint coordinator does not lead: another holds the lock `{lock_name}`; \
             only the leader takes checkpoints"
        ),
    )
}
