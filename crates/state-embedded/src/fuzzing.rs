//! The crate's private record codec, reachable for `cargo fuzz` targets and property tests
//! only: not part of the API, hidden from the docs, and free to change in any release.

use state_core::Result;

/// A stored record's parts: absolute expiry (ms since the epoch), metadata, value.
pub type Parts<'a> = (Option<u64>, Option<&'a [u8]>, &'a [u8]);

/// Decodes a stored record; anything malformed is a `Corrupt` error.
pub fn decode_record(bytes: &[u8]) -> Result<Parts<'_>> {
    let record = crate::record::Record::decode(bytes)?;
    Ok((record.expires_ms, record.metadata, record.value))
}

/// The record's metadata parsed as JSON (`Corrupt` if it is not JSON).
pub fn decode_metadata(bytes: &[u8]) -> Result<Option<serde_json::Value>> {
    crate::record::Record::decode(bytes)?.metadata_json()
}

/// Encodes a record as the backend stores it.
pub fn encode_record(
    expires_ms: Option<u64>,
    metadata: Option<&[u8]>,
    value: &[u8],
) -> Result<Vec<u8>> {
    crate::record::encode(expires_ms, metadata, value)
}

/// Only the expiry of a stored record, as reads and the sweep check it.
pub fn expiry_of(bytes: &[u8]) -> Result<Option<u64>> {
    crate::record::expiry_of(bytes)
}

/// An expiry index key: `expires_ms` then the full key.
pub fn expiry_key(expires_ms: u64, full_key: &[u8]) -> Vec<u8> {
    crate::record::expiry_key(expires_ms, full_key)
}

/// Splits an expiry index key into its expiry and full key.
pub fn split_expiry_key(index_key: &[u8]) -> Result<(u64, &[u8])> {
    crate::record::split_expiry_key(index_key)
}

/// The first key after every key that starts with `prefix` (`None`: unbounded).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    crate::record::prefix_end(prefix)
}
