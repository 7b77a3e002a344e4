//! [`CheckpointOptions`]: when a [`CheckpointCoordinator`](super::CheckpointCoordinator)
//! checkpoints, how many it keeps, what it covers, and how it leads.

use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use state_core::{DistributedLock, Result, StateError, check_lock_name};

use crate::format::Compression;

/// How a [`CheckpointCoordinator`](super::CheckpointCoordinator) works. Start from
/// [`CheckpointOptions::new`] (the defaults below) and change what you need:
///
/// ```
/// use std::time::Duration;
/// use state_checkpoint::{CheckpointOptions, Compression};
///
/// let options = CheckpointOptions::new()
///     .with_interval(Duration::from_secs(60))
///     .with_min_pause(Duration::from_secs(10))
///     .with_keep(3)
///     .with_key_prefix("orders:")
///     .with_compression(Compression::Lz4);
/// assert_eq!(options.keep(), 3);
/// ```
#[derive(Debug, Clone)]
pub struct CheckpointOptions {
    pub(crate) interval: Duration,
    pub(crate) min_pause: Duration,
    pub(crate) keep: usize,
    pub(crate) key_prefix: Bytes,
    pub(crate) compression: Compression,
    pub(crate) orphan_grace: Duration,
    pub(crate) lock: Option<Arc<dyn DistributedLock>>,
    pub(crate) lock_name: String,
    pub(crate) lock_ttl: Duration,
    pub(crate) shutdown_timeout: Duration,
}

impl Default for CheckpointOptions {
    fn default() -> Self {
        CheckpointOptions {
            interval: Duration::from_secs(300),
            min_pause: Duration::from_secs(10),
            keep: 5,
            key_prefix: Bytes::new(),
            compression: Compression::Lz4,
            orphan_grace: Duration::from_secs(3600),
            lock: None,
            lock_name: "state-checkpoint".to_string(),
            lock_ttl: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(60),
        }
    }
}

impl CheckpointOptions {
    /// The defaults: a checkpoint every 5 minutes, at least 10 s apart, the newest 5 kept,
    /// the whole namespace, LZ4, orphans swept after an hour, no lock (with one: the lock
    /// `state-checkpoint` with 30 s leases), and 60 s for [`shutdown`] to wait.
    ///
    /// [`shutdown`]: super::CheckpointCoordinator::shutdown
    pub fn new() -> Self {
        CheckpointOptions::default()
    }

    /// How often the background loop checkpoints, counted from the start of one to the
    /// start of the next. Must not be zero.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// The least time between the end of one checkpoint and the start of a scheduled
    /// one (after a slow checkpoint, or one taken by `checkpoint_now`). `checkpoint_now`
    /// itself does not wait for it.
    pub fn with_min_pause(mut self, pause: Duration) -> Self {
        self.min_pause = pause;
        self
    }

    /// How many valid checkpoints retention keeps (the newest ones); at least 1, so the
    /// newest is never deleted.
    pub fn with_keep(mut self, keep: usize) -> Self {
        self.keep = keep;
        self
    }

    /// Restricts checkpoints to the keys starting with `prefix` (within the backend's own
    /// namespace), and restores to replacing only those keys. Empty (the default): the
    /// whole namespace.
    pub fn with_key_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// How data files are compressed.
    pub fn with_compression(mut self, compression: Compression) -> Self {
        self.compression = compression;
        self
    }

    /// How old data without a manifest (a checkpoint that crashed or was aborted before
    /// its commit) must be before the sweep deletes it. Longer than any checkpoint takes
    /// to write, since one being written looks the same.
    pub fn with_orphan_grace(mut self, grace: Duration) -> Self {
        self.orphan_grace = grace;
        self
    }

    /// Leader-only: of the coordinators given this lock service, only the one holding
    /// the lock named by [`with_lock_name`](Self::with_lock_name) writes to the store,
    /// and every checkpoint is named after the fencing token it was taken under. Without
    /// a lock (the default) a coordinator always leads, under
    /// [`NO_LOCK_TOKEN`](super::NO_LOCK_TOKEN): run one per store.
    ///
    /// Use a lock whose fencing tokens survive restarts (Redis, PostgreSQL): with
    /// `MemoryLock`, whose tokens start again at 1 in a new process, a durable store
    /// holding checkpoints of an earlier run refuses the new ones as a stale leader's.
    pub fn with_lock(mut self, lock: Arc<dyn DistributedLock>) -> Self {
        self.lock = Some(lock);
        self
    }

    /// The name of the lock whose holder leads (used only with a lock).
    pub fn with_lock_name(mut self, name: impl Into<String>) -> Self {
        self.lock_name = name.into();
        self
    }

    /// The lease of the leader's lock, renewed every third of it while leading. A
    /// follower tries to take the lock every `min(interval, lock_ttl)`.
    pub fn with_lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long [`shutdown`](super::CheckpointCoordinator::shutdown) waits for a
    /// checkpoint in flight before aborting it (it then leaves only an orphan).
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// The interval between scheduled checkpoints.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The least pause before a scheduled checkpoint.
    pub fn min_pause(&self) -> Duration {
        self.min_pause
    }

    /// How many checkpoints retention keeps.
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// The key prefix checkpoints cover (empty: the whole namespace).
    pub fn key_prefix(&self) -> &[u8] {
        &self.key_prefix
    }

    /// The compression of data files.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// The age after which an orphan is swept.
    pub fn orphan_grace(&self) -> Duration {
        self.orphan_grace
    }

    /// The lock service leadership is taken on, if any.
    pub fn lock(&self) -> Option<&Arc<dyn DistributedLock>> {
        self.lock.as_ref()
    }

    /// The name of the leader's lock.
    pub fn lock_name(&self) -> &str {
        &self.lock_name
    }

    /// The leader's lease.
    pub fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    /// How long `shutdown` waits for a checkpoint in flight.
    pub fn shutdown_timeout(&self) -> Duration {
        self.shutdown_timeout
    }

    /// A `Config` error naming the first option that cannot work.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.interval.is_zero() {
            return Err(StateError::config(
                "checkpoint interval is zero; give an interval of at least 1ms",
            ));
        }
        if self.keep == 0 {
            return Err(StateError::config(
                "checkpoint keep is 0; keep at least 1 (the newest is never deleted)",
            ));
        }
        if self.lock_ttl < Duration::from_millis(3) {
            return Err(StateError::config(
                "checkpoint lock_ttl is under 3ms; the lease is renewed every third of it",
            ));
        }
        check_lock_name(&self.lock_name)
            .map_err(|e| StateError::config(format!("checkpoint lock_name: {}", e.message())))
    }

    /// How long a follower waits before trying to take the lock again.
    pub(crate) fn campaign_retry(&self) -> Duration {
        self.interval.min(self.lock_ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    #[test]
    fn bad_options_are_config_errors_naming_the_option() {
        let cases = [
            (
                CheckpointOptions::new().with_interval(Duration::ZERO),
                "interval",
            ),
            (CheckpointOptions::new().with_keep(0), "keep"),
            (
                CheckpointOptions::new().with_lock_ttl(Duration::from_millis(1)),
                "lock_ttl",
            ),
            (CheckpointOptions::new().with_lock_name(""), "lock_name"),
        ];
        for (options, field) in cases {
            let err = options.validate().err();
            assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Config));
            assert!(err.is_some_and(|e| e.message().contains(field)), "{field}");
        }
        assert!(CheckpointOptions::new().validate().is_ok());
    }
}
