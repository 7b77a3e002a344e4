//! [`StatsLayer`]: the guide's `stats()` counters, kept the same way for every backend.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::backend::{BoxStream, StateBackend};
use crate::error::Result;
use crate::types::Entry;

pub use crate::stats::Stats;

use super::Layer;
use super::hook::{Hook, Op, OpKind, Outcome};
use super::layered::Layered;

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
        Arc::new(Layered::new(Counters::default(), inner))
    }
}

/// The counters of one wrapped backend: the [`Hook`] of [`StatsLayer`].
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

impl Counters {
    fn finished(&self, elapsed: Duration, ok: bool) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.operations.fetch_add(1, Ordering::Relaxed);
        add(&self.latency_us, us);
        if us > self.max_latency_us.load(Ordering::Relaxed) {
            self.max_latency_us.fetch_max(us, Ordering::Relaxed);
        }
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Hook for Counters {
    fn around<T: Outcome>(
        &self,
        op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let written = op.input.bytes_written();
        let started = Instant::now();
        async move {
            let out = call.await;
            self.finished(started.elapsed(), out.is_ok());
            if let Ok(value) = &out {
                let seen = value.observed();
                add(&self.hits, seen.hits);
                add(&self.misses, seen.misses);
                add(&self.bytes_read, seen.bytes_read);
                add(&self.bytes_written, written);
            }
            out
        }
    }

    fn around_stream<'a>(
        &'a self,
        kind: OpKind,
        stream: BoxStream<'a, Result<Entry>>,
    ) -> BoxStream<'a, Result<Entry>> {
        let _ = kind;
        let started = Instant::now();
        crate::stream::observed(
            stream,
            |entry: &Entry| add(&self.bytes_read, entry.value.len() as u64),
            move |ok| self.finished(started.elapsed(), ok),
        )
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
