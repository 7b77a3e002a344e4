//! Helpers shared by the test files: encode to bytes, decode from bytes, sample entries.
#![allow(dead_code)] // each test file uses some of them

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use state_checkpoint::format::{Decoder, Encoder};
use state_checkpoint::{Compression, Summary};
use state_core::{Entry, ErrorKind, Result, StateError};

/// The whole file for `entries`, through the synchronous encoder.
pub fn encode_vec(entries: &[Entry], compression: Compression) -> (Vec<u8>, Summary) {
    let mut encoder = Encoder::new(compression);
    let mut file = Vec::new();
    for entry in entries {
        if let Some(chunk) = encoder.push(entry).expect("encodable entry") {
            file.extend_from_slice(&chunk);
        }
    }
    let (tail, summary) = encoder.finish().expect("finish");
    file.extend_from_slice(&tail);
    (file, summary)
}

/// Decodes `file` fed `chunk` bytes at a time; every entry read before an error is kept.
pub fn decode_vec(name: &str, file: &[u8], chunk: usize) -> (Vec<Entry>, Result<Summary>) {
    let mut decoder = Decoder::new(name);
    let mut entries = Vec::new();
    for piece in file.chunks(chunk.max(1)) {
        decoder.feed(piece);
        loop {
            match decoder.next_entry() {
                Ok(Some(entry)) => entries.push(entry),
                Ok(None) => break,
                Err(e) => return (entries, Err(e)),
            }
        }
    }
    let end = decoder.finish();
    (entries, end)
}

/// Asserts `result` is a `Corrupt` error naming `name` and containing `what`.
pub fn assert_corrupt<T: std::fmt::Debug>(result: Result<T>, name: &str, what: &str) -> StateError {
    let err = result.expect_err("a Corrupt error");
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    let text = err.to_string();
    assert!(text.contains(name), "`{text}` does not name `{name}`");
    assert!(text.contains(what), "`{text}` does not say `{what}`");
    err
}

/// An expiry at a whole millisecond (the format's precision).
pub fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Entries of every shape: with and without expiry and metadata, empty values, binary
/// keys, a value larger than a frame.
pub fn sample_entries() -> Vec<Entry> {
    let large: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    vec![
        Entry::new("plain", "value"),
        Entry::new("empty-value", ""),
        Entry::new(vec![0u8, 0xff, 0x00, b'\n', 0x80], vec![0xffu8; 7]),
        Entry::new("ttl", "v").with_expiry(at_ms(4_102_444_800_123)),
        Entry::new("expired-long-ago", "v").with_expiry(at_ms(0)),
        Entry::new("meta", "v").with_metadata(serde_json::json!({
            "owner": "svc-a", "n": 3, "f": 1.5, "tags": ["x", "ü"], "none": null
        })),
        Entry::new("both", vec![1u8, 2, 3])
            .with_expiry(at_ms(1_700_000_000_000))
            .with_metadata(serde_json::json!("just a string")),
        Entry::new("large", Bytes::from(large)),
        Entry::new("after-large", "still here"),
    ]
}

/// `n` small entries, for files of several frames.
pub fn many_entries(n: usize) -> Vec<Entry> {
    (0..n)
        .map(|i| {
            Entry::new(
                format!("key-{i:08}"),
                format!("value of {i} ").repeat(i % 7),
            )
        })
        .collect()
}

/// A file built by hand from the README's layout, with correct checksums and hash around
/// arbitrary frame payloads: `(kind, entries, raw_len, stored payload)` per frame.
pub fn wrap_frames(lz4: bool, frames: &[(u8, u32, u32, Vec<u8>)]) -> (Vec<u8>, u64) {
    use sha2::{Digest, Sha256};
    let mut file = state_checkpoint::format::MAGIC.to_vec();
    file.extend_from_slice(&1u16.to_le_bytes());
    file.push(u8::from(lz4));
    file.push(0);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    let (mut entries, mut raw_total) = (0u64, 0u64);
    for (kind, count, raw_len, payload) in frames {
        let mut header = vec![*kind];
        header.extend_from_slice(&count.to_le_bytes());
        header.extend_from_slice(&raw_len.to_le_bytes());
        header.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        file.extend_from_slice(&header);
        file.extend_from_slice(payload);
        entries += u64::from(*count);
        raw_total += u64::from(*raw_len);
    }
    file.push(0);
    file.extend_from_slice(&entries.to_le_bytes());
    file.extend_from_slice(&raw_total.to_le_bytes());
    let hash: [u8; 32] = Sha256::digest(&file).into();
    file.extend_from_slice(&hash);
    (file, entries)
}
