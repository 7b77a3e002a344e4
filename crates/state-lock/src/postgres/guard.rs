//! What both modes do with guards: their local deadline, and refusing a foreign one.

use std::time::{Duration, Instant};

use state_core::{LockGuard, StateError};

/// The error for a guard this lock did not issue (another implementation's or mode's).
pub(super) fn foreign_guard(guard: &LockGuard) -> StateError {
    StateError::invalid_input(format!(
        "the guard of lock `{}` was not issued by this PostgreSQL lock (another lock type or \
         mode); release it with the lock that issued it",
        guard.name()
    ))
}

/// `started + ttl`, saturating far in the future instead of overflowing.
pub(super) fn deadline_after(started: Instant, ttl: Duration) -> Instant {
    started
        .checked_add(ttl)
        .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600))
}
