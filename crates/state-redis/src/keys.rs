//! How user keys map to Redis keys, and the internal keys kept beside them.
//!
//! A data key is stored under its plain name, `prefix + key`, so that `redis-cli` and other
//! tools see what they expect. Internal keys (the fencing mark of a key, and a key staged
//! by a restore) must live in the same hash slot as their data key, or a Lua script and a
//! `RENAME` could not touch both in Cluster mode. They are named
//! `{T}` + marker + data key, where `T` is a short decimal tag chosen so that `{T}` hashes
//! to the data key's slot: this holds for any data key, braces included, with no
//! rewriting of user keys.

use std::sync::OnceLock;

/// Redis Cluster's number of hash slots.
pub(crate) const SLOTS: u16 = 16384;

/// The marker of a fencing key: `{T}` + FENCE + data key.
pub(crate) const FENCE: &[u8] = b"\x00state-fence\x00";

/// The marker of a restore's keys: `{T}` + STAGE + restore id + `\x00` + name.
pub(crate) const STAGE: &[u8] = b"\x00state-stage\x00";

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
pub(crate) fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of a Redis key, hash tags included (the rule of the Cluster spec).
pub(crate) fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = key.get(open + 1..)?;
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| rest.get(..close)).flatten()
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS
}

/// For every slot, the shortest decimal tag `T` such that `{T}` lands in it.
fn tags() -> &'static [Box<str>] {
    static TAGS: OnceLock<Vec<Box<str>>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut table: Vec<Option<Box<str>>> = vec![None; usize::from(SLOTS)];
        let mut missing = usize::from(SLOTS);
        let mut n: u64 = 0;
        // About 170,000 candidates cover every slot (coupon collector); computed once.
        while missing > 0 {
            let tag = n.to_string();
            let s = usize::from(crc16(tag.as_bytes()) % SLOTS);
            if let Some(cell) = table.get_mut(s)
                && cell.is_none()
            {
                *cell = Some(tag.into_boxed_str());
                missing -= 1;
            }
            n += 1;
        }
        table.into_iter().map(Option::unwrap_or_default).collect()
    })
}

/// `{T}` for the slot of `data_key`.
fn tag_for(data_key: &[u8]) -> Vec<u8> {
    slot_tag(slot(data_key))
}

/// `{T}` for hash slot `slot`: a key starting with it lands in that slot.
pub(crate) fn slot_tag(slot: u16) -> Vec<u8> {
    let tag = tags()
        .get(usize::from(slot))
        .map(|t| t.as_bytes())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(tag.len() + 2);
    out.push(b'{');
    out.extend_from_slice(tag);
    out.push(b'}');
    out
}

/// The key holding the highest fencing token that wrote `data_key`.
pub(crate) fn fence_key(data_key: &[u8]) -> Vec<u8> {
    let mut out = tag_for(data_key);
    out.extend_from_slice(FENCE);
    out.extend_from_slice(data_key);
    out
}

/// A key of restore `id` in hash slot `slot`: `{T}` + STAGE + id + `\x00` + `name`.
pub(crate) fn stage_key(slot: u16, id: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = slot_tag(slot);
    out.extend_from_slice(STAGE);
    out.extend_from_slice(id);
    out.push(0);
    out.extend_from_slice(name);
    out
}

/// If `key` is an internal key (`{digits}` + marker + …), the marker and what follows it.
fn internal_parts(key: &[u8]) -> Option<(&'static [u8], &[u8])> {
    let rest = key.strip_prefix(b"{")?;
    let close = rest.iter().position(|&b| b == b'}')?;
    let digits = rest.get(..close)?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let after = rest.get(close + 1..)?;
    for marker in [FENCE, STAGE] {
        if let Some(tail) = after.strip_prefix(marker) {
            return Some((marker, tail));
        }
    }
    None
}

/// Whether `key` is one of this crate's internal keys (never a user's data key).
pub(crate) fn is_internal(key: &[u8]) -> bool {
    internal_parts(key).is_some()
}

/// The data key a fencing key belongs to.
pub(crate) fn fenced_data_key(key: &[u8]) -> Option<&[u8]> {
    match internal_parts(key)? {
        (m, tail) if m == FENCE => Some(tail),
        _ => None,
    }
}

/// Escapes glob metacharacters (`* ? [ ] \`) so that SCAN MATCH takes `raw` literally.
pub(crate) fn escape_glob(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 8);
    for &b in raw {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// The MATCH pattern for every key starting with `prefix`.
pub(crate) fn prefix_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut out = escape_glob(prefix);
    out.push(b'*');
    out
}

/// The MATCH pattern for the fencing keys of every data key starting with `prefix`.
pub(crate) fn fence_pattern(prefix: &[u8]) -> Vec<u8> {
    let mut out = b"{*}".to_vec();
    out.extend_from_slice(&escape_glob(FENCE));
    out.extend_from_slice(&prefix_pattern(prefix));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_the_cluster_spec_example() {
        // The Redis Cluster specification gives CRC16("123456789") = 0x31C3.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn slots_agree_with_the_driver() {
        let keys: [&[u8]; 8] = [
            b"foo",
            b"{user1000}.following",
            b"foo{}{bar}",
            b"foo{{bar}}zap",
            b"foo{bar}{zap}",
            b"}{",
            b"\x00\xff{",
            b"{a}}",
        ];
        for key in keys {
            let ours = redis::cluster_routing::Slot::new(slot(key));
            assert_eq!(
                ours,
                Some(redis::cluster_routing::Slot::for_key(key)),
                "{key:?}"
            );
        }
    }

    #[test]
    fn internal_keys_share_the_data_keys_slot_whatever_its_braces() {
        let keys: [&[u8]; 9] = [
            b"p:k",
            b"p:{tag}k",
            b"}",
            b"{",
            b"{}x}",
            b"a}b{c",
            b"\xff\x00",
            b"{123}\x00state-fence\x00x",
            b"",
        ];
        for key in keys {
            assert_eq!(slot(&fence_key(key)), slot(key), "{key:?}");
            assert_eq!(
                slot(&stage_key(slot(key), b"abc", key)),
                slot(key),
                "{key:?}"
            );
            assert!(is_internal(&fence_key(key)));
            assert!(is_internal(&stage_key(0, b"id", key)));
            assert_eq!(fenced_data_key(&fence_key(key)), Some(key));
            assert_eq!(fenced_data_key(&stage_key(9, b"id", key)), None);
        }
        assert!(!is_internal(b"{12}x"));
        assert!(!is_internal(b"p:k"));
    }

    #[test]
    fn every_slot_has_a_tag() {
        let tags = tags();
        assert_eq!(tags.len(), usize::from(SLOTS));
        for (s, tag) in tags.iter().enumerate() {
            assert_eq!(usize::from(crc16(tag.as_bytes()) % SLOTS), s);
        }
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob(br"a*b?c[d]e\f"), br"a\*b\?c\[d\]e\\f".to_vec());
        assert_eq!(prefix_pattern(b"t:*"), br"t:\**".to_vec());
    }
}
