//! The lock conformance suite on `MemoryLock` under a lock layer: guards, tokens and
//! waits pass through a layer unchanged.

use std::sync::Arc;
use std::time::Duration;

use state_core::{MemoryBackend, Stack, TimeoutLayer};
use state_lock::MemoryLock;
use testing::locks::{LockKind, LockSubject, WAIT_TIMEOUT};

async fn subject() -> LockSubject {
    let lock = MemoryLock::with_wait_timeout(WAIT_TIMEOUT);
    // Far above the suite's own waits: the deadline must never decide an outcome here.
    let stack = Stack::new().lock_layer(TimeoutLayer::new(Duration::from_secs(60)));
    LockSubject {
        lock: stack.apply_lock(Arc::new(lock.clone())),
        other: stack.apply_lock(Arc::new(lock)),
        kind: LockKind::Lease,
        backend: Arc::new(MemoryBackend::new()),
        cleanup: None,
    }
}

testing::lock_conformance_suite!(subject);
testing::lock_property_suite!(subject);
