//! The in-memory backend: the reference every other backend is compared with.
//!
//! Every operation takes one mutex around an ordered map, so each is atomic and the whole
//! store is linearizable. Expiry is absolute wall-clock time; an expired entry is invisible
//! at once and its memory is reclaimed by a bounded sweep on each write (at most
//! [`SWEEP_BATCH`] entries, taken in expiry order from an index, never a full scan).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Bound;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_core::Stream;

use crate::backend::{BoxStream, StateBackend};
use crate::error::{Result, StateError};
use crate::stream;
use crate::types::{
    Capabilities, Checkpoint, Entry, FencingToken, Health, ImportMode, Limits, Ttl, expiry_after,
    remaining_ttl,
};
use crate::url::StateUrl;

/// How many expired entries one write reclaims at most.
pub const SWEEP_BATCH: usize = 32;

/// How many entries a scan takes per lock acquisition.
const SCAN_PAGE: usize = 256;

#[derive(Debug, Clone)]
struct Slot {
    value: Bytes,
    expires_at: Option<SystemTime>,
    metadata: Option<serde_json::Value>,
}

impl Slot {
    fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<Bytes, Slot>,
    /// (expiry, key) of every entry with a TTL, so that a sweep finds the oldest first.
    expiries: BTreeSet<(SystemTime, Bytes)>,
    /// The highest fencing token that wrote each key; kept apart from the value.
    fences: BTreeMap<Bytes, u64>,
}

impl Inner {
    fn live(&self, key: &[u8], now: SystemTime) -> Option<&Slot> {
        self.map.get(key).filter(|slot| slot.is_live(now))
    }

    fn insert(&mut self, key: Bytes, slot: Slot) {
        if let Some(expiry) = slot.expires_at {
            self.expiries.insert((expiry, key.clone()));
        }
        if let Some(old) = self.map.insert(key.clone(), slot) {
            self.forget_expiry(&key, old.expires_at);
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Slot> {
        let old = self.map.remove(key)?;
        self.forget_expiry(key, old.expires_at);
        Some(old)
    }

    fn forget_expiry(&mut self, key: &[u8], expires_at: Option<SystemTime>) {
        if let Some(expiry) = expires_at {
            // The new slot may carry the same expiry; keep the index entry if so.
            let still = self
                .map
                .get(key)
                .is_some_and(|slot| slot.expires_at == Some(expiry));
            if !still {
                self.expiries.remove(&(expiry, Bytes::copy_from_slice(key)));
            }
        }
    }

    /// Reclaims at most `max` expired entries, oldest first.
    fn sweep(&mut self, now: SystemTime, max: usize) -> usize {
        let mut swept = 0;
        while swept < max {
            let Some((expiry, key)) = self.expiries.first().cloned() else {
                break;
            };
            if expiry > now {
                break;
            }
            self.expiries.pop_first();
            self.map.remove(&key);
            swept += 1;
        }
        swept
    }

    fn keys_under(&self, prefix: &[u8]) -> Vec<Bytes> {
        self.map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    fn clear_under(&mut self, prefix: &[u8], now: SystemTime) -> u64 {
        let mut live = 0;
        for key in self.keys_under(prefix) {
            if self.remove(&key).is_some_and(|slot| slot.is_live(now)) {
                live += 1;
            }
        }
        let fenced: Vec<Bytes> = self
            .fences
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for key in fenced {
            self.fences.remove(&key);
        }
        live
    }
}

/// The shared map behind one or more [`MemoryBackend`]s.
///
/// Backends built on the same store with different key prefixes see one another's data only
/// through their prefixes, as two clients of one Redis server would.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated in a way that
        // matters more than losing the store, so a poisoned lock is taken over.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many entries the store holds, expired but not yet swept ones included.
    pub fn raw_len(&self) -> usize {
        self.lock().map.len()
    }

    /// Reclaims at most `max` expired entries; returns how many it reclaimed.
    pub fn sweep(&self, max: usize) -> usize {
        self.lock().sweep(SystemTime::now(), max)
    }
}

/// Builds a [`MemoryBackend`].
#[derive(Debug, Clone, Default)]
pub struct MemoryBackendBuilder {
    store: Option<MemoryStore>,
    key_prefix: Vec<u8>,
    default_ttl: Option<Duration>,
    limits: Limits,
}

impl MemoryBackendBuilder {
    /// Shares an existing store (default: a new one).
    pub fn store(mut self, store: MemoryStore) -> Self {
        self.store = Some(store);
        self
    }

    /// Namespaces every key under `prefix`.
    pub fn key_prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.key_prefix = prefix.as_ref().to_vec();
        self
    }

    /// A TTL applied by `put`, `batch_put` and the other writes without their own TTL.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks the configuration and builds the backend.
    pub fn build(self) -> Result<MemoryBackend> {
        if let Some(ttl) = self.default_ttl {
            crate::types::ttl_millis(ttl)
                .map_err(|e| StateError::config(format!("default_ttl: {}", e.message())))?;
        }
        if self.limits.max_key_len == 0 {
            return Err(StateError::config("limits.max_key_len must be at least 1"));
        }
        Ok(MemoryBackend {
            store: self.store.unwrap_or_default(),
            prefix: Bytes::from(self.key_prefix),
            default_ttl: self.default_ttl,
            limits: self.limits,
        })
    }
}

/// The in-memory [`StateBackend`].
///
/// ```
/// use state_core::{MemoryBackend, StateBackend, Ttl};
/// use std::time::Duration;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let backend = MemoryBackend::new();
/// backend.put_with_ttl(b"session:1", b"data", Duration::from_millis(1500)).await?;
/// assert!(matches!(backend.ttl(b"session:1").await?, Ttl::Remaining(_)));
/// backend.put(b"session:1", b"data").await?; // a plain put clears the TTL
/// assert_eq!(backend.ttl(b"session:1").await?, Ttl::Persistent);
/// # Ok::<(), state_core::StateError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    store: MemoryStore,
    prefix: Bytes,
    default_ttl: Option<Duration>,
    limits: Limits,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        MemoryBackend::new()
    }
}

impl MemoryBackend {
    /// A backend on a new, empty store with no prefix and the default limits.
    pub fn new() -> Self {
        MemoryBackend {
            store: MemoryStore::new(),
            prefix: Bytes::new(),
            default_ttl: None,
            limits: Limits::DEFAULT,
        }
    }

    /// A builder for the options.
    pub fn builder() -> MemoryBackendBuilder {
        MemoryBackendBuilder::default()
    }

    /// Builds from a `memory://` URL (`prefix=`, `ttl=`).
    pub fn from_url(url: &StateUrl) -> Result<MemoryBackend> {
        if url.scheme() != crate::Scheme::Memory {
            return Err(StateError::config(format!(
                "the memory backend cannot open a {} URL",
                url.scheme()
            )));
        }
        url.check_params(&[])?;
        let mut builder = MemoryBackend::builder();
        if let Some(prefix) = url.key_prefix() {
            builder = builder.key_prefix(prefix);
        }
        if let Some(ttl) = url.default_ttl()? {
            builder = builder.default_ttl(ttl);
        }
        builder.build()
    }

    /// The store behind this backend.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    fn full_key(&self, key: &[u8]) -> Bytes {
        let mut full = Vec::with_capacity(self.prefix.len() + key.len());
        full.extend_from_slice(&self.prefix);
        full.extend_from_slice(key);
        Bytes::from(full)
    }

    fn user_key(&self, full: &Bytes) -> Bytes {
        full.slice(self.prefix.len()..)
    }

    fn default_expiry(&self, now: SystemTime) -> Result<Option<SystemTime>> {
        self.default_ttl
            .map(|ttl| expiry_after(now, ttl))
            .transpose()
    }

    fn slot(&self, value: &[u8], expires_at: Option<SystemTime>) -> Slot {
        Slot {
            value: Bytes::copy_from_slice(value),
            expires_at,
            metadata: None,
        }
    }

    /// Writes under the lock and reclaims a bounded number of expired entries.
    fn write<T>(&self, f: impl FnOnce(&mut Inner, SystemTime) -> Result<T>) -> Result<T> {
        let now = SystemTime::now();
        let mut inner = self.store.lock();
        let out = f(&mut inner, now);
        inner.sweep(now, SWEEP_BATCH);
        out
    }

    fn entry(&self, full: &Bytes, slot: &Slot) -> Entry {
        Entry {
            key: self.user_key(full),
            value: slot.value.clone(),
            expires_at: slot.expires_at,
            metadata: slot.metadata.clone(),
        }
    }

    fn snapshot(&self, prefix: &[u8]) -> Vec<Entry> {
        let full_prefix = self.full_key(prefix);
        let now = SystemTime::now();
        let inner = self.store.lock();
        inner
            .map
            .range::<[u8], _>((Bound::Included(&full_prefix[..]), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&full_prefix))
            .filter(|(_, slot)| slot.is_live(now))
            .map(|(k, slot)| self.entry(k, slot))
            .collect()
    }

    fn check_entry_input(&self, entry: &Entry) -> Result<()> {
        self.limits.check_entry(&entry.key, &entry.value)
    }
}

#[async_trait]
impl StateBackend for MemoryBackend {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::new("memory");
        caps.ordered_scan = true;
        caps.consistent_snapshot = true;
        caps.atomic_restore = true;
        caps.metadata = true;
        caps.max_key_len = self.limits.max_key_len;
        caps.max_value_len = self.limits.max_value_len;
        caps
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.limits.check_key(key)?;
        let full = self.full_key(key);
        let now = SystemTime::now();
        Ok(self
            .store
            .lock()
            .live(&full, now)
            .map(|slot| slot.value.clone()))
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.limits.check_entry(key, value)?;
        let full = self.full_key(key);
        self.write(|inner, now| {
            let slot = self.slot(value, self.default_expiry(now)?);
            inner.insert(full, slot);
            Ok(())
        })
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.limits.check_entry(key, value)?;
        let full = self.full_key(key);
        self.write(|inner, now| {
            let slot = self.slot(value, Some(expiry_after(now, ttl)?));
            inner.insert(full, slot);
            Ok(())
        })
    }

    async fn put_with_metadata(
        &self,
        key: &[u8],
        value: &[u8],
        metadata: serde_json::Value,
    ) -> Result<()> {
        self.limits.check_entry(key, value)?;
        let full = self.full_key(key);
        self.write(|inner, now| {
            let mut slot = self.slot(value, self.default_expiry(now)?);
            slot.metadata = Some(metadata);
            inner.insert(full, slot);
            Ok(())
        })
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.limits.check_key(key)?;
        let full = self.full_key(key);
        self.write(|inner, now| Ok(inner.remove(&full).is_some_and(|s| s.is_live(now))))
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        for key in keys {
            self.limits.check_key(key)?;
        }
        let now = SystemTime::now();
        let inner = self.store.lock();
        Ok(keys
            .iter()
            .map(|key| {
                inner
                    .live(&self.full_key(key), now)
                    .map(|slot| slot.value.clone())
            })
            .collect())
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        for (key, value) in entries {
            self.limits.check_entry(key, value)?;
        }
        self.write(|inner, now| {
            let expiry = self.default_expiry(now)?;
            for (key, value) in entries {
                inner.insert(self.full_key(key), self.slot(value, expiry));
            }
            Ok(())
        })
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        for key in keys {
            self.limits.check_key(key)?;
        }
        self.write(|inner, now| {
            let mut deleted = 0;
            for key in keys {
                if inner
                    .remove(&self.full_key(key))
                    .is_some_and(|s| s.is_live(now))
                {
                    deleted += 1;
                }
            }
            Ok(deleted)
        })
    }

    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.limits.check_key(key)?;
        let full = self.full_key(key);
        self.write(|inner, now| {
            Ok(inner
                .remove(&full)
                .filter(|s| s.is_live(now))
                .map(|s| s.value))
        })
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.limits.check_entry(key, value)?;
        let full = self.full_key(key);
        self.write(|inner, now| {
            let expiry = match ttl {
                Some(ttl) => Some(expiry_after(now, ttl)?),
                None => self.default_expiry(now)?,
            };
            if inner.live(&full, now).is_some() {
                return Ok(false);
            }
            inner.insert(full, self.slot(value, expiry));
            Ok(true)
        })
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
        let full = self.full_key(key);
        self.write(|inner, now| {
            let current = inner.live(&full, now).map(|slot| &slot.value[..]);
            if current != expected {
                return Ok(false);
            }
            let slot = self.slot(new, self.default_expiry(now)?);
            inner.insert(full, slot);
            Ok(true)
        })
    }

    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()> {
        self.limits.check_entry(key, value)?;
        let full = self.full_key(key);
        self.write(|inner, now| {
            if let Some(&current) = inner.fences.get(&full)
                && current > token.0
            {
                return Err(StateError::fenced(token.0, current));
            }
            let slot = self.slot(value, self.default_expiry(now)?);
            inner.fences.insert(full.clone(), token.0);
            inner.insert(full, slot);
            Ok(())
        })
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.limits.check_key(key)?;
        let full = self.full_key(key);
        let now = SystemTime::now();
        Ok(match self.store.lock().live(&full, now) {
            None => Ttl::Missing,
            Some(slot) => remaining_ttl(slot.expires_at, now),
        })
    }

    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        Box::pin(ScanStream {
            backend: self,
            prefix: self.full_key(prefix),
            after: None,
            page: VecDeque::new(),
            done: false,
        })
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        let full_prefix = self.full_key(prefix);
        let now = SystemTime::now();
        let inner = self.store.lock();
        let live = inner
            .map
            .range::<[u8], _>((Bound::Included(&full_prefix[..]), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&full_prefix))
            .filter(|(_, slot)| slot.is_live(now))
            .count();
        Ok(live as u64)
    }

    async fn clear(&self, prefix: &[u8]) -> Result<u64> {
        let full_prefix = self.full_key(prefix);
        self.write(|inner, now| Ok(inner.clear_under(&full_prefix, now)))
    }

    async fn checkpoint(&self) -> Result<Checkpoint> {
        let taken_at = SystemTime::now();
        Ok(Checkpoint::new(self.snapshot(b""), taken_at, true))
    }

    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        self.import(
            stream::iter(checkpoint.into_entries().into_iter().map(Ok)),
            ImportMode::Replace,
        )
        .await
        .map(|_| ())
    }

    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        // Memory state is already in memory: one copy under the lock is the snapshot.
        stream::iter(self.snapshot(prefix).into_iter().map(Ok))
    }

    async fn import(&self, entries: BoxStream<'_, Result<Entry>>, mode: ImportMode) -> Result<u64> {
        // Stage everything first: an error in the stream must leave the old state.
        let staged = stream::try_collect(entries).await?;
        for entry in &staged {
            self.check_entry_input(entry)?;
        }
        self.write(|inner, now| {
            if mode == ImportMode::Replace {
                inner.clear_under(&self.prefix, now);
            }
            let mut written = 0;
            for entry in staged {
                if entry.is_expired_at(now) {
                    // Restoring never revives: drop what has expired, and any older value.
                    inner.remove(&self.full_key(&entry.key));
                    continue;
                }
                let slot = Slot {
                    value: entry.value,
                    expires_at: entry.expires_at,
                    metadata: entry.metadata,
                };
                inner.insert(self.full_key(&entry.key), slot);
                written += 1;
            }
            Ok(written)
        })
    }

    async fn health_check(&self) -> Result<Health> {
        let started = Instant::now();
        let keys = self.store.raw_len();
        Ok(Health::healthy(
            started.elapsed(),
            format!("in-process memory store holding {keys} entries"),
        ))
    }
}

/// A scan that takes the lock once per page and resumes after the last key it returned.
struct ScanStream<'a> {
    backend: &'a MemoryBackend,
    prefix: Bytes,
    after: Option<Bytes>,
    page: VecDeque<Entry>,
    done: bool,
}

impl ScanStream<'_> {
    fn fill(&mut self) {
        let now = SystemTime::now();
        let inner = self.backend.store.lock();
        let lower = match &self.after {
            Some(after) => Bound::Excluded(&after[..]),
            None => Bound::Included(&self.prefix[..]),
        };
        let mut last = None;
        let mut taken = 0;
        for (key, slot) in inner
            .map
            .range::<[u8], _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&self.prefix))
        {
            last = Some(key.clone());
            taken += 1;
            if slot.is_live(now) {
                self.page.push_back(self.backend.entry(key, slot));
            }
            if taken == SCAN_PAGE {
                break;
            }
        }
        if taken < SCAN_PAGE {
            self.done = true;
        }
        self.after = last;
    }
}

impl Stream for ScanStream<'_> {
    type Item = Result<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(entry) = self.page.pop_front() {
                return Poll::Ready(Some(Ok(entry)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            self.fill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[tokio::test]
    async fn sweep_reclaims_expired_entries_in_bounded_steps() -> Result<()> {
        let backend = MemoryBackend::new();
        for i in 0..100u32 {
            backend
                .put_with_ttl(&i.to_be_bytes(), b"v", Duration::from_millis(1))
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            backend.count(b"").await?,
            0,
            "expired keys are invisible at once"
        );
        let before = backend.store().raw_len();
        backend.put(b"trigger", b"v").await?;
        let after = backend.store().raw_len();
        assert_eq!(
            before - after + 1,
            SWEEP_BATCH,
            "one write sweeps one batch"
        );
        while backend.store().sweep(SWEEP_BATCH) > 0 {}
        assert_eq!(backend.store().raw_len(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn overwriting_a_ttl_key_drops_its_expiry_index_entry() -> Result<()> {
        let backend = MemoryBackend::new();
        backend
            .put_with_ttl(b"k", b"v", Duration::from_millis(1))
            .await?;
        backend.put(b"k", b"v2").await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
        backend.store().sweep(usize::MAX);
        assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v2"[..]));
        Ok(())
    }

    #[tokio::test]
    async fn scan_pages_through_more_than_one_page_in_order() -> Result<()> {
        let backend = MemoryBackend::new();
        let n = SCAN_PAGE * 2 + 7;
        for i in 0..n as u32 {
            backend.put(&i.to_be_bytes(), b"").await?;
        }
        let keys: Vec<Bytes> = stream::try_collect(backend.scan(b""))
            .await?
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(keys.len(), n);
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        Ok(())
    }

    #[tokio::test]
    async fn from_url_reads_prefix_and_ttl_and_rejects_unknowns() -> Result<()> {
        let url = StateUrl::parse("memory://?prefix=a:&ttl=1h")?;
        let backend = MemoryBackend::from_url(&url)?;
        backend.put(b"k", b"v").await?;
        assert!(matches!(backend.ttl(b"k").await?, Ttl::Remaining(_)));
        assert_eq!(backend.store().raw_len(), 1);
        let url = StateUrl::parse("memory://?pool_max=3")?;
        let err = MemoryBackend::from_url(&url).err().map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::Config));
        Ok(())
    }

    #[test]
    fn builder_rejects_a_zero_default_ttl() {
        let err = MemoryBackend::builder()
            .default_ttl(Duration::ZERO)
            .build()
            .err()
            .map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("default_ttl")));
    }
}
