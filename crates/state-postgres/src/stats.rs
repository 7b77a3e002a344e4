//! The driver's own counters (statements, transactions, retries, connections), reported
//! as [`Stats`] extras; the operation figures come from state-core's `StatsLayer`.
//!
//! The counters are striped: each thread bumps the stripe it was assigned, padded to its own
//! cache lines, so that two cores counting every statement do not fight over one line. A
//! snapshot sums the stripes.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use state_core::Stats;

const STRIPES: usize = 8;

/// One stripe of counters, alone on its cache lines.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Stripe {
    pub queries: AtomicU64,
    pub transactions: AtomicU64,
    pub retries: AtomicU64,
    pub errors: AtomicU64,
    pub connections_opened: AtomicU64,
    pub broken_connections: AtomicU64,
}

/// Every stripe.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    stripes: [Stripe; STRIPES],
}

/// This thread's stripe, assigned round-robin on first use.
fn stripe_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

impl Counters {
    /// The stripe this thread counts in.
    pub fn shard(&self) -> &Stripe {
        self.stripes.get(stripe_index()).unwrap_or(&self.stripes[0])
    }

    fn sum(&self, field: impl Fn(&Stripe) -> &AtomicU64) -> u64 {
        self.stripes
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    /// The backend's figures: `retries`, and the extras named in [`EXTRA_STATS`].
    pub fn snapshot(&self, open: usize, max: usize) -> Stats {
        let mut stats = Stats::default();
        stats.retries = self.sum(|s| &s.retries);
        let figures = [
            self.sum(|s| &s.queries),
            self.sum(|s| &s.transactions),
            self.sum(|s| &s.errors),
            self.sum(|s| &s.connections_opened),
            self.sum(|s| &s.broken_connections),
            open as u64,
            max as u64,
        ];
        stats.extra.extend(EXTRA_STATS.into_iter().zip(figures));
        stats
    }
}

/// The PostgreSQL backend's extra figures in [`Stats::extra`], by name:
///
/// - `queries`: statements sent (the guide's `query_count`), retries included;
/// - `transactions`: transactions committed or rolled back (`transaction_count`);
/// - `statement_errors`: statements that failed, retried ones included;
/// - `connections_opened`, `broken_connections`: connections opened, and found broken;
/// - `open_connections`, `max_connections`: the pool now, and its size.
pub const EXTRA_STATS: [&str; 7] = [
    "queries",
    "transactions",
    "statement_errors",
    "connections_opened",
    "broken_connections",
    "open_connections",
    "max_connections",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_the_stripes_and_names_every_extra() {
        let c = Counters::default();
        c.shard().queries.fetch_add(3, Ordering::Relaxed);
        c.stripes[STRIPES - 1]
            .queries
            .fetch_add(2, Ordering::Relaxed);
        c.shard().retries.fetch_add(1, Ordering::Relaxed);
        let s = c.snapshot(4, 10);
        assert_eq!(s.retries, 1);
        assert_eq!(s.extra("queries"), Some(5));
        assert_eq!(s.extra("open_connections"), Some(4));
        assert_eq!(s.extra("max_connections"), Some(10));
        assert_eq!(s.extra.len(), EXTRA_STATS.len());
        assert_eq!(s.operations, 0, "operations are the stats layer's");
    }
}
