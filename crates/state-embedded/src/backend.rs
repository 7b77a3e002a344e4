//! [`RedbBackend`]: the [`StateBackend`] implementation.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use state_core::stream::{self, next};
use state_core::{
    BoxStream, Capabilities, Checkpoint, Entry, ErrorKind, FencingToken, Health, ImportMode,
    Limits, Result, StateBackend, StateError, StateUrl, Ttl, remaining_ttl, ttl_millis,
};

use crate::config::{Durability, RedbConfig};
use crate::group::WriteStats;
use crate::read;
use crate::record::{self, to_ms};
use crate::store::{self, SWEEP_BATCH, Store};
use crate::streams::{ExportStream, ScanStream};
use crate::task;
use crate::write::Writer;

/// Keys up to this length (prefix included) are assembled on the stack by reads.
const STACK_KEY: usize = 128;

/// How many entries an import keeps in flight between the stream and the writer.
const IMPORT_BUFFER: usize = 256;

/// The embedded [`StateBackend`] on a redb file.
///
/// Cheap to clone: clones share one open database. [`with_prefix`](Self::with_prefix) gives
/// another namespace on the same database, and opening a file this process already has open
/// shares it too; another *process* opening the file gets a clear
/// [`Unavailable`](ErrorKind::Unavailable) error.
///
/// Reads (`get`, `batch_get`, `ttl`, scan pages) run on the calling task: a redb read
/// transaction never waits for writers, and a cached point read takes about 2 µs, while a
/// hop through `spawn_blocking` measured 9–15 µs on its own.
///
/// Writes go to the database's writer thread, which commits every write call queued at the
/// time (up to 256) in one redb transaction: group commit, one commit and, in
/// [`Immediate`](Durability::Immediate) mode, one `fsync` for the group. Each call is still
/// all or nothing and takes effect at its group's commit, between its start and its
/// return; a call that fails (a fenced put, an error) fails alone and leaves the others of
/// its group committed. [`write_stats`](Self::write_stats) shows how large the groups are.
/// Counts, checkpoints, exports and imports run on tokio's blocking pool (a plain thread
/// outside tokio), since they may read or write for long.
///
/// An import holds that one writer while it pulls its stream: the stream must not wait for
/// a write to the same file, or both wait forever. An export holds a read transaction for
/// as long as it is consumed; redb cannot reuse pages freed meanwhile, so the file may grow.
///
/// ```
/// use state_embedded::{RedbBackend, StateBackend};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let dir = tempfile::tempdir().unwrap();
/// let backend = RedbBackend::open(dir.path().join("state.redb"))?;
/// backend.put(b"user:1", b"alice").await?;
/// assert_eq!(backend.get(b"user:1").await?.as_deref(), Some(&b"alice"[..]));
/// # Ok::<(), state_embedded::StateError>(())
/// # }).unwrap();
/// ```
#[derive(Clone)]
pub struct RedbBackend {
    store: Arc<Store>,
    prefix: Bytes,
    default_ttl: Option<Duration>,
    limits: Limits,
}

impl std::fmt::Debug for RedbBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbBackend")
            .field("path", &self.store.path)
            .field("prefix", &self.prefix)
            .field("default_ttl", &self.default_ttl)
            .field("durability", &self.store.durability())
            .finish_non_exhaustive()
    }
}

impl RedbBackend {
    /// Opens (or creates, with its parent directories) the database at `path` with the
    /// defaults of [`RedbConfig::new`].
    pub fn open(path: impl AsRef<Path>) -> Result<RedbBackend> {
        RedbConfig::new(path.as_ref()).open()
    }

    /// Opens the database described by `config`.
    pub fn open_with(config: RedbConfig) -> Result<RedbBackend> {
        config.validate()?;
        let store = store::open_shared(&config)?;
        Ok(RedbBackend {
            store,
            prefix: Bytes::from(config.key_prefix),
            default_ttl: config.default_ttl,
            limits: config.limits,
        })
    }

    /// Opens a `redb:PATH?…` URL; see [`RedbConfig::from_url`] for the parameters.
    pub fn from_url(url: &StateUrl) -> Result<RedbBackend> {
        RedbConfig::from_url(url)?.open()
    }

    /// A backend on the same database whose key prefix is `prefix` (replacing this one's),
    /// with the same default TTL and limits.
    pub fn with_prefix(&self, prefix: impl AsRef<[u8]>) -> RedbBackend {
        RedbBackend {
            store: self.store.clone(),
            prefix: Bytes::copy_from_slice(prefix.as_ref()),
            default_ttl: self.default_ttl,
            limits: self.limits,
        }
    }

    /// The key prefix of this backend.
    pub fn key_prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.store.path
    }

    /// The durability mode the database was opened with.
    pub fn durability(&self) -> Durability {
        self.store.durability()
    }

    /// Makes every write acknowledged so far durable now, with one `fsync`'d commit. Only
    /// useful in [`Durability::Eventual`] mode, where it is what a flush tick does.
    pub async fn sync(&self) -> Result<()> {
        let store = self.store.clone();
        task::spawn(move || store.sync()).await
    }

    /// Whether some acknowledged writes are not durable yet (never in `Immediate` mode).
    pub fn pending_flush(&self) -> bool {
        self.store.pending_flush()
    }

    /// Reclaims at most `max` expired entries of the whole database (every write reclaims up
    /// to [`SWEEP_BATCH`](crate::SWEEP_BATCH) on its own); returns how many it reclaimed.
    pub async fn sweep_expired(&self, max: usize) -> Result<usize> {
        self.store.write(0, move |w| w.sweep(max, true)).await
    }

    /// Counters of the database's writer thread (shared by every handle on the file): how
    /// many write calls it ran in how many transactions.
    pub fn write_stats(&self) -> WriteStats {
        self.store.write_stats()
    }

    /// How many records the whole database holds, expired ones not yet reclaimed included.
    pub async fn stored_records(&self) -> Result<u64> {
        let store = self.store.clone();
        task::spawn(move || store.raw_len()).await
    }

    #[cfg(test)]
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        full
    }

    /// Calls `f` with the prefixed key, built on the stack when short: reads allocate only
    /// the value they return.
    fn with_full_key<T>(&self, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
        let len = self.prefix.len() + key.len();
        let mut stack = [0u8; STACK_KEY];
        if let Some(buf) = stack.get_mut(..len)
            && let Some((head, tail)) = buf.split_at_mut_checked(self.prefix.len())
        {
            head.copy_from_slice(&self.prefix);
            tail.copy_from_slice(key);
            return f(&*buf);
        }
        f(&self.full_key(key))
    }

    fn default_expiry(&self) -> Result<Option<u64>> {
        self.default_ttl.map(expiry_ms).transpose()
    }

    /// Runs `f` in a write transaction of the writer thread (maybe with other calls, maybe
    /// more than once: `f` only borrows what it captured, so a re-run copies nothing).
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Writer<'_>) -> Result<T> + Send + 'static,
    {
        self.store.write(SWEEP_BATCH, f).await
    }

    /// Encodes a put of `value` with `expires` and writes it.
    async fn put_record(&self, key: &[u8], value: &[u8], expires: Option<u64>) -> Result<()> {
        let full = self.full_key(key);
        let rec = record::encode(expires, None, value)?;
        self.write(move |w| w.put(&full, &rec, expires)).await
    }

    /// Validates and encodes an imported entry; `None` expiry of 0 marks one already past.
    fn encode_entry(&self, entry: &Entry) -> Result<(Vec<u8>, Vec<u8>, Option<u64>)> {
        self.limits.check_entry(&entry.key, &entry.value)?;
        let expires = entry.expires_at.map(to_ms);
        let meta = entry
            .metadata
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| {
                StateError::invalid_input("the entry's metadata cannot be serialized as JSON")
                    .with_source(e)
            })?;
        let rec = record::encode(expires, meta.as_deref(), &entry.value)?;
        Ok((self.full_key(&entry.key), rec, expires))
    }
}

/// The absolute expiry, in epoch milliseconds, of a TTL starting now.
fn expiry_ms(ttl: Duration) -> Result<u64> {
    let millis = ttl_millis(ttl)?;
    record::now_ms()
        .checked_add(millis)
        .ok_or_else(|| StateError::invalid_input("the TTL reaches past the clock's range"))
}

/// Writes one imported entry: an entry already expired removes any older value instead, so
/// importing never revives anything. Returns whether a live entry was written.
fn import_one(w: &mut Writer<'_>, full: &[u8], rec: &[u8], expires: Option<u64>) -> Result<bool> {
    if record::is_live(expires, w.now_ms) {
        w.put(full, rec, expires)?;
        Ok(true)
    } else {
        w.remove(full)?;
        Ok(false)
    }
}

enum ImportItem {
    Entry(Vec<u8>, Vec<u8>, Option<u64>),
    Commit,
}

#[async_trait]
impl StateBackend for RedbBackend {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::new("redb");
        caps.ordered_scan = true;
        caps.consistent_snapshot = true;
        caps.atomic_restore = true;
        caps.metadata = true;
        caps.durable = true;
        caps.max_key_len = self.limits.max_key_len;
        caps.max_value_len = self.limits.max_value_len;
        caps
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.limits.check_key(key)?;
        self.store.read(|table| {
            self.with_full_key(key, |full| {
                read::get(table, full, &mut read::Now::default())
            })
        })
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.limits.check_entry(key, value)?;
        self.put_record(key, value, self.default_expiry()?).await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.limits.check_entry(key, value)?;
        self.put_record(key, value, Some(expiry_ms(ttl)?)).await
    }

    async fn put_with_metadata(
        &self,
        key: &[u8],
        value: &[u8],
        metadata: serde_json::Value,
    ) -> Result<()> {
        self.limits.check_entry(key, value)?;
        let meta = serde_json::to_vec(&metadata).map_err(|e| {
            StateError::invalid_input("the metadata cannot be serialized as JSON").with_source(e)
        })?;
        let expires = self.default_expiry()?;
        let full = self.full_key(key);
        let rec = record::encode(expires, Some(&meta), value)?;
        self.write(move |w| w.put(&full, &rec, expires)).await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.limits.check_key(key)?;
        let full = self.full_key(key);
        self.write(move |w| w.remove(&full)).await
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        for key in keys {
            self.limits.check_key(key)?;
        }
        self.store.read(|table| {
            let found = keys
                .iter()
                .map(|key| self.with_full_key(key, |full| read::lookup(table, full)))
                .collect::<Result<Vec<_>>>()?;
            read::live_values(&found)
        })
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        for (key, value) in entries {
            self.limits.check_entry(key, value)?;
        }
        if entries.is_empty() {
            return Ok(());
        }
        let expires = self.default_expiry()?;
        // Every key and record in one buffer: two allocations for the whole batch.
        let size: usize = entries
            .iter()
            .map(|(k, v)| self.prefix.len() + k.len() + record::HEADER_LEN + v.len())
            .sum();
        let mut buf = Vec::with_capacity(size);
        let mut spans = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let start = buf.len();
            buf.extend_from_slice(&self.prefix);
            buf.extend_from_slice(key);
            let key_end = buf.len();
            record::append(&mut buf, expires, None, value)?;
            spans.push((start, key_end, buf.len()));
        }
        self.write(move |w| {
            for &(start, key_end, end) in &spans {
                let (Some(full), Some(rec)) = (buf.get(start..key_end), buf.get(key_end..end))
                else {
                    continue;
                };
                w.put(full, rec, expires)?;
            }
            Ok(())
        })
        .await
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        for key in keys {
            self.limits.check_key(key)?;
        }
        let fulls: Vec<Vec<u8>> = keys.iter().map(|k| self.full_key(k)).collect();
        self.write(move |w| {
            let mut deleted = 0;
            for full in &fulls {
                if w.remove(full)? {
                    deleted += 1;
                }
            }
            Ok(deleted)
        })
        .await
    }

    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.limits.check_key(key)?;
        let full = self.full_key(key);
        self.write(move |w| w.take(&full)).await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.limits.check_entry(key, value)?;
        let expires = match ttl {
            Some(ttl) => Some(expiry_ms(ttl)?),
            None => self.default_expiry()?,
        };
        let full = self.full_key(key);
        let rec = record::encode(expires, None, value)?;
        self.write(move |w| {
            if !w.live_value_is(&full, None)? {
                return Ok(false);
            }
            w.put(&full, &rec, expires)?;
            Ok(true)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        self.limits.check_entry(key, new)?;
        if let Some(expected) = expected {
            self.limits.check_value(expected)?;
        }
        let expires = self.default_expiry()?;
        let full = self.full_key(key);
        let rec = record::encode(expires, None, new)?;
        let expected = expected.map(<[u8]>::to_vec);
        self.write(move |w| {
            if !w.live_value_is(&full, expected.as_deref())? {
                return Ok(false);
            }
            w.put(&full, &rec, expires)?;
            Ok(true)
        })
        .await
    }

    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()> {
        self.limits.check_entry(key, value)?;
        let expires = self.default_expiry()?;
        let full = self.full_key(key);
        let rec = record::encode(expires, None, value)?;
        self.write(move |w| {
            w.fence(&full, token.0)?;
            w.put(&full, &rec, expires)
        })
        .await
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.limits.check_key(key)?;
        let now = SystemTime::now();
        let now_ms = record::floor_ms(now);
        let found = self
            .store
            .read(|table| self.with_full_key(key, |full| read::expiry(table, full, now_ms)))?;
        Ok(match found {
            None => Ttl::Missing,
            Some(expires) => remaining_ttl(expires.map(record::from_ms), now),
        })
    }

    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        Box::pin(ScanStream::new(
            self.store.clone(),
            self.full_key(prefix),
            self.prefix.len(),
        ))
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        let store = self.store.clone();
        let full = self.full_key(prefix);
        task::spawn(move || read::count(&store.db, &full)).await
    }

    async fn clear(&self, prefix: &[u8]) -> Result<u64> {
        let full = self.full_key(prefix);
        self.write(move |w| w.clear_prefix(&full)).await
    }

    async fn checkpoint(&self) -> Result<Checkpoint> {
        let store = self.store.clone();
        let prefix = self.prefix.to_vec();
        task::spawn(move || {
            let taken_at = SystemTime::now();
            let txn = read::begin(&store.db)?;
            let table = read::data_table(&txn)?;
            let mut entries = Vec::new();
            read::for_each_live(&table, &prefix, None, record::now_ms(), prefix.len(), |e| {
                entries.push(e);
                true
            })?;
            Ok(Checkpoint::new(entries, taken_at, true))
        })
        .await
    }

    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        let mut staged = Vec::with_capacity(checkpoint.len());
        for entry in checkpoint.entries() {
            staged.push(self.encode_entry(entry)?);
        }
        let namespace = self.prefix.to_vec();
        self.write(move |w| {
            w.clear_prefix(&namespace)?;
            for (full, rec, expires) in &staged {
                import_one(w, full, rec, *expires)?;
            }
            Ok(())
        })
        .await
    }

    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        // The read transaction starts here: the export is the state as of this call.
        match read::begin(&self.store.db) {
            Ok(txn) => Box::pin(ExportStream::new(
                txn,
                self.full_key(prefix),
                self.prefix.len(),
            )),
            Err(e) => stream::once_err(e),
        }
    }

    async fn import(
        &self,
        mut entries: BoxStream<'_, Result<Entry>>,
        mode: ImportMode,
    ) -> Result<u64> {
        // One write transaction of its own on a blocking thread (not the writer thread: it
        // pulls a stream and cannot run twice), fed through a bounded channel: memory stays
        // bounded, and an error in the stream drops the transaction uncommitted.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<ImportItem>(IMPORT_BUFFER);
        let namespace = self.prefix.to_vec();
        let writer = {
            let store = self.store.clone();
            task::spawn(move || {
                store.write_alone(|w| {
                    if mode == ImportMode::Replace {
                        w.clear_prefix(&namespace)?;
                    }
                    let mut written = 0;
                    loop {
                        match rx.blocking_recv() {
                            Some(ImportItem::Entry(full, rec, expires)) => {
                                if import_one(w, &full, &rec, expires)? {
                                    written += 1;
                                }
                            }
                            Some(ImportItem::Commit) => return Ok(written),
                            None => {
                                return Err(StateError::new(
                                    ErrorKind::Backend,
                                    "the import was abandoned; nothing was written",
                                ));
                            }
                        }
                    }
                })
            })
        };
        let fed: Result<()> = async {
            while let Some(item) = next(&mut entries).await {
                let (full, rec, expires) = self.encode_entry(&item?)?;
                if tx
                    .send(ImportItem::Entry(full, rec, expires))
                    .await
                    .is_err()
                {
                    // The writer failed; its error is the one to report.
                    return Ok(());
                }
            }
            let _ = tx.send(ImportItem::Commit).await;
            Ok(())
        }
        .await;
        drop(tx);
        let written = writer.await;
        fed?;
        written
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    async fn health_check(&self) -> Result<Health> {
        let started = Instant::now();
        let store = self.store.clone();
        let checked = task::spawn(move || {
            let txn = read::begin(&store.db)?;
            read::data_table(&txn).map(|_| ())
        })
        .await;
        let detail = format!(
            "redb file {} ({:?} durability)",
            self.store.path.display(),
            self.store.durability()
        );
        Ok(match checked {
            Ok(()) => Health::healthy(started.elapsed(), detail),
            Err(e) => Health::unhealthy(started.elapsed(), format!("{detail}: {e}")),
        })
    }
}
