//! [`CheckpointId`] and [`Manifest`]: what names a checkpoint and what says it is complete.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use state_core::{Result, StateError};

use crate::format::{Compression, FORMAT_VERSION, Summary};

/// Names a checkpoint: the fencing token it was taken under, then a sequence number within
/// that token. Ordered by `(token, seq)`, so a checkpoint of a stale leader (a lower token)
/// never sorts after one of its successor.
///
/// Written `{token:020}-{seq:010}` (`00000000000000000007-0000000003`), which sorts as text
/// in the same order while `seq` stays below 10¹⁰. Parsing accepts only that form, so a
/// name and its id map one to one. Serialized as that string (a JSON number cannot hold
/// every `u64`).
///
/// ```
/// use state_checkpoint::CheckpointId;
///
/// let id = CheckpointId { token: 7, seq: 3 };
/// assert_eq!(id.to_string(), "00000000000000000007-0000000003");
/// assert_eq!("00000000000000000007-0000000003".parse::<CheckpointId>()?, id);
/// assert!("7-3".parse::<CheckpointId>().is_err());
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CheckpointId {
    /// The fencing token of the lock the checkpoint was taken under.
    pub token: u64,
    /// The sequence within that token.
    pub seq: u64,
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}-{:010}", self.token, self.seq)
    }
}

impl FromStr for CheckpointId {
    type Err = StateError;

    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            StateError::invalid_input(format!(
                "`{s}` is not a checkpoint id; ids are written TOKEN-SEQ with 20 and 10 digits \
                 (00000000000000000007-0000000003)"
            ))
        };
        let (token, seq) = s.split_once('-').ok_or_else(bad)?;
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(token) || !digits(seq) {
            return Err(bad());
        }
        let id = CheckpointId {
            token: token.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        };
        // Only the canonical spelling: one id, one name.
        if id.to_string() != s {
            return Err(bad());
        }
        Ok(id)
    }
}

impl Serialize for CheckpointId {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CheckpointId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The record that makes a checkpoint exist: written last, after its data is durable. A
/// checkpoint whose manifest is missing or invalid does not exist, whatever data is there.
///
/// Stored as JSON (`{id}.manifest.json` in a directory). Unknown fields are ignored when
/// reading, so a later version may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The checkpoint.
    pub id: CheckpointId,
    /// The version of the data file's format ([`FORMAT_VERSION`] when written here).
    pub format_version: u16,
    /// When the checkpoint was taken, in unix milliseconds.
    pub created_at_ms: u64,
    /// What it was taken from, for people (`redis`, `postgres`…); never a secret.
    pub source_backend: String,
    /// How many entries the data file holds.
    pub entries: u64,
    /// The uncompressed size of the data file's frames ([`Summary::data_bytes`]).
    pub data_bytes: u64,
    /// SHA-256 of the whole data file, lower-case hex ([`Summary::sha256`]).
    pub data_sha256: String,
    /// Whether the entries are one point-in-time snapshot (false for a fuzzy scan).
    pub consistent: bool,
    /// The compression the data was written with: `none` or `lz4`.
    pub compression: String,
    /// The key prefix the checkpoint was taken under (the coordinator's
    /// [`key_prefix`](crate::CheckpointOptions::with_key_prefix); empty: the whole
    /// namespace). Stored as `key_prefix_hex`, lower-case hex, since a prefix is bytes.
    /// `None` for a manifest written before the field existed: the prefix is then
    /// unknown, and a restore checks each entry against its own prefix instead.
    #[serde(
        rename = "key_prefix_hex",
        default,
        skip_serializing_if = "Option::is_none",
        with = "prefix_hex"
    )]
    pub key_prefix: Option<Vec<u8>>,
}

/// `Option<Vec<u8>>` as an optional lower-case hex string.
mod prefix_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        prefix: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match prefix {
            Some(prefix) => serializer.serialize_str(&hex::encode(prefix)),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(deserializer)?;
        text.map(|text| {
            // Lower case only, as written: one prefix, one spelling.
            if text.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(serde::de::Error::custom(
                    "key_prefix_hex is not lower-case hex",
                ));
            }
            hex::decode(&text)
                .map_err(|e| serde::de::Error::custom(format!("key_prefix_hex is not hex: {e}")))
        })
        .transpose()
    }
}

impl Manifest {
    /// The manifest of checkpoint `id`, whose data was encoded with `compression` and
    /// described by `summary`, taken from `source_backend` now.
    pub fn new(
        id: CheckpointId,
        summary: &Summary,
        compression: Compression,
        source_backend: &str,
        consistent: bool,
    ) -> Self {
        let created_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Manifest {
            id,
            format_version: FORMAT_VERSION,
            created_at_ms,
            source_backend: source_backend.to_string(),
            entries: summary.entries,
            data_bytes: summary.data_bytes,
            data_sha256: summary.sha256_hex(),
            consistent,
            compression: compression.name().to_string(),
            key_prefix: Some(Vec::new()),
        }
    }

    /// The manifest, recording that the checkpoint was taken under the key prefix
    /// `prefix` ([`Manifest::new`] records the whole namespace: an empty prefix).
    pub fn with_key_prefix(mut self, prefix: &[u8]) -> Self {
        self.key_prefix = Some(prefix.to_vec());
        self
    }

    /// The manifest as stored: pretty JSON, for people reading the directory.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        self.check()?;
        let mut json = serde_json::to_vec_pretty(self).map_err(|e| {
            StateError::invalid_input("the manifest cannot be written as JSON").with_source(e)
        })?;
        json.push(b'\n');
        Ok(json)
    }

    /// Reads and checks the manifest stored as `name` (for messages) for checkpoint `id`:
    /// `Corrupt` naming `name` if it is not JSON, is of a newer format, is for another id,
    /// or has a field that cannot be right.
    pub fn from_json(name: &str, id: Option<CheckpointId>, json: &[u8]) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_slice(json).map_err(|e| {
            StateError::corrupt(format!(
                "checkpoint manifest `{name}` is not a valid manifest: {e}"
            ))
        })?;
        if let Some(id) = id
            && manifest.id != id
        {
            return Err(StateError::corrupt(format!(
                "checkpoint manifest `{name}` is for checkpoint {}, not {id}",
                manifest.id
            )));
        }
        manifest.check().map_err(|e| {
            StateError::corrupt(format!("checkpoint manifest `{name}`: {}", e.message()))
        })?;
        Ok(manifest)
    }

    /// Whether the file's summary, after decoding, is what this manifest promised.
    pub fn matches(&self, summary: &Summary) -> bool {
        self.entries == summary.entries
            && self.data_bytes == summary.data_bytes
            && self.data_sha256 == summary.sha256_hex()
    }

    /// The compression named in the manifest.
    pub fn compression(&self) -> Result<Compression> {
        Compression::from_name(&self.compression)
    }

    fn check(&self) -> Result<()> {
        if self.format_version > FORMAT_VERSION {
            return Err(StateError::corrupt(format!(
                "written by a newer version of the checkpoint format (version {}; this build \
                 reads versions up to {FORMAT_VERSION}): upgrade to read it",
                self.format_version
            )));
        }
        if self.format_version == 0 {
            return Err(StateError::corrupt("format_version 0 does not exist"));
        }
        let hex_ok = self.data_sha256.len() == 64
            && self
                .data_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex_ok {
            return Err(StateError::corrupt(
                "data_sha256 is not 64 lower-case hex digits",
            ));
        }
        if Compression::from_name(&self.compression).is_err() {
            return Err(StateError::corrupt(format!(
                "unknown compression `{}`",
                self.compression
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_token_then_seq_as_values_and_as_text() {
        let ids = [
            CheckpointId { token: 1, seq: 9 },
            CheckpointId { token: 2, seq: 0 },
            CheckpointId { token: 2, seq: 10 },
            CheckpointId {
                token: u64::MAX,
                seq: 1,
            },
        ];
        for pair in ids.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_string() < pair[1].to_string());
        }
        for id in ids {
            assert_eq!(id.to_string().parse::<CheckpointId>().ok(), Some(id));
        }
    }

    #[test]
    fn only_canonical_ids_parse() {
        for bad in [
            "",
            "-",
            "1-2",
            "00000000000000000001-000000000a",
            "+0000000000000000001-0000000002",
            "00000000000000000001-0000000002-",
            "00000000000000000001_0000000002",
            "99999999999999999999-0000000000",
        ] {
            assert!(bad.parse::<CheckpointId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_manifest_round_trips_and_is_checked() {
        let id = CheckpointId { token: 3, seq: 1 };
        let summary = Summary {
            entries: 2,
            data_bytes: 10,
            sha256: [0xab; 32],
        };
        let manifest = Manifest::new(id, &summary, Compression::Lz4, "memory", true);
        let json = manifest.to_json().ok().unwrap_or_default();
        let back = Manifest::from_json("m", Some(id), &json).ok();
        assert_eq!(back.as_ref(), Some(&manifest));
        assert!(manifest.matches(&summary));
        assert_eq!(manifest.key_prefix.as_deref(), Some(&b""[..]));

        // A prefix of any bytes round trips, as hex.
        let prefixed = manifest.clone().with_key_prefix(b"orders:\xff\x00");
        let json = prefixed.to_json().ok().unwrap_or_default();
        let text = String::from_utf8_lossy(&json).into_owned();
        assert!(
            text.contains("\"key_prefix_hex\": \"6f72646572733aff00\""),
            "{text}"
        );
        let back = Manifest::from_json("m", Some(id), &json).ok();
        assert_eq!(back.as_ref(), Some(&prefixed));

        // A manifest written before the field existed reads back with the prefix unknown.
        let mut old: serde_json::Value = serde_json::from_slice(&json).unwrap_or_default();
        if let Some(fields) = old.as_object_mut() {
            fields.remove("key_prefix_hex");
        }
        let old = serde_json::to_vec(&old).unwrap_or_default();
        let back = Manifest::from_json("old.json", Some(id), &old).ok();
        assert_eq!(back.map(|m| m.key_prefix), Some(None));
        for bad in ["\"zz\"", "\"ABCD\"", "\"abc\""] {
            let text = text.replace("\"6f72646572733aff00\"", bad);
            let err = Manifest::from_json("b.json", Some(id), text.as_bytes()).err();
            assert!(
                err.is_some_and(|e| e.message().contains("key_prefix_hex")),
                "{bad}"
            );
        }

        let other = CheckpointId { token: 3, seq: 2 };
        let err = Manifest::from_json("m.json", Some(other), &json).err();
        assert!(err.is_some_and(|e| e.message().contains("m.json")));

        let mut future = manifest.clone();
        future.format_version = FORMAT_VERSION + 1;
        let json = serde_json::to_vec(&future).unwrap_or_default();
        let err = Manifest::from_json("f.json", Some(id), &json).err();
        assert!(err.is_some_and(|e| e.message().contains("newer version")));
    }
}
