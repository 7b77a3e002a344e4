//! Layers: what every backend shares, written once, wrapped around any backend.
//!
//! A [`Layer`] turns one `Arc<dyn StateBackend>` into another that is itself a
//! [`StateBackend`], in the spirit of tower's `Layer` and OpenDAL's layers. A [`Stack`] lists
//! layers top to bottom, the way a request travels: the first layer named sees a call first.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use state_core::{Limits, LimitsLayer, MemoryBackend, Stack, StateBackend, StatsLayer, TimeoutLayer};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let backend = Stack::new()
//!     .layer(StatsLayer::new())                       // counts every call the user makes
//!     .layer(TimeoutLayer::new(Duration::from_secs(2))) // bounds each call
//!     .layer(LimitsLayer::new(Limits { max_key_len: 64, max_value_len: 1 << 20 }))
//!     .apply(Arc::new(MemoryBackend::new()));
//! backend.put(b"k", b"v").await?;
//! assert!(backend.put(&[b'x'; 65], b"v").await.is_err()); // refused by the limits layer
//! let stats = backend.stats().await;
//! assert_eq!((stats.total_operations(), stats.errors), (2, 1));
//! # Ok::<(), state_core::StateError>(())
//! # }).unwrap();
//! ```
//!
//! # What is a layer and what stays in a backend
//!
//! A layer holds what does not need the driver: counting ([`StatsLayer`]), a deadline per
//! call ([`TimeoutLayer`]), narrower input limits ([`LimitsLayer`]), values stored compressed
//! ([`CompressionLayer`]); `state-metrics` adds
//! metrics and tracing the same way. A backend keeps what needs its driver: reconnects,
//! `MOVED`/`ASK`, `NOSCRIPT`, retries and outcome-unknown marking, and the limits of what
//! the store can hold.
//!
//! Retries stay in the backends, under the one rule of [`RetryPolicy`](crate::RetryPolicy).
//! Whether a request may be sent again depends on whether the server executed any of it,
//! which only the driver can tell: a refused connection, `MOVED`, `LOADING` or a PostgreSQL
//! shutdown mean "nothing ran"; a lost reply means "unknown". A layer sees only the error a
//! whole operation ended with, after the backend's own retries, and a pipelined batch may
//! have been half applied by then. A generic retry layer would have to resend on less
//! knowledge than the backend had when it gave up, which is how writes got applied twice
//! before (RETRIES.md).
//!
//! The store's own limits stay checked by every backend, so the trait's promise ("refused
//! before anything is sent") holds for a bare backend too; those limits come from the
//! driver's configuration and the server's. [`LimitsLayer`] narrows them for an application.
//!
//! # Writing a layer
//!
//! Implement [`Hook`] (one method runs around every call) and return a [`Layered`] from
//! [`Layer::layer`], or implement [`StateBackend`] for a wrapper of your own.
//!
//! A layer that only watches calls (counting, timing, tracing) is better written as an
//! [`Observer`], returned by [`Layer::observer`]: a [`Stack`] then lets neighbouring
//! observers share one layer and one pair of clock reads per call. Three observers
//! stacked cost about what one costs as a separate layer (BENCHMARKS.md).

pub mod compress;
mod hook;
mod layered;
mod limits;
mod lock;
mod observe;
mod stats;
mod timeout;

use std::fmt;
use std::sync::Arc;

use crate::backend::StateBackend;
use crate::lock::DistributedLock;

pub use compress::{Algorithm, CompressionLayer};
pub use hook::{Hook, Input, Observed, Op, OpKind, Outcome};
pub use layered::Layered;
pub use limits::LimitsLayer;
pub use lock::{LockHook, LockLayered, LockOp, LockOutcome};
pub use observe::{Finished, Observer, Scope, Watched, thread_stripe, watch};
pub use stats::{Stats, StatsLayer};
pub use timeout::TimeoutLayer;

/// Wraps a backend in another that is itself a backend.
pub trait Layer: Send + Sync + fmt::Debug + 'static {
    /// The wrapped backend.
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend>;

    /// The [`Observer`] this layer is over `inner`, if it only watches calls; its
    /// [`layer`](Self::layer) is then [`watch`]`(observer, inner)`. A [`Stack`] asks, to
    /// give neighbouring observers one layer. `None` by default.
    fn observer(&self, inner: &Arc<dyn StateBackend>) -> Option<Arc<dyn Observer>> {
        let _ = inner;
        None
    }
}

/// Wraps a lock service in another that is itself a lock service.
pub trait LockLayer: Send + Sync + fmt::Debug + 'static {
    /// The wrapped lock service.
    fn layer_lock(&self, inner: Arc<dyn DistributedLock>) -> Arc<dyn DistributedLock>;
}

/// Layers named top to bottom, applied to backends and lock services.
///
/// The first layer added is the outermost: it sees each call first and its result last.
/// An empty stack returns what it is given, unchanged and unwrapped.
#[derive(Debug, Clone, Default)]
pub struct Stack {
    layers: Vec<Arc<dyn Layer>>,
    lock_layers: Vec<Arc<dyn LockLayer>>,
}

impl Stack {
    /// An empty stack.
    pub fn new() -> Stack {
        Stack::default()
    }

    /// Adds `layer` below the layers already added.
    pub fn layer(mut self, layer: impl Layer) -> Stack {
        self.layers.push(Arc::new(layer));
        self
    }

    /// Adds `layer` below the lock layers already added.
    pub fn lock_layer(mut self, layer: impl LockLayer) -> Stack {
        self.lock_layers.push(Arc::new(layer));
        self
    }

    /// Adds every layer of `other` below the layers already added.
    pub fn extend(&mut self, other: &Stack) {
        self.layers.extend(other.layers.iter().cloned());
        self.lock_layers.extend(other.lock_layers.iter().cloned());
    }

    /// Whether the stack holds no layer of either kind.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty() && self.lock_layers.is_empty()
    }

    /// `backend` wrapped in every backend layer, the first added outermost. Neighbouring
    /// [observers](Layer::observer) share one layer: each is told of every call as if it
    /// had a layer of its own, in the same order.
    pub fn apply(&self, backend: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        let mut inner = backend;
        let mut watching: Vec<Arc<dyn Observer>> = Vec::new();
        for layer in self.layers.iter().rev() {
            match layer.observer(&inner) {
                Some(observer) => watching.push(observer),
                None => {
                    inner = watched(std::mem::take(&mut watching), inner);
                    inner = layer.layer(inner);
                }
            }
        }
        watched(watching, inner)
    }

    /// `lock` wrapped in every lock layer, the first added outermost.
    pub fn apply_lock(&self, lock: Arc<dyn DistributedLock>) -> Arc<dyn DistributedLock> {
        self.lock_layers
            .iter()
            .rev()
            .fold(lock, |inner, layer| layer.layer_lock(inner))
    }
}

/// `inner` watched by `observers` (innermost first) in one layer, or unwrapped if none.
fn watched(
    observers: Vec<Arc<dyn Observer>>,
    inner: Arc<dyn StateBackend>,
) -> Arc<dyn StateBackend> {
    if observers.is_empty() {
        return inner;
    }
    Arc::new(Layered::new(Watched::new(observers), inner))
}

#[cfg(test)]
mod tests;
