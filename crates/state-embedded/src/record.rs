//! The byte layout of what the backend stores, and the key and time arithmetic around it.
//!
//! A data record is `[version: u8][expires_at_ms: u64 BE, 0 = never][metadata_len: u32 BE]
//! [metadata JSON][value]`: the expiry travels with the value, so a read needs one lookup.
//! An expiry index entry is `expires_at_ms (u64 BE) ++ full key`, ordered by expiry, so the
//! sweep finds the oldest first without a scan.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use state_core::{Result, StateError};

/// The record format this crate writes and reads.
const VERSION: u8 = 1;
/// Version byte, expiry, metadata length.
pub(crate) const HEADER_LEN: usize = 1 + 8 + 4;

/// A decoded data record borrowing the stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    /// Absolute expiry in milliseconds since the Unix epoch.
    pub expires_ms: Option<u64>,
    pub metadata: Option<&'a [u8]>,
    pub value: &'a [u8],
}

impl<'a> Record<'a> {
    /// Parses a stored record; anything else is `Corrupt`.
    pub fn decode(bytes: &'a [u8]) -> Result<Record<'a>> {
        let (version, expires_ms) = header(bytes)?;
        if version != VERSION {
            return Err(StateError::corrupt(format!(
                "a stored record has format version {version}; this build reads version \
                 {VERSION}: open the file with the version of state-embedded that wrote it"
            )));
        }
        let meta_len = bytes
            .get(9..HEADER_LEN)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
            .ok_or_else(truncated)?;
        let meta_end = HEADER_LEN
            .checked_add(usize::try_from(meta_len).map_err(|_| truncated())?)
            .ok_or_else(truncated)?;
        let metadata = bytes.get(HEADER_LEN..meta_end).ok_or_else(truncated)?;
        let value = bytes.get(meta_end..).ok_or_else(truncated)?;
        Ok(Record {
            expires_ms,
            metadata: (meta_len > 0).then_some(metadata),
            value,
        })
    }

    /// Whether the record is visible at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        is_live(self.expires_ms, now_ms)
    }

    /// The metadata parsed as JSON.
    pub fn metadata_json(&self) -> Result<Option<serde_json::Value>> {
        self.metadata
            .map(|raw| {
                serde_json::from_slice(raw).map_err(|e| {
                    StateError::corrupt("a stored record's metadata is not valid JSON")
                        .with_source(e)
                })
            })
            .transpose()
    }
}

/// Only the expiry of a stored record: what reads and the sweep need, checked cheaply.
pub(crate) fn expiry_of(bytes: &[u8]) -> Result<Option<u64>> {
    header(bytes).map(|(_, expires_ms)| expires_ms)
}

fn header(bytes: &[u8]) -> Result<(u8, Option<u64>)> {
    let version = *bytes.first().ok_or_else(truncated)?;
    let expires = bytes
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(truncated)?;
    Ok((version, (expires != 0).then_some(expires)))
}

fn truncated() -> StateError {
    StateError::corrupt(
        "a stored record is shorter than its header says; the file is damaged: \
         restore it from a checkpoint",
    )
}

/// Appends an encoded record to `out`, so a batch can encode into one buffer.
pub(crate) fn append(
    out: &mut Vec<u8>,
    expires_ms: Option<u64>,
    metadata: Option<&[u8]>,
    value: &[u8],
) -> Result<()> {
    let meta = metadata.unwrap_or_default();
    let meta_len = u32::try_from(meta.len()).map_err(|_| {
        StateError::invalid_input("the metadata is larger than 4 GiB once serialized")
    })?;
    out.reserve(HEADER_LEN + meta.len() + value.len());
    out.push(VERSION);
    out.extend_from_slice(&expires_ms.unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&meta_len.to_be_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(value);
    Ok(())
}

/// Encodes a record into a new buffer.
pub(crate) fn encode(
    expires_ms: Option<u64>,
    metadata: Option<&[u8]>,
    value: &[u8],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    append(&mut out, expires_ms, metadata, value)?;
    Ok(out)
}

/// The expiry index key of `full_key` expiring at `expires_ms`.
pub(crate) fn expiry_key(expires_ms: u64, full_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + full_key.len());
    key.extend_from_slice(&expires_ms.to_be_bytes());
    key.extend_from_slice(full_key);
    key
}

/// Splits an expiry index key into its expiry and full key.
pub(crate) fn split_expiry_key(index_key: &[u8]) -> Result<(u64, &[u8])> {
    let (at, key) = index_key
        .split_first_chunk::<8>()
        .ok_or_else(|| StateError::corrupt("an expiry index entry is shorter than 8 bytes"))?;
    Ok((u64::from_be_bytes(*at), key))
}

/// Whether something expiring at `expires_ms` is visible at `now_ms`.
pub(crate) fn is_live(expires_ms: Option<u64>, now_ms: u64) -> bool {
    expires_ms.is_none_or(|at| at > now_ms)
}

/// Whole milliseconds since the Unix epoch, rounded down: `at > now_ms` then holds exactly
/// when the expiry lies after the present instant.
pub(crate) fn now_ms() -> u64 {
    floor_ms(SystemTime::now())
}

/// `at` in whole milliseconds since the Unix epoch, rounded down (0 before the epoch).
pub(crate) fn floor_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An absolute expiry as stored: milliseconds since the epoch, rounded up so an entry never
/// expires early. Times before the epoch become 0 (already expired, never stored).
pub(crate) fn to_ms(at: SystemTime) -> u64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(d) => u64::try_from(d.as_nanos().div_ceil(1_000_000))
            .unwrap_or(u64::MAX)
            .max(1),
        Err(_) => 0,
    }
}

/// The stored expiry as a `SystemTime`.
pub(crate) fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX)))
}

/// The first key after every key that starts with `prefix`, or `None` when no such bound
/// exists (empty prefix or all 0xFF bytes): then the range is unbounded above.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() -> Result<()> {
        for (exp, meta, value) in [
            (None, None, &b""[..]),
            (Some(17), Some(&b"{\"a\":1}"[..]), &b"\x00\xff"[..]),
            (Some(u64::MAX), None, &b"value"[..]),
        ] {
            let bytes = encode(exp, meta, value)?;
            let record = Record::decode(&bytes)?;
            assert_eq!(record.expires_ms, exp);
            assert_eq!(record.metadata, meta);
            assert_eq!(record.value, value);
            assert_eq!(expiry_of(&bytes)?, exp);
        }
        Ok(())
    }

    #[test]
    fn damaged_records_are_corrupt_not_panics() {
        let good = encode(Some(5), Some(b"{}"), b"v").unwrap_or_default();
        let mut bad_version = good.clone();
        if let Some(b) = bad_version.first_mut() {
            *b = 9;
        }
        let mut long_meta = good.clone();
        if let Some(b) = long_meta.get_mut(12) {
            *b = 200;
        }
        for bytes in [&b""[..], &good[..5], &good[..12], &bad_version, &long_meta] {
            let kind = Record::decode(bytes).err().map(|e| e.kind());
            assert_eq!(kind, Some(state_core::ErrorKind::Corrupt), "{bytes:?}");
        }
    }

    #[test]
    fn prefix_end_handles_0xff() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn expiry_is_exact_to_the_millisecond() {
        let at = UNIX_EPOCH + Duration::from_micros(1_500);
        assert_eq!(to_ms(at), 2, "rounded up");
        assert!(is_live(Some(2), 1));
        assert!(!is_live(Some(2), 2));
        assert_eq!(to_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(from_ms(2), UNIX_EPOCH + Duration::from_millis(2));
        let key = expiry_key(7, b"k");
        assert_eq!(split_expiry_key(&key).ok(), Some((7, &b"k"[..])));
    }
}
