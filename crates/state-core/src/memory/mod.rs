//! The in-memory backend: the reference every other backend is compared with.
//!
//! Every operation takes one mutex around an ordered map, so each is atomic and the whole
//! store is linearizable. Expiry is absolute wall-clock time; an expired entry is invisible
//! at once and its memory is reclaimed by a bounded sweep on each write (at most
//! [`SWEEP_BATCH`] entries, taken in expiry order from an index, never a full scan).

use std::collections::VecDeque;
use std::ops::Bound;
use std::pin::Pin;

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
use crate::url::{Scheme, StateUrl, UrlShape};

mod store;

pub use store::MemoryStore;

/// `memory://`: the in-process reference backend's scheme, which every
/// [`Registry`](crate::Registry) knows.
pub const MEMORY: Scheme = Scheme::new("memory", UrlShape::Bare);
use store::{Inner, Slot};

/// How many expired entries one write reclaims at most.
pub const SWEEP_BATCH: usize = 32;

/// How many entries a scan takes per lock acquisition.
const SCAN_PAGE: usize = 256;

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
        if url.scheme() != MEMORY {
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

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
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
mod tests;
