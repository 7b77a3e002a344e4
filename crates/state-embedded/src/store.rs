//! The redb database behind one or more backends: opening, the write-transaction frame
//! (durability, bounded expiry sweep, commit), the writer thread that groups write calls
//! into transactions ([`crate::group`]) and the flusher of `Eventual` durability.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableTable, Table, TableDefinition, WriteTransaction};
use state_core::{Result, StateError};

use crate::config::{Durability, RedbConfig};
use crate::error::{already_open, redb};
use crate::group::{WriteStats, WriterThread};
use crate::record::{self, Record, expiry_key, split_expiry_key};

/// Full key (prefix ++ key) → encoded record.
pub(crate) const DATA: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("state_data");
/// `expires_at_ms ++ full key` → (), for the sweep.
pub(crate) const EXPIRY: TableDefinition<'_, &[u8], ()> = TableDefinition::new("state_expiry");
/// Full key → the highest fencing token that wrote it.
pub(crate) const FENCES: TableDefinition<'_, &[u8], u64> = TableDefinition::new("state_fences");
/// `format` → the layout version of the tables above.
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("state_meta");
const FORMAT: u64 = 1;

/// How many expired entries one write transaction reclaims at most.
pub const SWEEP_BATCH: usize = 64;

/// How many keys a `clear` removes per step; bounds its memory, not its atomicity.
const CLEAR_CHUNK: usize = 512;

pub(crate) type DataTable<'t> = Table<'t, &'static [u8], &'static [u8]>;
type ExpiryTable<'t> = Table<'t, &'static [u8], ()>;
type FenceTable<'t> = Table<'t, &'static [u8], u64>;

/// One open database file, shared by every backend handle opened on it.
pub(crate) struct Store {
    pub(crate) db: Arc<Database>,
    pub(crate) path: PathBuf,
    durability: Durability,
    /// What write transactions need, shared with the writer thread.
    core: Arc<Core>,
    writer: WriterThread,
    flusher: Option<Flusher>,
}

/// The write-transaction frame, shared by the writer thread and imports.
pub(crate) struct Core {
    db: Arc<Database>,
    /// A lower bound on the earliest expiry in the index (`u64::MAX`: none), so that writes
    /// skip the sweep without touching the index while nothing has expired.
    next_expiry: AtomicU64,
    /// The flusher's counters in `Eventual` mode: commits skip the `fsync` and are counted.
    flush: Option<Arc<FlushState>>,
}

/// Why a write transaction did not commit.
pub(crate) enum Failure {
    /// The body (a write call's closure) failed.
    Call(StateError),
    /// The transaction itself failed: begin, opening the tables, the sweep, or the commit.
    Frame(StateError),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// The stores open in this process by file, so that a second open of the same file shares
/// the database instead of failing (redb opens a file once).
static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Store>>>> = OnceLock::new();

/// Opens the file of `config`, or shares the store this process already has open on it.
pub(crate) fn open_shared(config: &RedbConfig) -> Result<Arc<Store>> {
    let path = &config.path;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            StateError::config(format!(
                "cannot create the directory {} for the redb file: {e}",
                parent.display()
            ))
            .with_source(e)
        })?;
    }
    let identity = file_identity(path);
    let mut open = OPEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let was_open = open.contains_key(&identity);
    if let Some(store) = open.get(&identity).and_then(Weak::upgrade) {
        if store.durability != config.durability {
            return Err(StateError::config(format!(
                "{} is already open in this process with durability {:?}; open it with the \
                 same durability, or share that backend (clone or with_prefix)",
                path.display(),
                store.durability
            )));
        }
        return Ok(store);
    }
    open.retain(|_, store| store.strong_count() > 0);
    // A handle dropped a moment ago may still be closing the file: give it a little time.
    let mut attempts = if was_open { 50 } else { 1 };
    let store = loop {
        attempts -= 1;
        match Store::open(config) {
            Err(e) if attempts > 0 && e.kind() == state_core::ErrorKind::Unavailable => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break Arc::new(other?),
        }
    };
    open.insert(identity, Arc::downgrade(&store));
    Ok(store)
}

/// The file's canonical path, also before it exists (its parent directory does).
fn file_identity(path: &Path) -> PathBuf {
    if let Ok(canonical) = std::fs::canonicalize(path) {
        return canonical;
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    match (std::fs::canonicalize(parent), path.file_name()) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
    }
}

impl Store {
    fn open(config: &RedbConfig) -> Result<Store> {
        let path = config.path.clone();
        let db = redb::Builder::new()
            .set_cache_size(config.cache_size)
            .set_check_integrity_on_open(config.check_integrity)
            .create(&path)
            .map_err(|e| open_error(&path, e))?;
        let db = Arc::new(db);
        let next_expiry = init_tables(&db, &path)?;
        let flusher = match config.durability {
            Durability::Immediate => None,
            Durability::Eventual { flush_interval } => {
                Some(Flusher::start(db.clone(), flush_interval)?)
            }
        };
        let core = Arc::new(Core {
            db: db.clone(),
            next_expiry: AtomicU64::new(next_expiry),
            flush: flusher.as_ref().map(|f| f.state.clone()),
        });
        // On an error the flusher stops as it drops.
        let writer = WriterThread::start(core.clone())?;
        Ok(Store {
            db,
            path,
            durability: config.durability,
            core,
            writer,
            flusher,
        })
    }

    pub(crate) fn durability(&self) -> Durability {
        self.durability
    }

    /// Runs `f` in a write transaction of the writer thread, possibly grouped with other
    /// calls, and returns its result once that transaction has committed with the
    /// configured durability. The transaction also reclaims up to `sweep` expired entries.
    /// `f` may run more than once: only its last run commits, and it fails alone.
    pub(crate) async fn write<T, F>(&self, sweep: usize, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Writer<'_>) -> Result<T> + Send + 'static,
    {
        self.writer.write(sweep, f).await
    }

    /// Runs `f` in a write transaction of its own on this thread (which it may block for
    /// long, as an import does), with the sweep and commit of [`Store::write`].
    pub(crate) fn write_alone<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        self.core
            .transact(SWEEP_BATCH, f)
            .map_err(|(Failure::Call(e) | Failure::Frame(e))| e)
    }

    /// How group commit is doing.
    pub(crate) fn write_stats(&self) -> WriteStats {
        self.writer.stats()
    }

    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.writer.queued()
    }

    /// Makes every commit so far durable with one `fsync`'d commit.
    pub(crate) fn sync(&self) -> Result<()> {
        let target = self
            .flusher
            .as_ref()
            .map(|f| f.state.commits.load(Ordering::Acquire));
        flush(&self.db)?;
        if let (Some(flusher), Some(target)) = (&self.flusher, target) {
            flusher.synced_up_to(target);
        }
        Ok(())
    }

    /// Whether some acknowledged commits are not yet durable (always false in `Immediate`).
    pub(crate) fn pending_flush(&self) -> bool {
        self.flusher.as_ref().is_some_and(|f| {
            f.state.durable.load(Ordering::Acquire) < f.state.commits.load(Ordering::Acquire)
        })
    }

    /// Every stored record, expired ones not yet swept included.
    pub(crate) fn raw_len(&self) -> Result<u64> {
        use redb::{ReadableDatabase, ReadableTableMetadata};
        let txn = self
            .db
            .begin_read()
            .map_err(|e| redb("begin a read transaction", e))?;
        let table = txn
            .open_table(DATA)
            .map_err(|e| redb("open the data table", e))?;
        table.len().map_err(|e| redb("count the data table", e))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // The writer first: it commits every queued call (the flusher counts them), then
        // exits. Then the flusher, before the database closes; closing persists pending
        // commits.
        self.writer.stop();
        if let Some(flusher) = &mut self.flusher {
            flusher.stop();
        }
    }
}

impl Core {
    /// Runs `body` in one write transaction, sweeps up to `sweep` expired entries, and
    /// commits with the configured durability; any error rolls everything back.
    pub(crate) fn transact<T>(
        &self,
        sweep: usize,
        body: impl FnOnce(&mut Writer<'_>) -> Result<T>,
    ) -> Result<T, Failure> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| Failure::Frame(redb("begin a write transaction", e)))?;
        if self.flush.is_some() {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| Failure::Frame(redb("set the commit durability", e)))?;
        }
        let result = match Writer::new(&txn, &self.next_expiry) {
            Err(e) => Err(Failure::Frame(e)),
            Ok(mut writer) => match body(&mut writer) {
                Err(e) => Err(Failure::Call(e)),
                Ok(out) => writer
                    .sweep(sweep, false)
                    .map(|_| out)
                    .map_err(Failure::Frame),
            },
        };
        match result {
            Ok(out) => {
                if let Err(e) = txn.commit() {
                    // The sweep may have lowered nothing yet raised the hint; recheck next time.
                    self.reset_expiry_hint();
                    return Err(Failure::Frame(redb("commit", e)));
                }
                if let Some(flush) = &self.flush {
                    flush.commits.fetch_add(1, Ordering::AcqRel);
                }
                Ok(out)
            }
            Err(e) => {
                self.reset_expiry_hint();
                // Dropping also aborts; aborting explicitly frees the pages at once.
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    /// Makes the next write look at the expiry index, after a rollback that may have left
    /// the hint too high.
    pub(crate) fn reset_expiry_hint(&self) {
        self.next_expiry.store(0, Ordering::Relaxed);
    }
}

fn open_error(path: &Path, err: redb::DatabaseError) -> StateError {
    match err {
        redb::DatabaseError::DatabaseAlreadyOpen => already_open(path, err),
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::PermissionDenied
                || io.kind() == std::io::ErrorKind::NotFound =>
        {
            StateError::config(format!(
                "cannot open the redb file {}: {io}; check the path and its permissions",
                path.display()
            ))
            .with_source(io)
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == std::io::ErrorKind::InvalidData =>
        {
            StateError::corrupt(format!(
                "{} is not a redb database, or its header is damaged ({io}); point the backend \
                 at another file, or restore this one from a checkpoint",
                path.display()
            ))
            .with_source(io)
        }
        other => {
            let e = redb("open the database file", other);
            StateError::new(
                e.kind(),
                format!("{} (file {})", e.message(), path.display()),
            )
            .with_source(e)
        }
    }
}

/// Creates the tables, checks the layout version, and returns the earliest indexed expiry.
fn init_tables(db: &Database, path: &Path) -> Result<u64> {
    let txn = db
        .begin_write()
        .map_err(|e| redb("begin a write transaction", e))?;
    let next_expiry = {
        let mut meta = txn
            .open_table(META)
            .map_err(|e| redb("open the meta table", e))?;
        let format = meta
            .get("format")
            .map_err(|e| redb("read the format version", e))?
            .map(|g| g.value());
        match format {
            Some(FORMAT) => {}
            None => {
                meta.insert("format", FORMAT)
                    .map_err(|e| redb("write the format version", e))?;
            }
            Some(other) => {
                return Err(StateError::corrupt(format!(
                    "{} has state-embedded format {other}; this build reads format {FORMAT}: \
                     open it with the version that wrote it",
                    path.display()
                )));
            }
        }
        txn.open_table(DATA)
            .map_err(|e| redb("open the data table", e))?;
        txn.open_table(FENCES)
            .map_err(|e| redb("open the fences table", e))?;
        let expiry = txn
            .open_table(EXPIRY)
            .map_err(|e| redb("open the expiry index", e))?;
        first_expiry(&expiry)?
    };
    txn.commit()
        .map_err(|e| redb("commit the table creation", e))?;
    Ok(next_expiry)
}

fn first_expiry(table: &ExpiryTable<'_>) -> Result<u64> {
    let first = table
        .first()
        .map_err(|e| redb("read the expiry index", e))?;
    match first {
        Some((key, _)) => Ok(split_expiry_key(key.value())?.0),
        None => Ok(u64::MAX),
    }
}

/// The tables of one write transaction, the index ones opened only when needed.
pub(crate) struct Writer<'t> {
    txn: &'t WriteTransaction,
    /// The instant every liveness check of this transaction uses.
    pub(crate) now_ms: u64,
    pub(crate) data: DataTable<'t>,
    expiry: Option<ExpiryTable<'t>>,
    fences: Option<FenceTable<'t>>,
    next_expiry: &'t AtomicU64,
}

fn open_expiry<'a, 't>(
    slot: &'a mut Option<ExpiryTable<'t>>,
    txn: &'t WriteTransaction,
) -> Result<&'a mut ExpiryTable<'t>> {
    if slot.is_none() {
        *slot = Some(
            txn.open_table(EXPIRY)
                .map_err(|e| redb("open the expiry index", e))?,
        );
    }
    slot.as_mut()
        .ok_or_else(|| StateError::new(state_core::ErrorKind::Backend, "expiry index not open"))
}

impl<'t> Writer<'t> {
    fn new(txn: &'t WriteTransaction, next_expiry: &'t AtomicU64) -> Result<Self> {
        let data = txn
            .open_table(DATA)
            .map_err(|e| redb("open the data table", e))?;
        Ok(Writer {
            txn,
            now_ms: record::now_ms(),
            data,
            expiry: None,
            fences: None,
            next_expiry,
        })
    }

    /// Stores an encoded record and keeps the expiry index in step with it.
    pub(crate) fn put(&mut self, full: &[u8], record: &[u8], expires: Option<u64>) -> Result<()> {
        let old = self
            .data
            .insert(full, record)
            .map_err(|e| redb("write a record", e))?
            // A damaged old record leaves at worst a stale index entry, which the sweep
            // recognises and drops: never a reason to refuse the overwrite.
            .and_then(|old| record::expiry_of(old.value()).ok().flatten());
        self.reindex(full, old, expires)
    }

    fn reindex(&mut self, full: &[u8], old: Option<u64>, new: Option<u64>) -> Result<()> {
        if old == new {
            return Ok(());
        }
        let expiry = open_expiry(&mut self.expiry, self.txn)?;
        if let Some(old) = old {
            expiry
                .remove(expiry_key(old, full).as_slice())
                .map_err(|e| redb("update the expiry index", e))?;
        }
        if let Some(new) = new {
            expiry
                .insert(expiry_key(new, full).as_slice(), ())
                .map_err(|e| redb("update the expiry index", e))?;
            self.next_expiry.fetch_min(new, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes `full`; returns its value if it was live.
    pub(crate) fn take(&mut self, full: &[u8]) -> Result<Option<Bytes>> {
        let now_ms = self.now_ms;
        let (expires, value) = {
            let removed = self
                .data
                .remove(full)
                .map_err(|e| redb("delete a record", e))?;
            let Some(guard) = removed else {
                return Ok(None);
            };
            match Record::decode(guard.value()) {
                Ok(rec) => (
                    rec.expires_ms,
                    rec.is_live(now_ms)
                        .then(|| Bytes::copy_from_slice(rec.value)),
                ),
                // Deleting a damaged record is how a user gets rid of it.
                Err(_) => (None, None),
            }
        };
        self.reindex(full, expires, None)?;
        Ok(value)
    }

    /// Removes `full`; returns whether it was live.
    pub(crate) fn remove(&mut self, full: &[u8]) -> Result<bool> {
        let expires = {
            let removed = self
                .data
                .remove(full)
                .map_err(|e| redb("delete a record", e))?;
            let Some(guard) = removed else {
                return Ok(false);
            };
            record::expiry_of(guard.value()).ok().flatten()
        };
        self.reindex(full, expires, None)?;
        Ok(record::is_live(expires, self.now_ms))
    }

    /// Whether `full` holds a live record whose value is `expected` (`None`: no live record).
    pub(crate) fn live_value_is(&self, full: &[u8], expected: Option<&[u8]>) -> Result<bool> {
        let current = self.data.get(full).map_err(|e| redb("read a record", e))?;
        let Some(guard) = current else {
            return Ok(expected.is_none());
        };
        let rec = Record::decode(guard.value())?;
        let value = rec.is_live(self.now_ms).then_some(rec.value);
        Ok(value == expected)
    }

    /// Fails with `Fenced` if a higher token wrote `full`; records `token` otherwise.
    pub(crate) fn fence(&mut self, full: &[u8], token: u64) -> Result<()> {
        if self.fences.is_none() {
            self.fences = Some(
                self.txn
                    .open_table(FENCES)
                    .map_err(|e| redb("open the fences table", e))?,
            );
        }
        let Some(fences) = self.fences.as_mut() else {
            return Ok(());
        };
        let current = fences
            .get(full)
            .map_err(|e| redb("read a fencing token", e))?
            .map(|g| g.value());
        if let Some(current) = current
            && current > token
        {
            return Err(StateError::fenced(token, current));
        }
        fences
            .insert(full, token)
            .map_err(|e| redb("write a fencing token", e))?;
        Ok(())
    }

    /// Deletes every record and fencing mark under `prefix`; returns how many were live.
    /// Works in chunks so memory stays bounded however large the namespace is.
    pub(crate) fn clear_prefix(&mut self, prefix: &[u8]) -> Result<u64> {
        let end = record::prefix_end(prefix);
        let range = || -> (Bound<&[u8]>, Bound<&[u8]>) {
            (
                Bound::Included(prefix),
                end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            )
        };
        let mut live = 0;
        loop {
            let mut chunk: Vec<(Vec<u8>, Option<u64>)> = Vec::new();
            for item in self
                .data
                .range::<&[u8]>(range())
                .map_err(|e| redb("scan the data table", e))?
            {
                let (key, value) = item.map_err(|e| redb("scan the data table", e))?;
                chunk.push((
                    key.value().to_vec(),
                    record::expiry_of(value.value()).ok().flatten(),
                ));
                if chunk.len() == CLEAR_CHUNK {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            for (key, expires) in &chunk {
                self.data
                    .remove(key.as_slice())
                    .map_err(|e| redb("delete a record", e))?;
                self.reindex(key, *expires, None)?;
                if record::is_live(*expires, self.now_ms) {
                    live += 1;
                }
            }
        }
        if self.fences.is_none() {
            self.fences = Some(
                self.txn
                    .open_table(FENCES)
                    .map_err(|e| redb("open the fences table", e))?,
            );
        }
        if let Some(fences) = self.fences.as_mut() {
            fences
                .retain_in::<&[u8], _>(range(), |_, _| false)
                .map_err(|e| redb("delete fencing marks", e))?;
        }
        Ok(live)
    }

    /// Reclaims at most `max` expired entries, oldest first, through the index. Unless
    /// `force`, does nothing while the earliest known expiry lies in the future.
    pub(crate) fn sweep(&mut self, max: usize, force: bool) -> Result<usize> {
        if max == 0 || (!force && self.next_expiry.load(Ordering::Relaxed) > self.now_ms) {
            return Ok(0);
        }
        let expiry = open_expiry(&mut self.expiry, self.txn)?;
        let mut swept = 0;
        let next = loop {
            let first = expiry
                .first()
                .map_err(|e| redb("read the expiry index", e))?
                .map(|(k, _)| k.value().to_vec());
            let Some(index_key) = first else {
                break u64::MAX;
            };
            let (at, full) = split_expiry_key(&index_key)?;
            if at > self.now_ms || swept == max {
                break at;
            }
            expiry
                .remove(index_key.as_slice())
                .map_err(|e| redb("update the expiry index", e))?;
            // The record may have been rewritten with another expiry: only an entry that
            // still carries this expiry is the one the index points at.
            let current = self
                .data
                .get(full)
                .map_err(|e| redb("read a record", e))?
                .map(|g| record::expiry_of(g.value()).ok().flatten());
            if current == Some(Some(at)) {
                self.data
                    .remove(full)
                    .map_err(|e| redb("delete an expired record", e))?;
                swept += 1;
            }
        };
        self.next_expiry.store(next, Ordering::Relaxed);
        Ok(swept)
    }
}

/// One empty commit with `fsync`: redb then holds every earlier commit durably.
fn flush(db: &Database) -> Result<()> {
    let txn = db
        .begin_write()
        .map_err(|e| redb("begin the flush transaction", e))?;
    txn.commit().map_err(|e| redb("flush to disk", e))
}

#[derive(Debug, Default)]
struct FlushState {
    /// Non-durable commits acknowledged so far.
    commits: AtomicU64,
    /// How many of them are known durable.
    durable: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The group-commit thread of `Eventual` durability.
struct Flusher {
    state: Arc<FlushState>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    fn start(db: Arc<Database>, interval: Duration) -> Result<Flusher> {
        let state = Arc::new(FlushState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("redb-flusher".into())
            .spawn(move || flusher_loop(&db, &shared, interval))
            .map_err(|e| {
                StateError::new(
                    state_core::ErrorKind::Backend,
                    format!("cannot start the redb flusher thread: {e}"),
                )
                .with_source(e)
            })?;
        Ok(Flusher {
            state,
            thread: Some(thread),
        })
    }

    fn synced_up_to(&self, commits: u64) {
        self.state.durable.fetch_max(commits, Ordering::AcqRel);
    }

    fn stop(&mut self) {
        *self
            .state
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.state.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The flusher holds a database handle: it must be gone before the file closes.
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn flusher_loop(db: &Database, state: &FlushState, interval: Duration) {
    let mut stopped = state.stop.lock().unwrap_or_else(PoisonError::into_inner);
    while !*stopped {
        stopped = state
            .wake
            .wait_timeout(stopped, interval)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
        let target = state.commits.load(Ordering::Acquire);
        if target > state.durable.load(Ordering::Acquire) {
            drop(stopped);
            // A failed flush is retried on the next tick; pending_flush() stays true.
            if flush(db).is_ok() {
                state.durable.fetch_max(target, Ordering::AcqRel);
            }
            stopped = state.stop.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }
}
