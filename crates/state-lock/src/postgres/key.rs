//! [`advisory_key`]: the stable 64-bit advisory lock key of a lock name.

/// The bytes hashed before every name, so that our keys do not line up with another
/// application's FNV-hashed advisory keys on the same database. Part of the key format:
/// changing it changes every key.
pub(crate) const DOMAIN_PREFIX: &[u8] = b"state-lock/v1:";

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The PostgreSQL advisory lock key of a lock name, used by
/// [`LockMode::Session`](super::LockMode::Session).
///
/// The function is part of the wire format (processes built from different versions must
/// agree on it) and is fixed:
///
/// 1. FNV-1a, 64-bit (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over the
///    bytes `state-lock/v1:` followed by the UTF-8 bytes of `name`;
/// 2. the splitmix64 finalizer on the result:
///    `z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb;
///    z ^= z >> 31` (wrapping multiplication), which spreads every input bit over both
///    32-bit halves;
/// 3. the 64 bits reinterpreted as `i64` (two's complement), the type of
///    `pg_try_advisory_lock(bigint)`.
///
/// In `pg_locks` the lock shows as `locktype = 'advisory'`, `classid` = the high 32 bits,
/// `objid` = the low 32 bits, `objsubid = 1`.
///
/// It is not `std`'s `DefaultHasher` (whose output may change between Rust releases) and
/// not PostgreSQL's 32-bit `hashtext` (which collides after tens of thousands of names).
/// Like any 64-bit hash it can collide in principle: two names sharing a key would exclude
/// each other (never both be granted), and the odds for a million names are about 3 in
/// 100 million.
///
/// ```
/// use state_lock::advisory_key;
/// assert_eq!(advisory_key("migration"), advisory_key("migration"));
/// assert_ne!(advisory_key("migration"), advisory_key("Migration"));
/// ```
pub fn advisory_key(name: &str) -> i64 {
    let hash = fnv1a64(DOMAIN_PREFIX.iter().chain(name.as_bytes()).copied());
    i64::from_ne_bytes(splitmix64_finalize(hash).to_ne_bytes())
}

/// `(classid, objid)`: how `pg_locks` shows a `bigint` advisory key.
pub(crate) fn pg_locks_ids(key: i64) -> (u32, u32) {
    let bits = u64::from_ne_bytes(key.to_ne_bytes());
    let high = u32::try_from(bits >> 32).unwrap_or(u32::MAX);
    let low = u32::try_from(bits & 0xffff_ffff).unwrap_or(u32::MAX);
    (high, low)
}

fn fnv1a64(bytes: impl Iterator<Item = u8>) -> u64 {
    bytes.fold(FNV_OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME)
    })
}

fn splitmix64_finalize(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_building_blocks_match_their_published_vectors() {
        // FNV-1a 64 test vectors from the FNV reference (draft-eastlake-fnv).
        assert_eq!(fnv1a64(b"".iter().copied()), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a".iter().copied()), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar".iter().copied()), 0x8594_4171_f739_67e8);
        // splitmix64's first output for seed 0 is the finalizer of the golden gamma.
        assert_eq!(
            splitmix64_finalize(0x9e37_79b9_7f4a_7c15),
            0xe220_a839_7b1d_cdaf
        );
    }

    #[test]
    fn keys_are_pinned() {
        // These values are the key format: a change here breaks mutual exclusion between
        // processes built before and after it.
        let pinned: [(&str, i64); 5] = [
            ("", -9_009_286_963_131_003_890),
            ("migration", 2_005_114_361_739_163_229),
            ("job-0", 2_527_889_751_432_352_201),
            ("leader", 6_343_005_740_399_900_126),
            ("ünïcödé/lock", -371_176_701_469_382_768),
        ];
        for (name, key) in pinned {
            assert_eq!(advisory_key(name), key, "advisory_key({name:?})");
        }
    }

    #[test]
    fn pg_locks_ids_split_the_key() {
        assert_eq!(pg_locks_ids(0), (0, 0));
        assert_eq!(pg_locks_ids(-1), (u32::MAX, u32::MAX));
        assert_eq!(pg_locks_ids(0x0000_0001_0000_0002), (1, 2));
        assert_eq!(pg_locks_ids(i64::MIN), (0x8000_0000, 0));
    }

    /// RELIABILITY 11: distinct names in a large sample never collide.
    #[test]
    fn two_million_distinct_names_have_distinct_keys() {
        let mut keys: Vec<i64> = Vec::with_capacity(2_000_000);
        keys.extend((0..1_000_000).map(|i| advisory_key(&format!("job-{i}"))));
        // Bare numbers: short inputs that differ in one or two bytes.
        keys.extend((0..1_000_000).map(|i| advisory_key(&i.to_string())));
        let total = keys.len();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), total, "{} collisions", total - keys.len());
    }
}
