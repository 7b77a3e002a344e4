//! [`MemoryLock`]: the in-process reference implementation.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use state_core::{
    DistributedLock, FencingToken, GuardState, LockGuard, Result, StateError, check_lock_name,
    ttl_millis,
};

/// A lock shared by the tasks of one process, with the same semantics as the distributed
/// ones: leases that expire, owner tokens, strictly increasing fencing tokens, no
/// re-entrance. For tests, examples and single-process deployments; clones share the locks.
#[derive(Clone)]
pub struct MemoryLock {
    inner: Arc<Inner>,
}

struct Inner {
    held: Mutex<Table>,
    wait_timeout: Duration,
}

#[derive(Default)]
struct Table {
    /// The last fencing token issued, for any name.
    last_token: u64,
    holders: HashMap<String, Holder>,
}

struct Holder {
    owner: String,
    token: u64,
    expires: Instant,
}

impl MemoryLock {
    /// A lock table whose `acquire` waits up to 30 seconds.
    pub fn new() -> MemoryLock {
        MemoryLock::with_wait_timeout(Duration::from_secs(30))
    }

    /// A lock table whose `acquire` waits up to `wait_timeout`.
    pub fn with_wait_timeout(wait_timeout: Duration) -> MemoryLock {
        MemoryLock {
            inner: Arc::new(Inner {
                held: Mutex::new(Table::default()),
                wait_timeout,
            }),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `owner` holds `name` with `token` and a live lease.
    fn holds(table: &Table, name: &str, owner: &str, token: FencingToken, now: Instant) -> bool {
        table
            .holders
            .get(name)
            .is_some_and(|h| h.owner == owner && h.token == token.0 && h.expires > now)
    }
}

impl Default for MemoryLock {
    fn default() -> Self {
        MemoryLock::new()
    }
}

impl fmt::Debug for MemoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLock")
            .field("held", &self.table().holders.len())
            .field("wait_timeout", &self.inner.wait_timeout)
            .finish()
    }
}

/// What a guard keeps: the table, to release itself on drop.
#[derive(Debug)]
struct MemoryGuardState {
    lock: MemoryLock,
}

impl GuardState for MemoryGuardState {
    fn release_on_drop(self: Box<Self>, name: &str, owner: &str) {
        // No I/O: releasing is a map update, safe with or without a runtime.
        let mut table = self.lock.table();
        if table.holders.get(name).is_some_and(|h| h.owner == owner) {
            table.holders.remove(name);
        }
    }
}

#[async_trait]
impl DistributedLock for MemoryLock {
    async fn try_acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: &str,
    ) -> Result<Option<LockGuard>> {
        check_lock_name(name)?;
        ttl_millis(ttl)?;
        let now = Instant::now();
        let mut table = self.table();
        let token = match table.holders.get_mut(name) {
            Some(h) if h.expires > now && h.owner == owner => {
                h.expires = now + ttl;
                h.token
            }
            Some(h) if h.expires > now => return Ok(None),
            _ => {
                table.last_token += 1;
                let token = table.last_token;
                let holder = Holder {
                    owner: owner.to_string(),
                    token,
                    expires: now + ttl,
                };
                table.holders.insert(name.to_string(), holder);
                token
            }
        };
        let state = MemoryGuardState { lock: self.clone() };
        Ok(Some(LockGuard::new(
            name,
            owner,
            FencingToken(token),
            now + ttl,
            Some(Box::new(state)),
        )))
    }

    async fn acquire(&self, name: &str, ttl: Duration) -> Result<LockGuard> {
        crate::wait::acquire_waiting(self, name, ttl, self.inner.wait_timeout).await
    }

    async fn extend(&self, guard: &mut LockGuard, ttl: Duration) -> Result<()> {
        ttl_millis(ttl)?;
        let now = Instant::now();
        let mut table = self.table();
        let (name, owner, token) = (guard.name(), guard.owner(), guard.fencing_token());
        if !Self::holds(&table, name, owner, token, now) {
            return Err(StateError::not_owner(name, "extend"));
        }
        if let Some(h) = table.holders.get_mut(name) {
            h.expires = now + ttl;
        }
        guard.set_deadline(now + ttl);
        Ok(())
    }

    async fn release(&self, mut guard: LockGuard) -> Result<()> {
        // Taken first: whatever happens below, Drop releases nothing a second time.
        drop(guard.take_state());
        let mut table = self.table();
        let (name, owner, token) = (guard.name(), guard.owner(), guard.fencing_token());
        if !Self::holds(&table, name, owner, token, Instant::now()) {
            return Err(StateError::not_owner(name, "release"));
        }
        table.holders.remove(name);
        Ok(())
    }

    async fn is_locked(&self, name: &str) -> Result<bool> {
        check_lock_name(name)?;
        let now = Instant::now();
        Ok(self
            .table()
            .holders
            .get(name)
            .is_some_and(|h| h.expires > now))
    }
}
