//! The keys an import has already copied, remembered in fixed memory: a Bloom filter.
//!
//! An import stream may repeat a key (the last one wins), and `COPY` cannot update a row
//! it wrote. Remembering every key exactly would grow with the import; a Bloom filter of
//! fixed size answers "certainly not seen" (the row can be copied) or "maybe seen" (it
//! goes through the upsert path, which is right either way). At 1M keys about one key in
//! 90,000 takes the slower path by mistake; at 10M about one in 25.

use std::hash::{BuildHasher, Hasher};

/// 2^26 bits: 8 MiB, allocated once per import.
const BITS_LOG2: u32 = 26;
const PROBES: u64 = 4;

/// A key's positions in the filter, computed once for a lookup and an insertion.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    h1: u64,
    h2: u64,
}

#[derive(Debug)]
pub(crate) struct SeenKeys {
    words: Vec<u64>,
    /// A fixed hasher: collisions only cost speed, never correctness.
    hasher: std::hash::BuildHasherDefault<std::hash::DefaultHasher>,
}

impl SeenKeys {
    pub fn new() -> Self {
        SeenKeys {
            // Zeroed pages cost no memory until written.
            words: vec![0; 1 << (BITS_LOG2 - 6)],
            hasher: Default::default(),
        }
    }

    /// The probe of the key `prefix` + `key` (the two parts hashed as one byte string).
    pub fn probe(&self, prefix: &[u8], key: &[u8]) -> Probe {
        let mut h = self.hasher.build_hasher();
        h.write(prefix);
        h.write(key);
        let hash = h.finish();
        // Double hashing (Kirsch-Mitzenmacher): probe i is h1 + i * h2.
        Probe {
            h1: hash,
            h2: hash.rotate_left(32) | 1,
        }
    }

    fn positions(probe: Probe) -> impl Iterator<Item = (usize, u64)> {
        let mask = (1u64 << BITS_LOG2) - 1;
        (0..PROBES).map(move |i| {
            let bit = probe.h1.wrapping_add(i.wrapping_mul(probe.h2)) & mask;
            ((bit >> 6) as usize, 1u64 << (bit & 63))
        })
    }

    /// `false`: the key was certainly never inserted. `true`: it may have been.
    pub fn maybe_contains(&self, probe: Probe) -> bool {
        Self::positions(probe).all(|(word, bit)| self.words.get(word).is_some_and(|w| w & bit != 0))
    }

    pub fn insert(&mut self, probe: Probe) {
        for (word, bit) in Self::positions(probe) {
            if let Some(w) = self.words.get_mut(word) {
                *w |= bit;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_keys_are_found_and_most_others_are_not() {
        let mut seen = SeenKeys::new();
        for i in 0..100_000u32 {
            let p = seen.probe(b"p:", &i.to_be_bytes());
            seen.insert(p);
        }
        for i in 0..100_000u32 {
            assert!(seen.maybe_contains(seen.probe(b"p:", &i.to_be_bytes())));
        }
        let false_positives = (100_000..200_000u32)
            .filter(|i| seen.maybe_contains(seen.probe(b"p:", &i.to_be_bytes())))
            .count();
        assert!(false_positives < 10, "{false_positives} false positives");
    }
}
