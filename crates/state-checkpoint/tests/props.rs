//! Property tests of the format: arbitrary entries round-trip; arbitrary, truncated or
//! damaged bytes never panic and never decode to a wrong checkpoint.

mod common;

use bytes::Bytes;
use common::{at_ms, decode_vec, encode_vec, wrap_frames};
use proptest::prelude::*;
use state_checkpoint::Compression;
use state_checkpoint::format::{Decoder, MAGIC};
use state_core::{Entry, ErrorKind};

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        // Finite floats only: JSON has no NaN.
        (-1e300f64..1e300).prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::option::of(0u64..=u64::from(u32::MAX) * 1000),
        prop::option::of(json()),
    )
        .prop_map(|(key, value, expiry, metadata)| Entry {
            key: Bytes::from(key),
            value: Bytes::from(value),
            expires_at: expiry.map(at_ms),
            metadata,
        })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(128)
}

fn compression() -> impl Strategy<Value = Compression> {
    prop_oneof![Just(Compression::None), Just(Compression::Lz4)]
}

proptest! {
    // 128 cases unless PROPTEST_CASES asks for more (a longer run than CI's).
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_entries_round_trip(
        entries in prop::collection::vec(entry(), 0..40),
        compression in compression(),
        chunk in 1usize..5000,
    ) {
        let (file, summary) = encode_vec(&entries, compression);
        let (back, end) = decode_vec("p.data", &file, chunk);
        prop_assert_eq!(end.ok(), Some(summary));
        prop_assert_eq!(back, entries);
    }

    /// Arbitrary bytes: never a panic; an error (Corrupt) unless they happen to be a valid
    /// empty checkpoint, which random bytes are not.
    #[test]
    fn arbitrary_bytes_are_corrupt(bytes in prop::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..300) {
        let (back, end) = decode_vec("junk.data", &bytes, chunk);
        prop_assert!(back.is_empty());
        let err = end.expect_err("random bytes are not a checkpoint");
        prop_assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    /// Bytes behind a valid header get past the magic and version checks, into frames.
    #[test]
    fn arbitrary_bytes_after_a_valid_header_are_corrupt(
        body in prop::collection::vec(any::<u8>(), 0..2000),
        compression in compression(),
    ) {
        let (valid, _) = encode_vec(&[], compression);
        let mut file = valid[..16].to_vec();
        file.extend_from_slice(&body);
        let (_, end) = decode_vec("junk.data", &file, 64);
        let err = end.expect_err("random frames are not a checkpoint");
        prop_assert_eq!(err.kind(), ErrorKind::Corrupt);
    }

    /// Arbitrary payloads behind valid checksums and hash, so that entry parsing and LZ4
    /// decompression see junk (raw bytes rarely get past the checksums): never a panic;
    /// either an error or exactly the entries the frames declare.
    #[test]
    fn arbitrary_payloads_behind_valid_checksums_never_panic(
        lz4 in any::<bool>(),
        frames in prop::collection::vec(
            (1u8..=2, 1u32..40, prop::collection::vec(any::<u8>(), 0..600), 1u32..4),
            0..4,
        ),
    ) {
        let frames: Vec<(u8, u32, u32, Vec<u8>)> = frames
            .into_iter()
            .map(|(kind, entries, payload, stretch)| {
                let raw_len = if kind == 2 { payload.len() as u32 * stretch } else { payload.len() as u32 };
                (kind, entries, raw_len, payload)
            })
            .collect();
        let (file, declared) = wrap_frames(lz4, &frames);
        let (back, end) = decode_vec("frames.data", &file, 97);
        match end {
            Ok(summary) => {
                prop_assert_eq!(summary.entries, declared);
                prop_assert_eq!(back.len() as u64, declared);
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Corrupt),
        }
    }

    /// Hand-built frames of valid entries decode: the README's layout is the format.
    #[test]
    fn files_built_from_the_readme_layout_decode(
        entries in prop::collection::vec(entry(), 1..10),
    ) {
        let (reference, _) = encode_vec(&entries, Compression::None);
        // The single raw frame's payload, taken from the reference file.
        let payload = reference[16 + 21..reference.len() - 49].to_vec();
        let frames = [(1u8, entries.len() as u32, payload.len() as u32, payload)];
        let (file, _) = wrap_frames(false, &frames);
        prop_assert_eq!(&file, &reference);
        let (back, end) = decode_vec("readme.data", &file, 50);
        prop_assert!(end.is_ok());
        prop_assert_eq!(back, entries);
    }

    /// Truncation anywhere, and damage anywhere (bits flipped, bytes overwritten): never a
    /// panic, and never a complete decode that differs from what was written.
    #[test]
    fn damaged_files_never_decode_to_something_else(
        entries in prop::collection::vec(entry(), 1..20),
        compression in compression(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (file, summary) = encode_vec(&entries, compression);
        let len = cut.index(file.len());
        let (back, end) = decode_vec("cut.data", &file[..len], 333);
        prop_assert!(back[..] == entries[..back.len()]);
        prop_assert_eq!(end.map_err(|e| e.kind()).err(), Some(ErrorKind::Corrupt));

        let mut bad = file.clone();
        for (at, xor) in &damage {
            let at = at.index(bad.len());
            bad[at] ^= (*xor).max(1);
        }
        let (back, end) = decode_vec("bad.data", &bad, 333);
        match end {
            // Damage that cancelled out (the same bit flipped twice) is the same file.
            Ok(got) => {
                prop_assert_eq!(&bad, &file);
                prop_assert_eq!(got, summary);
                prop_assert_eq!(back, entries);
            }
            Err(e) => prop_assert_eq!(e.kind(), ErrorKind::Corrupt),
        }
    }
}

/// The decoder's every method survives any order of calls on junk, including after an
/// error (it keeps answering the same error).
#[test]
fn a_failed_decoder_keeps_failing() {
    let mut decoder = Decoder::new("x");
    decoder.feed(b"not a checkpoint");
    assert!(decoder.next_entry().is_err());
    assert!(decoder.next_entry().is_err());
    decoder.feed(&MAGIC);
    assert!(decoder.finish().is_err());
    assert!(decoder.summary().is_none());
}
