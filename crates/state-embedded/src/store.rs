//! The redb database behind one or more backends: opening (shared by every handle on one
//! file), the writer thread that groups write calls into transactions ([`crate::group`]),
//! and the flusher of `Eventual` durability ([`crate::flush`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use redb::Database;
use state_core::{Result, StateError};

use crate::config::{Durability, RedbConfig};
use crate::error::{already_open, redb};
use crate::flush::{Flusher, flush};
use crate::group::{WriteStats, WriterThread};
use crate::read::ReadTable;
use crate::snapshot::Snapshots;
use crate::tables::{DATA, init_tables};
use crate::write::{Core, Failure, Writer};

/// How many expired entries one write transaction reclaims at most.
pub const SWEEP_BATCH: usize = 64;

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
            snapshots: Snapshots::new(),
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

    /// Runs a point read on the data table of a snapshot holding every write returned
    /// before this call (one kept between commits: `snapshot.rs`). A read inside `read`
    /// runs on a transaction of its own.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&ReadTable) -> Result<T>) -> Result<T> {
        self.core.snapshots.read(&self.db, read)
    }

    #[cfg(test)]
    pub(crate) fn core_snapshots(&self) -> &Snapshots {
        &self.core.snapshots
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
        // No handle is left to read, and the file must close with no reader open.
        self.core.snapshots.clear();
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
