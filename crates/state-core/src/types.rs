//! The values that cross the [`StateBackend`](crate::StateBackend) API.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StateError};

/// One stored key with its value, absolute expiry and optional metadata.
///
/// Expiry is absolute (a wall-clock time), so exporting and importing later neither revives
/// nor extends anything: an entry whose time has passed is simply absent after import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key, without the backend's key prefix.
    pub key: Bytes,
    /// The value.
    pub value: Bytes,
    /// When the entry stops existing; `None` for no expiry.
    pub expires_at: Option<SystemTime>,
    /// Optional JSON metadata (backends with [`Capabilities::metadata`]).
    pub metadata: Option<serde_json::Value>,
}

impl Entry {
    /// An entry with no expiry and no metadata.
    pub fn new(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        Entry {
            key: key.into(),
            value: value.into(),
            expires_at: None,
            metadata: None,
        }
    }

    /// Sets the absolute expiry.
    pub fn with_expiry(mut self, expires_at: SystemTime) -> Self {
        self.expires_at = Some(expires_at);
        self
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Whether the entry has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// The remaining lifetime of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// The key does not exist (or has expired).
    Missing,
    /// The key exists and never expires.
    Persistent,
    /// The key exists and expires after this long (millisecond precision).
    Remaining(Duration),
}

/// A monotonically increasing number issued with each lock acquisition.
///
/// A storage write that carries a token is rejected if a higher token already wrote the same
/// key ([`StateBackend::put_fenced`](crate::StateBackend::put_fenced)), so a holder that lost
/// its lock while paused cannot overwrite its successor's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl std::fmt::Display for FencingToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How [`StateBackend::import`](crate::StateBackend::import) treats what is already stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Remove every key of the backend's namespace, then write the imported entries; readers
    /// see either the old state or the new one, never a mix (where
    /// [`Capabilities::atomic_restore`] holds).
    Replace,
    /// Write the imported entries over what is there, keeping every other key.
    Merge,
}

/// What a backend guarantees. The conformance suite picks its cases from this, so a backend
/// never silently skips a case it claims to support.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// A short name for messages ("memory", "redb", "redis", "postgres").
    pub backend: &'static str,
    /// `scan` and `export` yield keys in ascending byte order.
    pub ordered_scan: bool,
    /// `checkpoint` and `export` are one point-in-time snapshot. When false they are fuzzy:
    /// a key written during the export may or may not be in it.
    pub consistent_snapshot: bool,
    /// `restore` and `import(Replace)` are all-or-nothing for readers.
    pub atomic_restore: bool,
    /// Entries can carry JSON metadata (`put_with_metadata`).
    pub metadata: bool,
    /// State survives a restart of the process.
    pub durable: bool,
    /// Several processes can share the state (a server, not process memory).
    pub shared: bool,
    /// The largest accepted key, in bytes, not counting the key prefix.
    pub max_key_len: usize,
    /// The largest accepted value, in bytes.
    pub max_value_len: usize,
}

impl Capabilities {
    /// The capabilities of a minimal backend named `backend` with the default limits;
    /// backends start here and set what they offer.
    pub fn new(backend: &'static str) -> Self {
        Capabilities {
            backend,
            ordered_scan: false,
            consistent_snapshot: false,
            atomic_restore: false,
            metadata: false,
            durable: false,
            shared: false,
            max_key_len: Limits::DEFAULT.max_key_len,
            max_value_len: Limits::DEFAULT.max_value_len,
        }
    }

    /// The size limits these capabilities declare.
    pub fn limits(&self) -> Limits {
        Limits {
            max_key_len: self.max_key_len,
            max_value_len: self.max_value_len,
        }
    }
}

/// Size limits checked before anything is sent to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest key in bytes (without the prefix).
    pub max_key_len: usize,
    /// The largest value in bytes.
    pub max_value_len: usize,
}

impl Limits {
    /// 1 KiB keys (PostgreSQL's btree caps an index entry near 2.7 KB, and a key prefix
    /// needs room) and 64 MiB values.
    pub const DEFAULT: Limits = Limits {
        max_key_len: 1024,
        max_value_len: 64 * 1024 * 1024,
    };

    /// Checks a key: non-empty and within `max_key_len`.
    pub fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(StateError::invalid_input(
                "the key is empty; keys must be at least 1 byte long",
            ));
        }
        if key.len() > self.max_key_len {
            return Err(StateError::invalid_input(format!(
                "the key is {} bytes; the limit is {} bytes (max_key_len)",
                key.len(),
                self.max_key_len
            )));
        }
        Ok(())
    }

    /// Checks a value: within `max_value_len`.
    pub fn check_value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_len {
            return Err(StateError::invalid_input(format!(
                "the value is {} bytes; the limit is {} bytes (max_value_len)",
                value.len(),
                self.max_value_len
            )));
        }
        Ok(())
    }

    /// Checks a key and its value.
    pub fn check_entry(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_key(key)?;
        self.check_value(value)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// The longest TTL accepted: 100 years. Longer ones are almost surely a unit mistake.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Validates a TTL and returns it in whole milliseconds, rounded up so that a positive TTL
/// never becomes zero (a zero expiry deletes the key at once in Redis).
pub fn ttl_millis(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(StateError::invalid_input(
            "the TTL is zero; use a TTL of at least 1ms, or delete the key",
        ));
    }
    if ttl > MAX_TTL {
        return Err(StateError::invalid_input(format!(
            "the TTL {} is longer than the limit of 100 years",
            humantime::format_duration(ttl)
        )));
    }
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    // MAX_TTL keeps this far below u64::MAX.
    Ok(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// The absolute expiry of a TTL starting `now`, validated and rounded up to milliseconds.
pub fn expiry_after(now: SystemTime, ttl: Duration) -> Result<SystemTime> {
    let millis = ttl_millis(ttl)?;
    now.checked_add(Duration::from_millis(millis))
        .ok_or_else(|| StateError::invalid_input("the TTL reaches past the clock's range"))
}

/// The remaining TTL of an entry that expires at `expires_at`, seen at `now`.
pub fn remaining_ttl(expires_at: Option<SystemTime>, now: SystemTime) -> Ttl {
    match expires_at {
        None => Ttl::Persistent,
        Some(at) => match at.duration_since(now) {
            Ok(left) if !left.is_zero() => {
                // Millisecond precision, rounded up: a key that exists has at least 1ms.
                Ttl::Remaining(Duration::from_millis(
                    u64::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX),
                ))
            }
            _ => Ttl::Missing,
        },
    }
}

/// The state of a backend as of [`StateBackend::checkpoint`](crate::StateBackend::checkpoint):
/// every live entry of its namespace, held in memory.
///
/// For state too large for memory use [`StateBackend::export`](crate::StateBackend::export),
/// which streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    entries: Vec<Entry>,
    taken_at: SystemTime,
    consistent: bool,
}

impl Checkpoint {
    /// A checkpoint of `entries` taken at `taken_at`; `consistent` says whether they form
    /// one point-in-time snapshot.
    pub fn new(entries: Vec<Entry>, taken_at: SystemTime, consistent: bool) -> Self {
        Checkpoint {
            entries,
            taken_at,
            consistent,
        }
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Takes the entries out.
    pub fn into_entries(self) -> Vec<Entry> {
        self.entries
    }

    /// When it was taken.
    pub fn taken_at(&self) -> SystemTime {
        self.taken_at
    }

    /// Whether the entries are one point-in-time snapshot (false for a fuzzy scan).
    pub fn is_consistent(&self) -> bool {
        self.consistent
    }
}

/// The result of [`StateBackend::health_check`](crate::StateBackend::health_check).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Whether the backend answered correctly.
    pub healthy: bool,
    /// How long the check took.
    pub latency: Duration,
    /// A short human-readable detail ("PONG from 127.0.0.1:6379", "read-only replica"…).
    pub detail: String,
}

impl Health {
    /// A healthy result.
    pub fn healthy(latency: Duration, detail: impl Into<String>) -> Self {
        Health {
            healthy: true,
            latency,
            detail: detail.into(),
        }
    }

    /// An unhealthy result.
    pub fn unhealthy(latency: Duration, detail: impl Into<String>) -> Self {
        Health {
            healthy: false,
            latency,
            detail: detail.into(),
        }
    }

    /// Whether the backend is healthy.
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_milliseconds() {
        assert_eq!(ttl_millis(Duration::from_micros(1)).ok(), Some(1));
        assert_eq!(ttl_millis(Duration::from_micros(1500)).ok(), Some(2));
        assert_eq!(ttl_millis(Duration::from_millis(500)).ok(), Some(500));
    }

    #[test]
    fn zero_and_huge_ttls_are_invalid_input() {
        for ttl in [
            Duration::ZERO,
            MAX_TTL + Duration::from_secs(1),
            Duration::MAX,
        ] {
            let err = ttl_millis(ttl).err().map(|e| e.kind());
            assert_eq!(err, Some(crate::ErrorKind::InvalidInput), "{ttl:?}");
        }
    }

    #[test]
    fn remaining_ttl_reports_missing_once_passed() {
        let now = SystemTime::now();
        assert_eq!(remaining_ttl(None, now), Ttl::Persistent);
        assert_eq!(remaining_ttl(Some(now), now), Ttl::Missing);
        assert_eq!(
            remaining_ttl(Some(now + Duration::from_micros(1)), now),
            Ttl::Remaining(Duration::from_millis(1))
        );
    }

    #[test]
    fn limits_name_the_limit() {
        let limits = Limits {
            max_key_len: 4,
            max_value_len: 8,
        };
        let err = limits.check_key(b"12345").err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("invalid input: the key is 5 bytes; the limit is 4 bytes (max_key_len)")
        );
        assert!(limits.check_entry(b"1234", b"12345678").is_ok());
        assert!(limits.check_value(b"123456789").is_err());
        assert!(limits.check_key(b"").is_err());
    }
}
