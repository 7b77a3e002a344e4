//! The [`DistributedLock`] trait and the [`LockGuard`] it hands out.

use std::any::Any;
use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::error::{Result, StateError};
use crate::types::FencingToken;

/// The longest lock name, in bytes.
pub const MAX_LOCK_NAME_LEN: usize = 512;

/// Checks a lock name: 1 to [`MAX_LOCK_NAME_LEN`] bytes. Every implementation calls it
/// before the wire, so a bad name is the same `InvalidInput` error everywhere.
pub fn check_lock_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(StateError::invalid_input(
            "the lock name is empty; name the lock",
        ));
    }
    if name.len() > MAX_LOCK_NAME_LEN {
        return Err(StateError::invalid_input(format!(
            "the lock name is {} bytes, over the limit of {MAX_LOCK_NAME_LEN}",
            name.len()
        )));
    }
    Ok(())
}

/// A fresh owner token: 128 random bits from the operating system, as 32 hex digits.
///
/// Falls back to a process-seeded hash of the time and a counter if the OS has no random
/// source: owner tokens must be unique, not secret.
pub fn new_owner_token() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        use std::hash::BuildHasher;
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let state = std::collections::hash_map::RandomState::new();
        let seed = (
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::process::id(),
            std::time::SystemTime::now(),
        );
        bytes[..8].copy_from_slice(&state.hash_one(seed).to_le_bytes());
        bytes[8..].copy_from_slice(&state.hash_one((seed, 1u8)).to_le_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut token = String::with_capacity(2 * bytes.len());
    for b in bytes {
        token.push(char::from(HEX[usize::from(b >> 4)]));
        token.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    token
}

/// A named, leased, mutually exclusive lock shared by processes.
///
/// Every acquisition returns a [`LockGuard`] carrying a [`FencingToken`] that increases
/// strictly across holders of the same name: pass it to
/// [`StateBackend::put_fenced`](crate::StateBackend::put_fenced) so that a holder who lost
/// its lease (paused, partitioned) cannot overwrite its successor.
#[async_trait]
pub trait DistributedLock: Send + Sync + fmt::Debug + 'static {
    /// Takes the lock if it is free; `None` if someone else holds it (this process
    /// included: locks are not re-entrant). The owner token is a fresh
    /// [`new_owner_token`].
    async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        self.try_acquire_as(name, ttl, &new_owner_token()).await
    }

    /// [`try_acquire`](Self::try_acquire) with the owner token chosen by the caller.
    ///
    /// This is how an ambiguous acquire is resolved: when a request fails after it was sent
    /// (the reply was lost), retrying with the *same* owner token returns a guard for the
    /// lock the first attempt took (same fencing token, lease renewed) instead of waiting
    /// for itself; a different owner still gets `None`. Implementations retry internally
    /// this way.
    async fn try_acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: &str,
    ) -> Result<Option<LockGuard>>;

    /// Waits (with backoff and jitter) until the lock is free, up to the implementation's
    /// configured wait timeout, then takes it; a [`Timeout`](crate::ErrorKind::Timeout)
    /// error when the wait runs out.
    async fn acquire(&self, name: &str, ttl: Duration) -> Result<LockGuard>;

    /// Extends the lease to `ttl` from now and moves the guard's deadline. Fails with
    /// [`NotOwner`](crate::ErrorKind::NotOwner) after expiry or takeover, and then never
    /// re-creates the lock.
    async fn extend(&self, guard: &mut LockGuard, ttl: Duration) -> Result<()>;

    /// Releases the lock. Fails with [`NotOwner`](crate::ErrorKind::NotOwner) and changes
    /// nothing if the guard no longer holds it.
    async fn release(&self, guard: LockGuard) -> Result<()>;

    /// Whether anyone holds the lock now.
    async fn is_locked(&self, name: &str) -> Result<bool>;
}

/// Implementation state a guard carries (a dedicated connection, a client handle).
///
/// The implementation gets its own type back in `release`/`extend` by upcasting to `Any`
/// and downcasting: `(state as &dyn Any).downcast_ref::<MyState>()`, or
/// `(boxed as Box<dyn Any + Send + Sync>).downcast::<MyState>()`.
pub trait GuardState: Any + Send + Sync + fmt::Debug {
    /// Called exactly once when a guard is dropped without an explicit release. It must
    /// release best-effort without blocking and without panicking, inside or outside a
    /// Tokio runtime (the lease expiring is the fallback).
    fn release_on_drop(self: Box<Self>, name: &str, owner: &str);
}

/// Proof of holding a lock: its name, the owner token, the fencing token, and the deadline
/// of the lease.
///
/// The deadline is measured on a monotonic clock from *before* the acquire request was
/// sent, so it can only be earlier than the server's expiry, never later; stepping the wall
/// clock does not move it. Dropping the guard releases the lock best-effort.
pub struct LockGuard {
    name: String,
    owner: String,
    token: FencingToken,
    deadline: Instant,
    state: Option<Box<dyn GuardState>>,
}

impl LockGuard {
    /// A guard for `name` held by `owner` with `token`, valid until `deadline`. `state` is
    /// released on drop unless taken back with [`take_state`](Self::take_state).
    pub fn new(
        name: impl Into<String>,
        owner: impl Into<String>,
        token: FencingToken,
        deadline: Instant,
        state: Option<Box<dyn GuardState>>,
    ) -> Self {
        LockGuard {
            name: name.into(),
            owner: owner.into(),
            token,
            deadline,
            state,
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The random token that identifies this holder.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The fencing token of this acquisition.
    pub fn fencing_token(&self) -> FencingToken {
        self.token
    }

    /// When the lease runs out, on the monotonic clock.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Moves the deadline (after a successful extend).
    pub fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }

    /// How long the lease has left; zero once it has run out.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Whether the lease has run out by the local monotonic clock.
    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// The implementation state, for the implementation to look at.
    pub fn state(&self) -> Option<&dyn GuardState> {
        self.state.as_deref()
    }

    /// Takes the implementation state out; the guard then releases nothing on drop. Used by
    /// an explicit release so that no second release follows from `Drop`.
    pub fn take_state(&mut self) -> Option<Box<dyn GuardState>> {
        self.state.take()
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.release_on_drop(&self.name, &self.owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Debug)]
    struct Counting(Arc<AtomicUsize>);

    impl GuardState for Counting {
        fn release_on_drop(self: Box<Self>, _name: &str, _owner: &str) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn drop_releases_once_and_not_after_take() {
        let releases = Arc::new(AtomicUsize::new(0));
        let deadline = Instant::now() + Duration::from_secs(1);
        let guard = LockGuard::new(
            "a",
            "o",
            FencingToken(1),
            deadline,
            Some(Box::new(Counting(releases.clone()))),
        );
        drop(guard);
        assert_eq!(releases.load(Ordering::SeqCst), 1);

        let mut guard = LockGuard::new(
            "a",
            "o",
            FencingToken(2),
            deadline,
            Some(Box::new(Counting(releases.clone()))),
        );
        let state = guard.take_state();
        drop(guard);
        assert_eq!(releases.load(Ordering::SeqCst), 1);
        assert!(state.is_some());
    }
}
