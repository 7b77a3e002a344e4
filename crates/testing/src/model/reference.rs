//! The reference model: a plain `BTreeMap`, independent of every backend.

use std::collections::BTreeMap;
use std::time::Duration;

/// A stored value and the TTL it was written with (`None`: persistent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The value.
    pub value: Vec<u8>,
    /// The TTL given when it was written.
    pub ttl: Option<Duration>,
}

/// What [`StateBackend`](state_core::StateBackend) promises, as a map plus a fence map.
/// Nothing expires: property tests use hour-long TTLs.
#[derive(Debug, Clone, Default)]
pub struct Model {
    entries: BTreeMap<Vec<u8>, Slot>,
    fences: BTreeMap<Vec<u8>, u64>,
}

impl Model {
    /// An empty model.
    pub fn new() -> Self {
        Model::default()
    }

    /// The value of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.get(key).map(|s| s.value.clone())
    }

    /// The TTL `key` was written with: `None` if missing, `Some(None)` if persistent.
    pub fn ttl(&self, key: &[u8]) -> Option<Option<Duration>> {
        self.entries.get(key).map(|s| s.ttl)
    }

    /// Stores `value`, replacing any TTL with `ttl`.
    pub fn put(&mut self, key: &[u8], value: &[u8], ttl: Option<Duration>) {
        self.entries.insert(
            key.to_vec(),
            Slot {
                value: value.to_vec(),
                ttl,
            },
        );
    }

    /// Removes `key`; returns its value.
    pub fn delete(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.remove(key).map(|s| s.value)
    }

    /// Stores if absent; returns whether it stored.
    pub fn set_if_not_exists(&mut self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> bool {
        if self.entries.contains_key(key) {
            return false;
        }
        self.put(key, value, ttl);
        true
    }

    /// Swaps if the current value is `expected`; returns whether it swapped.
    pub fn compare_and_swap(&mut self, key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> bool {
        if self.entries.get(key).map(|s| &s.value[..]) != expected {
            return false;
        }
        self.put(key, new, None);
        true
    }

    /// A fenced write: `Err(current)` if a higher token already wrote `key`.
    pub fn put_fenced(&mut self, key: &[u8], value: &[u8], token: u64) -> Result<(), u64> {
        if let Some(&current) = self.fences.get(key)
            && current > token
        {
            return Err(current);
        }
        self.fences.insert(key.to_vec(), token);
        self.put(key, value, None);
        Ok(())
    }

    /// The entries under `prefix`, in key order.
    pub fn scan(&self, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.entries
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| (k.clone(), s.value.clone()))
            .collect()
    }

    /// How many keys start with `prefix`.
    pub fn count(&self, prefix: &[u8]) -> u64 {
        self.entries
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count() as u64
    }

    /// Removes the keys and fencing marks under `prefix`; returns how many keys.
    pub fn clear(&mut self, prefix: &[u8]) -> u64 {
        let before = self.entries.len();
        self.entries.retain(|k, _| !k.starts_with(prefix));
        self.fences.retain(|k, _| !k.starts_with(prefix));
        (before - self.entries.len()) as u64
    }
}
