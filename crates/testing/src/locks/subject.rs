//! What the lock cases run against: two handles on one lock service, the kind of lock, a
//! backend for fenced writes; and the helpers every lock case uses.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use state_core::{DistributedLock, StateBackend};

use crate::harness::{Opened, Subject, unique_namespace};

/// The `acquire` wait timeout the suite expects both handles to be configured with.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a lock ends when its holder goes quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// A lease: the server frees the lock `ttl` after the last acquire or extend.
    Lease,
    /// A session lock (PostgreSQL advisory lock): held as long as the holder's connection,
    /// whatever the TTL; the TTL is only the guard's local deadline.
    Session,
}

/// Work to run after a case (dropping a schema…).
pub type Cleanup = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the lock cases run against.
pub struct LockSubject {
    /// Handle A.
    pub lock: Arc<dyn DistributedLock>,
    /// Handle B: independent of A (its own connections), as another process would be.
    pub other: Arc<dyn DistributedLock>,
    /// Lease or session semantics.
    pub kind: LockKind,
    /// Where fenced writes go: a real backend on the same server, or a `MemoryBackend`.
    pub backend: Arc<dyn StateBackend>,
    /// Run after the case, pass or fail.
    pub cleanup: Option<Cleanup>,
}

impl fmt::Debug for LockSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockSubject")
            .field("lock", &self.lock)
            .field("other", &self.other)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The future a lock factory returns.
pub type SubjectFuture = Pin<Box<dyn Future<Output = LockSubject> + Send>>;

/// Builds a fresh [`LockSubject`].
pub type LockFactory = Arc<dyn Fn() -> SubjectFuture + Send + Sync>;

/// Wraps an `async fn() -> LockSubject` as a [`LockFactory`].
pub fn factory<F, Fut>(f: F) -> LockFactory
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = LockSubject> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// A lock name no other case or run uses, ending in `tag`.
pub fn unique_name(tag: &str) -> String {
    format!("{}{tag}", unique_namespace())
}

/// Polls `check` every 20 ms until it is true; panics naming `what` after `bound`.
pub async fn eventually<F, Fut>(what: &str, bound: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "{what}: still not true after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Subject for LockSubject {
    type Factory = LockFactory;

    const SUITE: &'static str = "lock";

    async fn open(factory: LockFactory) -> Opened<LockSubject> {
        let mut subject = factory().await;
        let cleanup = subject.cleanup.take();
        let on = format!("{:?}", subject.lock);
        Opened {
            subject: Arc::new(subject),
            on,
            teardown: Box::pin(async move {
                if let Some(cleanup) = cleanup {
                    cleanup().await;
                }
                Ok(())
            }),
        }
    }
}
