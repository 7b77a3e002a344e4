//! The memo cache: configurations of the search already explored without success.
//!
//! A configuration is the set of linearized operations with a known return (as a 128-bit
//! Zobrist fingerprint of the bitset: a false hit needs a 2^-128 collision), the register
//! state, and which unknown operations were consumed. Consuming fewer unknown operations
//! can only leave more futures open (each may still never take effect), so a configuration
//! is skipped if one with the same set and state and a subset of its consumption failed
//! before: without that, every combination of consumed unknown operations would be
//! explored again.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The hash map hashes fingerprints that are already uniformly random.
#[derive(Debug, Default)]
struct FpHasher(u64);

impl Hasher for FpHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = (n as u64) ^ ((n >> 64) as u64);
    }
}

/// What a configuration consumed: how many of each interchangeable pool, and which of the
/// other unknown operations (a bitset without trailing zero words, usually empty).
#[derive(Debug)]
struct Seen {
    used: [u32; 3],
    spec: Box<[u64]>,
}

impl Seen {
    /// Whether `self` consumed no more than `used`/`spec` did.
    fn covers(&self, used: &[u32; 3], spec: &[u64]) -> bool {
        self.used.iter().zip(used).all(|(a, b)| a <= b)
            && self
                .spec
                .iter()
                .enumerate()
                .all(|(i, w)| w & !spec.get(i).copied().unwrap_or(0) == 0)
    }

    /// Whether `self` consumed at least what `other` did.
    fn covered_by(&self, other: &Seen) -> bool {
        other.covers(&self.used, &self.spec)
    }
}

#[derive(Debug)]
struct Bucket {
    first: Seen,
    more: Vec<Seen>,
}

/// Explored configurations, by (linearized set, state) key.
#[derive(Debug, Default)]
pub(super) struct Cache {
    map: HashMap<u128, Bucket, BuildHasherDefault<FpHasher>>,
}

impl Cache {
    /// Records a configuration about to be explored; false if it, or one that consumed
    /// less, was explored before.
    pub(super) fn visit(&mut self, key: u128, used: [u32; 3], spec: &[u64]) -> bool {
        let len = spec.iter().rposition(|w| *w != 0).map_or(0, |i| i + 1);
        let seen = || Seen {
            used,
            spec: spec[..len].into(),
        };
        match self.map.get_mut(&key) {
            None => {
                self.map.insert(
                    key,
                    Bucket {
                        first: seen(),
                        more: Vec::new(),
                    },
                );
                true
            }
            Some(bucket) => {
                let spec = &spec[..len];
                if bucket.first.covers(&used, spec)
                    || bucket.more.iter().any(|s| s.covers(&used, spec))
                {
                    return false;
                }
                let new = seen();
                bucket.more.retain(|s| !s.covered_by(&new));
                if bucket.first.covered_by(&new) {
                    bucket.first = new;
                } else {
                    bucket.more.push(new);
                }
                true
            }
        }
    }
}
