//! [`StatsLayer`]: the guide's `stats()` counters, kept the same way for every backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::StateBackend;

pub use crate::stats::Stats;

use super::Layer;
use super::observe::{Finished, Observer, watch};

/// Counts every call: operations, errors, hits and misses, latency, bytes. Read them with
/// [`StateBackend::stats`] on the outermost backend (layers above pass the call down).
///
/// Each call counts once, however many retries the backend made; a scan or an export
/// counts once, when its stream ends or is dropped. Updates are relaxed atomic adds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatsLayer {
    _private: (),
}

impl StatsLayer {
    /// A layer that gives each backend it wraps counters of its own, starting at zero.
    pub fn new() -> StatsLayer {
        StatsLayer::default()
    }
}

impl Layer for StatsLayer {
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        watch(Arc::new(Counters::default()), inner)
    }

    fn observer(&self, _inner: &Arc<dyn StateBackend>) -> Option<Arc<dyn Observer>> {
        Some(Arc::new(Counters::default()))
    }
}

/// The counters of one wrapped backend: the [`Observer`] of [`StatsLayer`].
#[derive(Debug, Default)]
pub(super) struct Counters {
    operations: AtomicU64,
    errors: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    latency_us: AtomicU64,
    max_latency_us: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// Adds `n` unless it is zero: each add is a contended read-modify-write on the hot path.
fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Observer for Counters {
    fn finished(&self, call: &Finished) {
        let us = u64::try_from(call.elapsed.as_micros()).unwrap_or(u64::MAX);
        self.operations.fetch_add(1, Ordering::Relaxed);
        add(&self.latency_us, us);
        if us > self.max_latency_us.load(Ordering::Relaxed) {
            self.max_latency_us.fetch_max(us, Ordering::Relaxed);
        }
        if !call.ok() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        add(&self.hits, call.observed.hits);
        add(&self.misses, call.observed.misses);
        add(&self.bytes_read, call.observed.bytes_read);
        add(&self.bytes_written, call.bytes_written);
    }

    fn stats(&self, inner: Stats) -> Stats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let operations = load(&self.operations);
        Stats {
            operations,
            errors: load(&self.errors),
            hits: load(&self.hits),
            misses: load(&self.misses),
            avg_latency_us: load(&self.latency_us).checked_div(operations).unwrap_or(0),
            max_latency_us: load(&self.max_latency_us),
            bytes_read: load(&self.bytes_read),
            bytes_written: load(&self.bytes_written),
            ..inner
        }
    }
}
