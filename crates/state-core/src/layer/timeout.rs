//! [`TimeoutLayer`]: a deadline for each call, on backends and lock services alike.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::StateBackend;
use crate::error::{ErrorKind, Result, StateError};
use crate::lock::DistributedLock;

use super::hook::{Hook, Op, Outcome};
use super::layered::Layered;
use super::lock::{LockHook, LockLayered, LockOp, LockOutcome};
use super::{Layer, LockLayer};

/// Ends any call that takes longer than the deadline with a
/// [`Timeout`](ErrorKind::Timeout) error.
///
/// The deadline covers the whole call, the backend's retries included, so it is the most a
/// caller waits. A write cut short may have been applied: its error is marked
/// [`outcome_unknown`](StateError::outcome_unknown) and says so; a read's is not. Scans and
/// exports are streams the caller drives, so they pass through; a lock's `acquire`, which
/// waits for the lock by design, is bounded by the lock's own wait timeout instead.
///
/// Give the backend's own timeouts (connect, response) room below this one, or its retries
/// are cut short before they can work: this is the caller's deadline, not a network one.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    deadline: Duration,
}

impl TimeoutLayer {
    /// Calls end after `deadline`.
    pub fn new(deadline: Duration) -> TimeoutLayer {
        TimeoutLayer { deadline }
    }

    /// The deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    async fn bound<T>(
        &self,
        what: &'static str,
        may_have_written: bool,
        call: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.deadline, call).await {
            Ok(out) => out,
            Err(_) => {
                let err = StateError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what} did not finish within {:?} (the timeout layer's deadline){}",
                        self.deadline,
                        if may_have_written {
                            "; the write may have been applied"
                        } else {
                            ""
                        }
                    ),
                );
                Err(if may_have_written {
                    err.with_outcome_unknown()
                } else {
                    err
                })
            }
        }
    }
}

impl Layer for TimeoutLayer {
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        Arc::new(Layered::new(*self, inner))
    }
}

impl LockLayer for TimeoutLayer {
    fn layer_lock(&self, inner: Arc<dyn DistributedLock>) -> Arc<dyn DistributedLock> {
        Arc::new(LockLayered::new(*self, inner))
    }
}

impl Hook for TimeoutLayer {
    fn around<T: Outcome>(
        &self,
        op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        self.bound(op.kind.name(), op.kind.is_write(), call)
    }
}

impl LockHook for TimeoutLayer {
    fn around<T: LockOutcome>(
        &self,
        op: LockOp,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let bounded = !matches!(op, LockOp::Acquire);
        async move {
            if bounded {
                self.bound(op.name(), op.is_write(), call).await
            } else {
                call.await
            }
        }
    }
}
