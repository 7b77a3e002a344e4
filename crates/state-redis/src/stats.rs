//! Operation statistics in lock-free atomics, updated by every operation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counters shared by every clone of a backend; each update is one relaxed atomic add.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    operations: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    latency_us: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl Counters {
    /// One finished operation (after its retries), successful or not.
    pub(crate) fn finished(&self, elapsed: Duration, ok: bool) {
        self.operations.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.fetch_add(us, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One retry of an operation (not an error: the operation may still succeed).
    pub(crate) fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Read results: `hits` keys found, `misses` not found.
    pub(crate) fn lookups(&self, hits: u64, misses: u64) {
        // Skip zero adds: each is a contended read-modify-write on the hot path.
        if hits > 0 {
            self.hits.fetch_add(hits, Ordering::Relaxed);
        }
        if misses > 0 {
            self.misses.fetch_add(misses, Ordering::Relaxed);
        }
    }

    pub(crate) fn read(&self, bytes: usize) {
        self.bytes_read.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn written(&self, bytes: usize) {
        self.bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> RedisStats {
        let operations = self.operations.load(Ordering::Relaxed);
        let latency = self.latency_us.load(Ordering::Relaxed);
        RedisStats {
            operations,
            errors: self.errors.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            avg_latency_us: latency.checked_div(operations).unwrap_or(0),
            bytes_read: self.bytes_read.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of a backend's statistics since it was created.
///
/// Every operation counts once, however many retries it took; an error is an operation
/// that failed after its retries. Latency covers the whole operation, retries included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RedisStats {
    /// Operations finished (successful or not).
    pub operations: u64,
    /// Operations that failed (after retries).
    pub errors: u64,
    /// Retries made (each is not an error).
    pub retries: u64,
    /// Keys found by `get`, `batch_get` and `get_and_delete`.
    pub hits: u64,
    /// Keys not found by those.
    pub misses: u64,
    /// Mean latency of an operation, in microseconds.
    pub avg_latency_us: u64,
    /// Value bytes received.
    pub bytes_read: u64,
    /// Key and value bytes sent by writes.
    pub bytes_written: u64,
}

impl RedisStats {
    /// The guide's name for [`operations`](Self::operations).
    pub fn total_operations(&self) -> u64 {
        self.operations
    }

    /// Hits over lookups, 0.0 with no lookup.
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.hits + self.misses)
    }

    /// Errors over operations, 0.0 with no operation.
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.operations)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_averages() {
        let c = Counters::default();
        assert_eq!(c.snapshot().hit_rate(), 0.0);
        c.finished(Duration::from_micros(100), true);
        c.finished(Duration::from_micros(300), false);
        c.retried();
        c.lookups(3, 1);
        let s = c.snapshot();
        assert_eq!((s.operations, s.errors, s.retries), (2, 1, 1));
        assert_eq!(s.avg_latency_us, 200);
        assert_eq!(s.hit_rate(), 0.75);
        assert_eq!(s.error_rate(), 0.5);
    }
}
