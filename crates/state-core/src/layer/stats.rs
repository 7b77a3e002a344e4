//! [`StatsLayer`]: the guide's `stats()` counters, kept the same way for every backend.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::backend::StateBackend;

pub use crate::stats::Stats;

use super::Layer;
use super::observe::{Finished, Observer, thread_stripe, watch};

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
///
/// Sharded by thread: tasks on different cores would otherwise take turns owning the one
/// cache line that every call writes to, which costs more than the counting itself.
#[derive(Debug, Default)]
pub(super) struct Counters {
    shards: [Shard; SHARDS],
}

/// Enough for the worker threads of most services; more threads share shards.
const SHARDS: usize = 16;

/// One thread's share of the counters, on cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    operations: AtomicU64,
    errors: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    latency_us: AtomicU64,
    max_latency_us: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

/// Adds `n` unless it is zero.
fn add(counter: &AtomicU64, n: u64) {
    if n > 0 {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Observer for Counters {
    fn finished(&self, call: &Finished) {
        let shard = &self.shards[thread_stripe() % SHARDS];
        let us = u64::try_from(call.elapsed.as_micros()).unwrap_or(u64::MAX);
        shard.operations.fetch_add(1, Ordering::Relaxed);
        add(&shard.latency_us, us);
        if us > shard.max_latency_us.load(Ordering::Relaxed) {
            shard.max_latency_us.fetch_max(us, Ordering::Relaxed);
        }
        if !call.ok() {
            shard.errors.fetch_add(1, Ordering::Relaxed);
        }
        add(&shard.hits, call.observed.hits);
        add(&shard.misses, call.observed.misses);
        add(&shard.bytes_read, call.observed.bytes_read);
        add(&shard.bytes_written, call.bytes_written);
    }

    fn stats(&self, inner: Stats) -> Stats {
        let sum = |field: fn(&Shard) -> &AtomicU64| -> u64 {
            self.shards
                .iter()
                .map(|shard| field(shard).load(Ordering::Relaxed))
                .fold(0, u64::saturating_add)
        };
        let operations = sum(|s| &s.operations);
        let max_latency_us = self
            .shards
            .iter()
            .map(|shard| shard.max_latency_us.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0);
        Stats {
            operations,
            errors: sum(|s| &s.errors),
            hits: sum(|s| &s.hits),
            misses: sum(|s| &s.misses),
            avg_latency_us: sum(|s| &s.latency_us).checked_div(operations).unwrap_or(0),
            max_latency_us,
            bytes_read: sum(|s| &s.bytes_read),
            bytes_written: sum(|s| &s.bytes_written),
            ..inner
        }
    }
}
