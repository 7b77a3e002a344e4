//! Every metric this crate emits, in one place: name, kind, labels and help. The docs, the
//! descriptions given to the recorder, and the test that compares them with what is really
//! emitted all read this table.

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// A monotonic count (`_total`).
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution (rendered as a Prometheus histogram with [`DURATION_BUCKETS`] or
    /// [`ENTRY_BUCKETS`]).
    Histogram,
}

/// One metric: its name, kind, label names (closed sets only: never a key, a path or an
/// id) and help text.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    /// The name, as Prometheus shows it.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The label names it carries.
    pub labels: &'static [&'static str],
    /// The help text.
    pub help: &'static str,
}

/// Calls finished, by backend, operation and `status` (`ok` or `error`).
pub const OPERATIONS_TOTAL: &str = "state_operations_total";
/// Seconds per call, by backend and operation.
pub const OPERATION_DURATION: &str = "state_operation_duration_seconds";
/// Failed calls, by backend, operation and error `kind` (`ErrorKind::name`).
pub const ERRORS_TOTAL: &str = "state_errors_total";
/// Keys found by reads.
pub const HITS_TOTAL: &str = "state_get_hits_total";
/// Keys reads did not find.
pub const MISSES_TOTAL: &str = "state_get_misses_total";
/// Value bytes handed back to callers.
pub const BYTES_READ_TOTAL: &str = "state_bytes_read_total";
/// Key and value bytes callers handed over to be stored.
pub const BYTES_WRITTEN_TOTAL: &str = "state_bytes_written_total";
/// Keys or entries per batch call.
pub const BATCH_ENTRIES: &str = "state_batch_entries";
/// Calls under way.
pub const IN_FLIGHT: &str = "state_operations_in_flight";
/// Lock calls finished, by operation and `outcome`.
pub const LOCK_OPERATIONS_TOTAL: &str = "state_lock_operations_total";
/// Seconds to take a lock (`try_acquire` or `acquire`), by operation and outcome.
pub const LOCK_ACQUIRE_DURATION: &str = "state_lock_acquire_duration_seconds";
/// Leases found lost: an extend or release refused because the lock was no longer held.
pub const LOCK_LOST_TOTAL: &str = "state_lock_leases_lost_total";

/// 1 while this process leads the election, else 0.
pub const LEADER_IS_LEADER: &str = "state_leader_is_leader";
/// Leadership changes seen by this process: elected, stepped down, lease lost.
pub const LEADER_CHANGES_TOTAL: &str = "state_leader_changes_total";

/// What [`GaugeCollector`](crate::GaugeCollector) puts before a backend's gauge name
/// (`redis_connected_clients` becomes `state_redis_connected_clients`).
pub const GAUGE_PREFIX: &str = "state_";
/// Bytes of memory Redis uses (`INFO memory` `used_memory`), summed over Cluster masters.
pub const REDIS_MEMORY_USED_BYTES: &str = "state_redis_memory_used_bytes";
/// Clients connected to Redis (`INFO clients`), summed over Cluster masters.
pub const REDIS_CONNECTED_CLIENTS: &str = "state_redis_connected_clients";
/// Bytes of the PostgreSQL state table, indexes and TOAST included.
pub const POSTGRES_TABLE_BYTES: &str = "state_postgres_table_bytes";
/// Dead tuples of the PostgreSQL state table, as the server last counted them.
pub const POSTGRES_DEAD_TUPLES: &str = "state_postgres_dead_tuples";
/// PostgreSQL connections held by operations of this process.
pub const POSTGRES_CONNECTIONS_IN_USE: &str = "state_postgres_connections_in_use";
/// Polls of a backend's gauges that failed or timed out.
pub const SERVER_POLL_ERRORS_TOTAL: &str = "state_server_poll_errors_total";

/// Checkpoints committed by this process's checkpoint coordinators.
pub const CHECKPOINT_COMPLETED_TOTAL: &str = "state_checkpoint_completed_total";
/// Checkpoints that started (their coordinator led) and failed or were aborted.
pub const CHECKPOINT_FAILED_TOTAL: &str = "state_checkpoint_failed_total";
/// Seconds the last committed checkpoint took, export to commit.
pub const CHECKPOINT_LAST_DURATION: &str = "state_checkpoint_last_duration_seconds";
/// Bytes of the last committed checkpoint's data file, as stored.
pub const CHECKPOINT_LAST_BYTES: &str = "state_checkpoint_last_size_bytes";
/// Entries in the last committed checkpoint.
pub const CHECKPOINT_LAST_ENTRIES: &str = "state_checkpoint_last_entries";
/// Checkpoints being taken now (0 or 1 per coordinator).
pub const CHECKPOINT_IN_PROGRESS: &str = "state_checkpoint_in_progress";

/// The metrics state-checkpoint's `CheckpointCoordinator` emits (it depends on this crate
/// for their names). Apart from [`METRICS`], whose every entry this crate's own layers
/// emit and its tests check, since this crate does not take checkpoints; state-checkpoint's
/// tests check these the same way.
pub const CHECKPOINT_METRICS: [Metric; 6] = [
    Metric {
        name: CHECKPOINT_COMPLETED_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        help: "Checkpoints committed by this process's checkpoint coordinators.",
    },
    Metric {
        name: CHECKPOINT_FAILED_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        help: "Checkpoints that started (the coordinator led) and failed or were aborted.",
    },
    Metric {
        name: CHECKPOINT_LAST_DURATION,
        kind: MetricKind::Gauge,
        labels: &[],
        help: "Seconds the last committed checkpoint took, export to commit.",
    },
    Metric {
        name: CHECKPOINT_LAST_BYTES,
        kind: MetricKind::Gauge,
        labels: &[],
        help: "Bytes of the last committed checkpoint's data file, as stored.",
    },
    Metric {
        name: CHECKPOINT_LAST_ENTRIES,
        kind: MetricKind::Gauge,
        labels: &[],
        help: "Entries in the last committed checkpoint.",
    },
    Metric {
        name: CHECKPOINT_IN_PROGRESS,
        kind: MetricKind::Gauge,
        labels: &[],
        help: "Checkpoints being taken now (0 or 1 per coordinator).",
    },
];

/// Every metric, for docs, descriptions and tests.
pub const METRICS: [Metric; 20] = [
    Metric {
        name: OPERATIONS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["backend", "operation", "status"],
        help: "State operations finished, by backend, operation and status (ok or error).",
    },
    Metric {
        name: OPERATION_DURATION,
        kind: MetricKind::Histogram,
        labels: &["backend", "operation"],
        help: "Seconds per state operation, retries included.",
    },
    Metric {
        name: ERRORS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["backend", "operation", "kind"],
        help: "State operations that failed, by error kind (fenced: a stale writer refused).",
    },
    Metric {
        name: HITS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["backend"],
        help: "Keys found by get, batch_get and get_and_delete.",
    },
    Metric {
        name: MISSES_TOTAL,
        kind: MetricKind::Counter,
        labels: &["backend"],
        help: "Keys get, batch_get and get_and_delete did not find.",
    },
    Metric {
        name: BYTES_READ_TOTAL,
        kind: MetricKind::Counter,
        labels: &["backend"],
        help: "Value bytes handed back to callers.",
    },
    Metric {
        name: BYTES_WRITTEN_TOTAL,
        kind: MetricKind::Counter,
        labels: &["backend"],
        help: "Key and value bytes callers handed over to be stored.",
    },
    Metric {
        name: BATCH_ENTRIES,
        kind: MetricKind::Histogram,
        labels: &["backend", "operation"],
        help: "Keys or entries per batch call.",
    },
    Metric {
        name: IN_FLIGHT,
        kind: MetricKind::Gauge,
        labels: &["backend"],
        help: "State operations under way.",
    },
    Metric {
        name: LOCK_OPERATIONS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["operation", "outcome"],
        help: "Lock calls finished, by operation and outcome (ok, busy, lost, error).",
    },
    Metric {
        name: LOCK_ACQUIRE_DURATION,
        kind: MetricKind::Histogram,
        labels: &["operation", "outcome"],
        help: "Seconds to take a lock, waits included, by outcome (ok, busy, error).",
    },
    Metric {
        name: LOCK_LOST_TOTAL,
        kind: MetricKind::Counter,
        labels: &[],
        help: "Leases found lost: an extend or release refused because the lock had expired or been taken over.",
    },
    Metric {
        name: LEADER_IS_LEADER,
        kind: MetricKind::Gauge,
        labels: &["election"],
        help: "1 while this process leads the election, else 0.",
    },
    Metric {
        name: LEADER_CHANGES_TOTAL,
        kind: MetricKind::Counter,
        labels: &["election"],
        help: "Leadership changes seen by this process: elected, stepped down, lease lost.",
    },
    Metric {
        name: REDIS_MEMORY_USED_BYTES,
        kind: MetricKind::Gauge,
        labels: &["backend"],
        help: "Bytes of memory Redis uses (INFO used_memory), summed over Cluster masters.",
    },
    Metric {
        name: REDIS_CONNECTED_CLIENTS,
        kind: MetricKind::Gauge,
        labels: &["backend"],
        help: "Clients connected to Redis (INFO connected_clients), summed over Cluster masters.",
    },
    Metric {
        name: POSTGRES_TABLE_BYTES,
        kind: MetricKind::Gauge,
        labels: &["backend"],
        help: "Bytes of the PostgreSQL state table, indexes and TOAST included.",
    },
    Metric {
        name: POSTGRES_DEAD_TUPLES,
        kind: MetricKind::Gauge,
        labels: &["backend"],
        help: "Dead tuples of the PostgreSQL state table, as the server last counted them.",
    },
    Metric {
        name: POSTGRES_CONNECTIONS_IN_USE,
        kind: MetricKind::Gauge,
        labels: &["backend"],
        help: "PostgreSQL connections held by operations of this process.",
    },
    Metric {
        name: SERVER_POLL_ERRORS_TOTAL,
        kind: MetricKind::Counter,
        labels: &["backend"],
        help: "Polls of a backend's gauges that failed or took longer than the poll timeout.",
    },
];

/// Buckets of the duration histograms: 50 µs to 10 s.
pub const DURATION_BUCKETS: [f64; 18] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Buckets of [`BATCH_ENTRIES`]: 1 to 100 000 keys per call.
pub const ENTRY_BUCKETS: [f64; 11] = [
    1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 100_000.0,
];

/// Gives every metric's help text to the installed recorder (Prometheus prints it as
/// `# HELP`). Idempotent; call it after installing the recorder.
pub fn describe() {
    for metric in METRICS {
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}
