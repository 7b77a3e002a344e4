//! The shared map of the memory backend: entries, their expiry index and fencing marks,
//! behind one mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub(super) value: Bytes,
    pub(super) expires_at: Option<SystemTime>,
    pub(super) metadata: Option<serde_json::Value>,
}

impl Slot {
    pub(super) fn is_live(&self, now: SystemTime) -> bool {
        self.expires_at.is_none_or(|at| at > now)
    }
}

#[derive(Debug, Default)]
pub(super) struct Inner {
    pub(super) map: BTreeMap<Bytes, Slot>,
    /// (expiry, key) of every entry with a TTL, so that a sweep finds the oldest first.
    pub(super) expiries: BTreeSet<(SystemTime, Bytes)>,
    /// The highest fencing token that wrote each key; kept apart from the value.
    pub(super) fences: BTreeMap<Bytes, u64>,
}

impl Inner {
    pub(super) fn live(&self, key: &[u8], now: SystemTime) -> Option<&Slot> {
        self.map.get(key).filter(|slot| slot.is_live(now))
    }

    pub(super) fn insert(&mut self, key: Bytes, slot: Slot) {
        if let Some(expiry) = slot.expires_at {
            self.expiries.insert((expiry, key.clone()));
        }
        if let Some(old) = self.map.insert(key.clone(), slot) {
            self.forget_expiry(&key, old.expires_at);
        }
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> Option<Slot> {
        let old = self.map.remove(key)?;
        self.forget_expiry(key, old.expires_at);
        Some(old)
    }

    pub(super) fn forget_expiry(&mut self, key: &[u8], expires_at: Option<SystemTime>) {
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
    pub(super) fn sweep(&mut self, now: SystemTime, max: usize) -> usize {
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

    pub(super) fn keys_under(&self, prefix: &[u8]) -> Vec<Bytes> {
        self.map
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub(super) fn clear_under(&mut self, prefix: &[u8], now: SystemTime) -> u64 {
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

/// The shared map behind one or more [`MemoryBackend`](super::MemoryBackend)s.
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

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
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
