//! [`CheckpointStats`]: what a coordinator has done, and [`Restored`]: what a restore did.

use std::time::{Duration, SystemTime};

use state_core::StateError;

use crate::store::{CheckpointId, Manifest};

/// What a [`CheckpointCoordinator`](super::CheckpointCoordinator) has done since it was
/// built ([`stats`](super::CheckpointCoordinator::stats)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckpointStats {
    /// Checkpoints committed.
    pub completed: u64,
    /// Checkpoints that started (this coordinator led) and failed or were aborted; a
    /// follower's scheduled turn is not a failure.
    pub failed: u64,
    /// Whether a checkpoint is being taken now.
    pub in_progress: bool,
    /// The last committed checkpoint.
    pub last_id: Option<CheckpointId>,
    /// How long the last committed checkpoint took, export to commit.
    pub last_duration: Option<Duration>,
    /// The size of the last committed checkpoint's data file, in bytes as stored.
    pub last_bytes: Option<u64>,
    /// How many entries the last committed checkpoint holds.
    pub last_entries: Option<u64>,
    /// When the last checkpoint was committed.
    pub last_success: Option<SystemTime>,
    /// The last failure (a checkpoint, or the cleanup after one), as its message.
    pub last_error: Option<String>,
    /// Checkpoints deleted by retention.
    pub deleted: u64,
    /// Orphans (data without a manifest) deleted by the sweep.
    pub swept: u64,
    /// The fencing token this coordinator leads under, if it leads now
    /// ([`NO_LOCK_TOKEN`](super::NO_LOCK_TOKEN) without a lock).
    pub leader_token: Option<u64>,
}

/// What a restore did: which checkpoint it restored, how many live entries it wrote, and
/// which newer checkpoints it passed over because they could not be restored.
#[derive(Debug)]
#[non_exhaustive]
pub struct Restored {
    /// The checkpoint restored.
    pub id: CheckpointId,
    /// Its manifest.
    pub manifest: Manifest,
    /// Live entries written (entries whose expiry had passed are not revived).
    pub entries: u64,
    /// Whether readers saw the old state or the new one, never a mix: the target's
    /// [`atomic_restore`](state_core::Capabilities::atomic_restore).
    pub atomic: bool,
    /// Newer checkpoints that [`restore_latest`](super::CheckpointCoordinator::restore_latest)
    /// skipped, newest first, each with why (`Corrupt`, naming the file). Empty when the
    /// newest was restored.
    pub skipped: Vec<(CheckpointId, StateError)>,
}

impl Restored {
    /// Whether an older checkpoint was restored because newer ones were damaged.
    pub fn fell_back(&self) -> bool {
        !self.skipped.is_empty()
    }
}

/// What [`cleanup`](super::CheckpointCoordinator::cleanup) removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cleanup {
    /// Checkpoints deleted by retention, oldest first.
    pub deleted: Vec<CheckpointId>,
    /// Orphans deleted by the sweep.
    pub swept: Vec<CheckpointId>,
}

/// Gives the help texts of the coordinator's metrics
/// ([`CHECKPOINT_METRICS`](state_metrics::names::CHECKPOINT_METRICS)) to the installed
/// recorder (Prometheus prints them as `# HELP`), as `state_metrics::names::describe` does
/// for the backends' metrics. Idempotent; call it after installing the recorder.
pub fn describe_metrics() {
    use state_metrics::names::{CHECKPOINT_METRICS, MetricKind};
    for metric in CHECKPOINT_METRICS {
        match metric.kind {
            MetricKind::Counter => metrics::describe_counter!(metric.name, metric.help),
            MetricKind::Gauge => metrics::describe_gauge!(metric.name, metric.help),
            MetricKind::Histogram => metrics::describe_histogram!(metric.name, metric.help),
        }
    }
}
