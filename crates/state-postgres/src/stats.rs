//! Lock-free operation counters and the [`PostgresStats`] snapshot.
//!
//! The counters are striped: each thread bumps the stripe it was assigned, padded to its own
//! cache lines, so that two cores counting every operation do not fight over one line. A
//! snapshot sums the stripes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

const STRIPES: usize = 8;

/// One stripe of counters, alone on its cache lines.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Stripe {
    pub operations: AtomicU64,
    pub queries: AtomicU64,
    pub transactions: AtomicU64,
    pub retries: AtomicU64,
    pub errors: AtomicU64,
    pub failed_operations: AtomicU64,
    pub latency_micros: AtomicU64,
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    pub connections_opened: AtomicU64,
    pub broken_connections: AtomicU64,
}

/// Counters bumped on every operation: relaxed atomics, no lock.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    stripes: [Stripe; STRIPES],
    max_latency_micros: AtomicU64,
}

fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

impl Counters {
    /// The calling thread's stripe.
    pub fn shard(&self) -> &Stripe {
        // The index is always below STRIPES; the fallback only satisfies the type.
        self.stripes.get(stripe_index()).unwrap_or(&self.stripes[0])
    }

    pub fn finish(&self, elapsed: Duration, ok: bool) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let stripe = self.shard();
        stripe.operations.fetch_add(1, Ordering::Relaxed);
        stripe.latency_micros.fetch_add(micros, Ordering::Relaxed);
        // Read first: the shared maximum is written only when it grows, which is rare.
        if micros > self.max_latency_micros.load(Ordering::Relaxed) {
            self.max_latency_micros.fetch_max(micros, Ordering::Relaxed);
        }
        if !ok {
            stripe.failed_operations.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn wrote(&self, bytes: usize) {
        self.shard()
            .bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn read(&self, bytes: usize) {
        self.shard()
            .bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn sum(&self, field: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    pub fn snapshot(&self, open: usize, max: usize) -> PostgresStats {
        let operations = self.sum(|s| &s.operations);
        PostgresStats {
            operation_count: operations,
            query_count: self.sum(|s| &s.queries),
            transaction_count: self.sum(|s| &s.transactions),
            retry_count: self.sum(|s| &s.retries),
            error_count: self.sum(|s| &s.errors),
            failed_operation_count: self.sum(|s| &s.failed_operations),
            mean_latency: Duration::from_micros(
                self.sum(|s| &s.latency_micros)
                    .checked_div(operations)
                    .unwrap_or(0),
            ),
            max_latency: Duration::from_micros(self.max_latency_micros.load(Ordering::Relaxed)),
            bytes_written: self.sum(|s| &s.bytes_written),
            bytes_read: self.sum(|s| &s.bytes_read),
            connections_opened: self.sum(|s| &s.connections_opened),
            broken_connections: self.sum(|s| &s.broken_connections),
            open_connections: open,
            max_connections: max,
        }
    }
}

/// A snapshot of the backend's counters since it was opened (the guide's `stats()`).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostgresStats {
    /// Operations called (each counted once, whatever its retries).
    pub operation_count: u64,
    /// Statements sent to the server (transaction control included).
    pub query_count: u64,
    /// Transactions started explicitly (imports, exports, checkpoints, chunked batches).
    pub transaction_count: u64,
    /// Retries of operations that failed with a retryable error.
    pub retry_count: u64,
    /// Statements that failed (each attempt counted).
    pub error_count: u64,
    /// Operations that returned an error after their retries.
    pub failed_operation_count: u64,
    /// Mean operation latency, retries included.
    pub mean_latency: Duration,
    /// The slowest operation.
    pub max_latency: Duration,
    /// Key and value bytes sent.
    pub bytes_written: u64,
    /// Key and value bytes received.
    pub bytes_read: u64,
    /// Connections opened, reconnects included.
    pub connections_opened: u64,
    /// Connections discarded after a transport failure or a cancelled request.
    pub broken_connections: u64,
    /// Connections open now.
    pub open_connections: usize,
    /// The most connections the backend opens (`pool_max`).
    pub max_connections: usize,
}
