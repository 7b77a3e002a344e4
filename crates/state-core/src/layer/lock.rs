//! [`LockLayered`]: a lock service wrapped in a [`LockHook`], the lock side of
//! [`Layered`](super::Layered).

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::lock::{DistributedLock, LockGuard};

/// The operations of [`DistributedLock`], as a layer sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // each variant is the trait method of the same name
pub enum LockOp {
    TryAcquire,
    Acquire,
    Extend,
    Release,
    IsLocked,
}

impl LockOp {
    /// The trait method's name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            LockOp::TryAcquire => "try_acquire",
            LockOp::Acquire => "acquire",
            LockOp::Extend => "extend",
            LockOp::Release => "release",
            LockOp::IsLocked => "is_locked",
        }
    }

    /// Whether it may change who holds a lock.
    pub fn is_write(self) -> bool {
        !matches!(self, LockOp::IsLocked)
    }
}

/// A lock call's result, as a layer may look at it.
pub trait LockOutcome: Send {
    /// Whether the call found the lock held by someone else (`try_acquire` got `None`).
    fn busy(&self) -> bool {
        false
    }
}

impl LockOutcome for () {}
impl LockOutcome for bool {}
impl LockOutcome for LockGuard {}

impl LockOutcome for Option<LockGuard> {
    fn busy(&self) -> bool {
        self.is_none()
    }
}

/// What a layer does around each call of the lock service it wraps.
pub trait LockHook: Send + Sync + fmt::Debug + 'static {
    /// Runs `call`, the inner lock service's answer to `op`.
    fn around<T: LockOutcome>(
        &self,
        op: LockOp,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send;
}

/// A lock service seen through a hook. Guards pass through untouched: a guard taken
/// through the wrapper releases itself on drop through the service that issued it.
#[derive(Debug)]
pub struct LockLayered<H> {
    hook: H,
    inner: Arc<dyn DistributedLock>,
}

impl<H: LockHook> LockLayered<H> {
    /// `inner` seen through `hook`.
    pub fn new(hook: H, inner: Arc<dyn DistributedLock>) -> LockLayered<H> {
        LockLayered { hook, inner }
    }
}

#[async_trait]
impl<H: LockHook> DistributedLock for LockLayered<H> {
    async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        let call = self.inner.try_acquire(name, ttl);
        self.hook.around(LockOp::TryAcquire, call).await
    }

    async fn try_acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: &str,
    ) -> Result<Option<LockGuard>> {
        let call = self.inner.try_acquire_as(name, ttl, owner);
        self.hook.around(LockOp::TryAcquire, call).await
    }

    async fn acquire(&self, name: &str, ttl: Duration) -> Result<LockGuard> {
        let call = self.inner.acquire(name, ttl);
        self.hook.around(LockOp::Acquire, call).await
    }

    async fn extend(&self, guard: &mut LockGuard, ttl: Duration) -> Result<()> {
        let call = self.inner.extend(guard, ttl);
        self.hook.around(LockOp::Extend, call).await
    }

    async fn release(&self, guard: LockGuard) -> Result<()> {
        let call = self.inner.release(guard);
        self.hook.around(LockOp::Release, call).await
    }

    async fn is_locked(&self, name: &str) -> Result<bool> {
        let call = self.inner.is_locked(name);
        self.hook.around(LockOp::IsLocked, call).await
    }
}
