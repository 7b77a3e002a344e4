//! The lock conformance suite and property on the in-process `MemoryLock`: the reference
//! the distributed locks are held to, and a check of the suite itself.

use std::sync::Arc;

use state_core::MemoryBackend;
use state_lock::MemoryLock;
use testing::locks::{LockKind, LockSubject, WAIT_TIMEOUT};

async fn subject() -> LockSubject {
    // Two handles on one table: MemoryLock is per process, and clones share it.
    let lock = MemoryLock::with_wait_timeout(WAIT_TIMEOUT);
    LockSubject {
        lock: Arc::new(lock.clone()),
        other: Arc::new(lock),
        kind: LockKind::Lease,
        backend: Arc::new(MemoryBackend::new()),
        cleanup: None,
    }
}

testing::lock_conformance_suite!(subject);
testing::lock_property_suite!(subject);
