//! [`Stats`]: the guide's `backend.stats()` figures, one type for every backend; [`Gauge`]:
//! one figure read from the server now.

use std::collections::BTreeMap;

/// A snapshot of what a backend has done since it was opened.
///
/// The operation figures (`operations` to `bytes_written`) are counted by a
/// [`StatsLayer`](crate::StatsLayer), the same way for every backend: each call the user
/// makes counts once, however many retries it took; an error is a call that failed after
/// them; latency covers the whole call; bytes are the caller's keys and values. A backend
/// without that layer reports zero there. `retries` and `extra` come from the backend
/// itself, which alone sees them (see each backend's docs for its extra figures, such as
/// PostgreSQL's `queries` and `transactions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls finished (successful or not).
    pub operations: u64,
    /// Calls that failed (after the backend's retries).
    pub errors: u64,
    /// Requests the backend sent again after a transient failure (not errors).
    pub retries: u64,
    /// Keys found by `get`, `batch_get` and `get_and_delete`.
    pub hits: u64,
    /// Keys those did not find.
    pub misses: u64,
    /// Mean latency of a call, in microseconds.
    pub avg_latency_us: u64,
    /// The slowest call, in microseconds.
    pub max_latency_us: u64,
    /// Value bytes handed back to callers.
    pub bytes_read: u64,
    /// Key and value bytes callers handed over to be stored (keys without the prefix).
    pub bytes_written: u64,
    /// Figures only this backend has, by name.
    pub extra: BTreeMap<&'static str, u64>,
}

impl Stats {
    /// The guide's name for [`operations`](Self::operations).
    pub fn total_operations(&self) -> u64 {
        self.operations
    }

    /// Hits over lookups; 0.0 with no lookup.
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.hits.saturating_add(self.misses))
    }

    /// Errors over operations; 0.0 with no operation.
    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.operations)
    }

    /// A backend-specific figure, such as PostgreSQL's `"queries"`.
    pub fn extra(&self, name: &str) -> Option<u64> {
        self.extra.get(name).copied()
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One figure a backend reads from its server now ([`StateBackend::gauges`]), such as the
/// memory Redis uses or the dead tuples of a PostgreSQL table.
///
/// The name is fixed by the backend, `snake_case` and prefixed with the backend's name
/// (`redis_memory_used_bytes`), with a unit suffix where there is one. Being `'static`, it
/// cannot be made from data: never a key, a path or an id, so a metrics system that turns
/// it into a series name keeps a closed set of series.
///
/// [`StateBackend::gauges`]: crate::StateBackend::gauges
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Gauge {
    /// The figure's name, such as `redis_connected_clients`.
    pub name: &'static str,
    /// Its value now.
    pub value: f64,
}

impl Gauge {
    /// The figure `name` with `value`.
    pub const fn new(name: &'static str, value: f64) -> Gauge {
        Gauge { name, value }
    }
}
