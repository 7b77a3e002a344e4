//! [`CheckpointCoordinator`]: checkpoints of a backend into a store, on a schedule, by
//! the leader only; restores from them into any backend; retention and orphan sweeps.
//!
//! The crate's README, "The coordinator", describes the behaviour; the submodules each
//! hold one part: `leader` (who may write), `take` (a checkpoint, its id, the cleanup),
//! `restore` (a checked import, verified first where the backend is not atomic), `options`
//! and `stats`.

mod leader;
mod options;
mod restore;
mod stats;
mod take;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use state_core::{ErrorKind, Result, StateBackend, StateError};
use state_metrics::names;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{CheckpointId, CheckpointStore, Listing, Manifest, Object, classify};

pub use leader::NO_LOCK_TOKEN;
pub use options::CheckpointOptions;
pub use stats::{CheckpointStats, Cleanup, Restored, describe_metrics};

use leader::{Leadership, Mandate, not_leader};

/// Takes checkpoints of one backend into one store: on a schedule in the background
/// ([`start`](Self::start)) or at once ([`checkpoint_now`](Self::checkpoint_now)), only
/// while it leads (with a lock), one at a time; keeps the newest few and sweeps what
/// aborted attempts leave; restores the newest valid checkpoint, or a given one, into the
/// backend.
///
/// ```
/// use std::sync::Arc;
/// use state_checkpoint::{CheckpointCoordinator, CheckpointOptions, MemoryStore};
/// use state_core::{MemoryBackend, StateBackend};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let backend = Arc::new(MemoryBackend::new());
/// let coordinator =
///     CheckpointCoordinator::new(backend.clone(), Arc::new(MemoryStore::new()), CheckpointOptions::new())?;
///
/// backend.put(b"user:1", b"ada").await?;
/// let taken = coordinator.checkpoint_now().await?;
/// backend.put(b"user:1", b"bob").await?;
///
/// let restored = coordinator.restore_latest().await?;
/// assert_eq!(restored.id, taken.id);
/// assert_eq!(backend.get(b"user:1").await?.as_deref(), Some(&b"ada"[..]));
/// coordinator.shutdown().await?;
/// # Ok::<(), state_core::StateError>(())
/// # }).unwrap();
/// ```
#[derive(Debug)]
pub struct CheckpointCoordinator {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    backend: Arc<dyn StateBackend>,
    store: Arc<dyn CheckpointStore>,
    options: CheckpointOptions,
    leader: Leadership,
    /// One checkpoint, cleanup or restore at a time; the others wait their turn.
    busy: tokio::sync::Mutex<()>,
    stats: Mutex<CheckpointStats>,
    /// When the last checkpoint attempt ended, for the minimum pause.
    last_end: Mutex<Option<Instant>>,
    /// `true` once `shutdown` began.
    closed: watch::Sender<bool>,
}

impl CheckpointCoordinator {
    /// A coordinator of `backend` into `store`: leader-only if the options carry a lock
    /// ([`CheckpointOptions::with_lock`]), else leading alone under [`NO_LOCK_TOKEN`].
    /// `Config` if an option cannot work. Nothing runs until [`start`](Self::start) or a
    /// call.
    pub fn new(
        backend: Arc<dyn StateBackend>,
        store: Arc<dyn CheckpointStore>,
        options: CheckpointOptions,
    ) -> Result<Self> {
        options.validate()?;
        let leader = Leadership::new(options.lock.clone(), &options.lock_name, options.lock_ttl);
        Ok(CheckpointCoordinator {
            inner: Arc::new(Inner {
                backend,
                store,
                leader,
                options,
                busy: tokio::sync::Mutex::new(()),
                stats: Mutex::new(CheckpointStats::default()),
                last_end: Mutex::new(None),
                closed: watch::channel(false).0,
            }),
            task: Mutex::new(None),
        })
    }

    /// Runs the schedule in the background: every [`interval`](CheckpointOptions::with_interval)
    /// (and never sooner than the minimum pause after the previous checkpoint ended), the
    /// coordinator takes a checkpoint if it leads or can take the lock; then retention and
    /// the sweep. A follower tries for the lock every `min(interval, lock_ttl)`. A failure
    /// is counted in [`stats`](Self::stats) and the schedule goes on. Calling it again
    /// while it runs does nothing; `InvalidInput` after [`shutdown`](Self::shutdown), and
    /// `Config` outside a Tokio runtime.
    pub fn start(&self) -> Result<()> {
        self.inner.ensure_open()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            StateError::config("CheckpointCoordinator::start needs a Tokio runtime")
        })?;
        let mut task = lock(&self.task);
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        *task = Some(handle.spawn(run(inner)));
        Ok(())
    }

    /// Takes a checkpoint now and returns its manifest, then applies retention and the
    /// sweep (their failure is counted in `stats`, not returned). A checkpoint, cleanup or
    /// restore already running is waited for first, so at most one runs at a time and the
    /// checkpoint returned was started after the call. The minimum pause does not apply.
    ///
    /// `NotOwner` if another coordinator leads (the lock is tried once, never waited for),
    /// or if the lease was lost before the commit (the data is then deleted); `Fenced` if
    /// the store holds a checkpoint of a newer leader; `Conflict` if another writer
    /// committed the same id; `InvalidInput` after [`shutdown`](Self::shutdown).
    pub async fn checkpoint_now(&self) -> Result<Manifest> {
        self.inner.ensure_open()?;
        let _turn = self.inner.busy.lock().await;
        self.inner.ensure_open()?;
        let mandate = self.inner.mandate().await?;
        self.inner.checkpoint(&mandate).await
    }

    /// Restores the newest checkpoint that is valid, into the backend. A damaged one
    /// (`Corrupt`: its data or manifest; or its data gone meanwhile) is skipped for the
    /// next older, and reported in [`Restored::skipped`]. Any other error stops the
    /// restore. `NotFound` if the store holds no checkpoint, `Corrupt` if none is intact.
    ///
    /// Restoring needs no leadership: it writes to the backend, not to the store.
    pub async fn restore_latest(&self) -> Result<Restored> {
        self.inner.ensure_open()?;
        let _turn = self.inner.busy.lock().await;
        let store = self.inner.store.as_ref();
        let mut listing = store.manifests().await?;
        // Damaged manifests are newer checkpoints that could not be restored, too.
        let mut skipped: Vec<(CheckpointId, StateError)> = std::mem::take(&mut listing.invalid)
            .into_iter()
            .filter_map(|(name, e)| match classify(&name) {
                Object::Manifest(id) => Some((id, e)),
                _ => None,
            })
            .collect();
        let mut candidates = listing.valid;
        candidates.sort_by_key(|m| std::cmp::Reverse(m.id));
        for manifest in candidates {
            match self.inner.restore_manifest(&manifest).await {
                Ok(entries) => {
                    skipped.retain(|(id, _)| *id > manifest.id);
                    skipped.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
                    return Ok(self.inner.restored(manifest, entries, skipped));
                }
                Err(e) if matches!(e.kind(), ErrorKind::Corrupt | ErrorKind::NotFound) => {
                    skipped.push((manifest.id, e));
                }
                Err(e) => return Err(e),
            }
        }
        skipped.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
        let place = store.describe();
        if skipped.is_empty() {
            return Err(StateError::new(
                ErrorKind::NotFound,
                format!("{place} holds no checkpoint to restore"),
            ));
        }
        let why: Vec<String> = skipped
            .iter()
            .map(|(id, e)| format!("{id}: {}", e.message()))
            .collect();
        Err(StateError::corrupt(format!(
            "no checkpoint in {place} can be restored; the backend was not changed: {}",
            why.join("; ")
        )))
    }

    /// Restores checkpoint `id` into the backend. `NotFound` if it does not exist;
    /// `Corrupt`, naming the file, if its manifest or data is damaged, foreign, truncated
    /// or of a newer format version, and then the backend was not changed.
    pub async fn restore(&self, id: CheckpointId) -> Result<Restored> {
        self.inner.ensure_open()?;
        let _turn = self.inner.busy.lock().await;
        let store = self.inner.store.as_ref();
        let manifest = restore::find(store.manifests().await?, id, &store.describe())?;
        let entries = self.inner.restore_manifest(&manifest).await?;
        Ok(self.inner.restored(manifest, entries, Vec::new()))
    }

    /// Checks checkpoint `id` as [`restore`](Self::restore) does before it writes
    /// anything, and writes nothing: the whole data file is read (frame checksums, the
    /// footer's hash and counts, the file against its manifest) and every entry is checked
    /// against the backend (key prefix, size limits, metadata). Returns the manifest.
    /// `NotFound` if there is no such checkpoint; `Corrupt`, naming the file, if its
    /// manifest or data is damaged, foreign, truncated or of a newer format version.
    ///
    /// Needs no leadership and does not wait for a checkpoint in flight: it only reads.
    pub async fn verify(&self, id: CheckpointId) -> Result<Manifest> {
        self.inner.ensure_open()?;
        let store = self.inner.store.as_ref();
        let manifest = restore::find(store.manifests().await?, id, &store.describe())?;
        restore::verify_one(
            self.inner.backend.as_ref(),
            store,
            &manifest,
            &self.inner.options.key_prefix,
        )
        .await?;
        Ok(manifest)
    }

    /// The store's checkpoints: the valid ones ascending by id, and the invalid manifests
    /// with why.
    pub async fn list(&self) -> Result<Listing> {
        self.inner.store.manifests().await
    }

    /// Retention and the orphan sweep now (they also run after every checkpoint). Needs
    /// leadership, as every write to the store does: `NotOwner` otherwise.
    pub async fn cleanup(&self) -> Result<Cleanup> {
        self.inner.ensure_open()?;
        let _turn = self.inner.busy.lock().await;
        self.inner.mandate().await?;
        self.inner.clean().await
    }

    /// What this coordinator has done, and whether it leads now.
    pub fn stats(&self) -> CheckpointStats {
        let mut stats = lock(&self.inner.stats).clone();
        let open = !*self.inner.closed.borrow();
        stats.leader_token = self.inner.leader.token().filter(|_| open);
        stats
    }

    /// The options it runs with.
    pub fn options(&self) -> &CheckpointOptions {
        &self.inner.options
    }

    /// Stops the schedule, waits for a checkpoint in flight to finish (up to
    /// [`shutdown_timeout`](CheckpointOptions::with_shutdown_timeout), after which it is
    /// aborted and leaves only an orphan, never a listed checkpoint), then releases the
    /// lock. Calls made afterwards fail with `InvalidInput`; a second shutdown does
    /// nothing more.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.closed.send_replace(true);
        let timeout = self.inner.options.shutdown_timeout;
        let task = lock(&self.task).take();
        if let Some(mut task) = task
            && tokio::time::timeout(timeout, &mut task).await.is_err()
        {
            task.abort();
            let _ = task.await;
        }
        // Calls in flight on other tasks; past the timeout the lease goes anyway, and a
        // checkpoint still running then fails its lease check before its commit.
        let _turn = tokio::time::timeout(timeout, self.inner.busy.lock()).await;
        self.inner.leader.release().await
    }
}

impl Drop for CheckpointCoordinator {
    fn drop(&mut self) {
        // The schedule ends with its owner; the lease goes with the last reference.
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
    }
}

impl Inner {
    fn ensure_open(&self) -> Result<()> {
        if *self.closed.borrow() {
            return Err(StateError::invalid_input(
                "the checkpoint coordinator was shut down",
            ));
        }
        Ok(())
    }

    async fn mandate(&self) -> Result<Mandate> {
        self.leader
            .mandate()
            .await?
            .ok_or_else(|| not_leader(&self.options.lock_name))
    }

    /// One checkpoint under `mandate`, counted, then the cleanup. The caller holds `busy`.
    async fn checkpoint(&self, mandate: &Mandate) -> Result<Manifest> {
        let started = Instant::now();
        let attempt = Attempt::begin(self);
        let taken = take::take(
            self.backend.as_ref(),
            self.store.as_ref(),
            &self.options,
            mandate,
        )
        .await;
        attempt.end(&taken, started.elapsed());
        let taken = taken?;
        if let Err(e) = self.clean().await {
            lock(&self.stats).last_error = Some(format!("cleanup: {e}"));
        }
        Ok(taken.manifest)
    }

    async fn clean(&self) -> Result<Cleanup> {
        let cleanup = take::clean(self.store.as_ref(), &self.options).await?;
        let mut stats = lock(&self.stats);
        stats.deleted += cleanup.deleted.len() as u64;
        stats.swept += cleanup.swept.len() as u64;
        Ok(cleanup)
    }

    async fn restore_manifest(&self, manifest: &Manifest) -> Result<u64> {
        restore::restore_one(
            self.backend.as_ref(),
            self.store.as_ref(),
            manifest,
            &self.options.key_prefix,
        )
        .await
    }

    fn restored(
        &self,
        manifest: Manifest,
        entries: u64,
        skipped: Vec<(CheckpointId, StateError)>,
    ) -> Restored {
        Restored {
            id: manifest.id,
            manifest,
            entries,
            atomic: self.backend.capabilities().atomic_restore,
            skipped,
        }
    }

    /// When the schedule may take its next checkpoint, given when the last one started.
    fn next_due(&self, last_start: Instant) -> Instant {
        let by_interval = last_start + self.options.interval;
        match *lock(&self.last_end) {
            Some(end) => by_interval.max(end + self.options.min_pause),
            None => by_interval,
        }
    }
}

/// Marks a checkpoint in progress in the stats and the metrics
/// (`state_metrics::names::CHECKPOINT_METRICS`); records how it ended, or that it was
/// aborted if dropped first (its future cancelled).
struct Attempt<'a> {
    inner: &'a Inner,
    ended: bool,
}

impl<'a> Attempt<'a> {
    fn begin(inner: &'a Inner) -> Self {
        lock(&inner.stats).in_progress = true;
        metrics::gauge!(names::CHECKPOINT_IN_PROGRESS).increment(1.0);
        Attempt {
            inner,
            ended: false,
        }
    }

    fn end(mut self, outcome: &Result<take::Taken>, took: std::time::Duration) {
        self.ended = true;
        let mut stats = lock(&self.inner.stats);
        stats.in_progress = false;
        metrics::gauge!(names::CHECKPOINT_IN_PROGRESS).decrement(1.0);
        match outcome {
            Ok(taken) => {
                metrics::counter!(names::CHECKPOINT_COMPLETED_TOTAL).increment(1);
                metrics::gauge!(names::CHECKPOINT_LAST_DURATION).set(took.as_secs_f64());
                metrics::gauge!(names::CHECKPOINT_LAST_BYTES).set(taken.bytes as f64);
                metrics::gauge!(names::CHECKPOINT_LAST_ENTRIES).set(taken.manifest.entries as f64);
                stats.completed += 1;
                stats.last_id = Some(taken.manifest.id);
                stats.last_duration = Some(took);
                stats.last_bytes = Some(taken.bytes);
                stats.last_entries = Some(taken.manifest.entries);
                stats.last_success = Some(SystemTime::now());
            }
            Err(e) => {
                metrics::counter!(names::CHECKPOINT_FAILED_TOTAL).increment(1);
                stats.failed += 1;
                stats.last_error = Some(e.to_string());
            }
        }
        drop(stats);
        *lock(&self.inner.last_end) = Some(Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.ended {
            metrics::gauge!(names::CHECKPOINT_IN_PROGRESS).decrement(1.0);
            metrics::counter!(names::CHECKPOINT_FAILED_TOTAL).increment(1);
            let mut stats = lock(&self.inner.stats);
            stats.in_progress = false;
            stats.failed += 1;
            stats.last_error = Some("a checkpoint was aborted before its commit".to_string());
        }
    }
}

/// The schedule: waits until due, checkpoints if it leads, until shut down.
async fn run(inner: Arc<Inner>) {
    let mut closed = inner.closed.subscribe();
    let mut due = Instant::now() + inner.options.interval;
    loop {
        let wait = tokio::time::sleep_until(due.into());
        tokio::select! {
            () = wait => {}
            _ = closed.wait_for(|closed| *closed) => return,
        }
        let turn = tokio::select! {
            turn = inner.busy.lock() => turn,
            _ = closed.wait_for(|closed| *closed) => return,
        };
        if *closed.borrow() {
            return;
        }
        let started = Instant::now();
        match inner.leader.mandate().await {
            Ok(Some(mandate)) => {
                // Counted in the stats; the schedule goes on whatever happened.
                let _ = inner.checkpoint(&mandate).await;
                due = inner.next_due(started);
            }
            Ok(None) => due = started + inner.options.campaign_retry(),
            Err(e) => {
                lock(&inner.stats).last_error = Some(format!("taking the lock: {e}"));
                due = started + inner.options.campaign_retry();
            }
        }
        drop(turn);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
