//! The file format: round trips through a real directory, and every kind of damaged file
//! is a `Corrupt` error naming the file.

mod common;

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use common::{assert_corrupt, decode_vec, encode_vec, many_entries, sample_entries};
use sha2::{Digest, Sha256};
use state_checkpoint::format::{Encoder, FRAME_TARGET, MAGIC};
use state_checkpoint::{
    CheckpointId, CheckpointStore, Compression, DirStore, FORMAT_VERSION, Manifest, decode,
    decode_with_summary, encode,
};
use state_core::{Entry, ErrorKind, StateError, stream};

const BOTH: [Compression; 2] = [Compression::None, Compression::Lz4];

/// encode → DirStore::write_data → commit → manifests → read_data → decode, for entries of
/// every shape and both compressions.
#[tokio::test]
async fn entries_round_trip_through_a_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(tmp.path()).expect("open");
    let entries = sample_entries();
    for (seq, compression) in BOTH.into_iter().enumerate() {
        let id = CheckpointId {
            token: 9,
            seq: seq as u64,
        };
        let (chunks, summary) = encode(
            stream::iter(entries.clone().into_iter().map(Ok)),
            compression,
        );
        let written = store.write_data(id, chunks).await.expect("write");
        let summary = summary.get().expect("summary after the stream ended");
        assert_eq!(summary.entries, entries.len() as u64);
        let on_disk = std::fs::read(tmp.path().join(format!("{id}.data"))).expect("data file");
        assert_eq!(written, on_disk.len() as u64);
        // The manifest's hash is what `sha256sum` prints for the data file.
        let whole: [u8; 32] = Sha256::digest(&on_disk).into();
        assert_eq!(summary.sha256, whole);

        let manifest = Manifest::new(id, &summary, compression, "memory", true);
        assert!(store.commit(&manifest).await.expect("commit"));
        let listing = store.manifests().await.expect("list");
        assert_eq!(listing.latest(), Some(&manifest));

        let chunks = store.read_data(id).await.expect("read");
        let (decoded, check) = decode_with_summary(&format!("{id}.data"), chunks);
        let back = stream::try_collect(decoded).await.expect("decode");
        assert_eq!(back, entries);
        assert!(manifest.matches(&check.get().expect("summary")));
    }
    // Compression made the compressible large value smaller.
    let sizes: Vec<u64> = (0..2)
        .map(|seq| {
            let id = CheckpointId { token: 9, seq };
            std::fs::metadata(tmp.path().join(format!("{id}.data")))
                .map(|m| m.len())
                .unwrap_or_default()
        })
        .collect();
    assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
}

#[test]
fn frames_are_cut_near_the_target_and_any_chunking_decodes() {
    let entries = many_entries(60_000);
    for compression in BOTH {
        let (file, summary) = encode_vec(&entries, compression);
        assert!(
            summary.data_bytes > 2 * FRAME_TARGET as u64,
            "several frames"
        );
        for chunk in [1 << 20, 4096, 7] {
            let (back, end) = decode_vec("many.data", &file, chunk);
            assert_eq!(end.ok(), Some(summary));
            assert!(back == entries, "chunks of {chunk}");
        }
    }
}

/// The most compressible frames (zeros) stay within the format's expansion bound.
#[test]
fn highly_compressible_frames_decode() {
    let mut entries = vec![Entry::new("zeros", vec![0u8; 5 * 1024 * 1024])];
    entries.extend((0..200_000).map(|_| Entry::new("same", "same")));
    let (file, summary) = encode_vec(&entries, Compression::Lz4);
    assert!(file.len() < 200_000, "{} bytes", file.len());
    let (back, end) = decode_vec("zeros.data", &file, 1 << 16);
    assert_eq!(end.ok(), Some(summary));
    assert!(back == entries);
}

#[test]
fn an_empty_checkpoint_is_a_valid_file() {
    let (file, summary) = encode_vec(&[], Compression::Lz4);
    assert_eq!((summary.entries, summary.data_bytes), (0, 0));
    assert_eq!(file.len(), 16 + 49, "header and footer");
    let (back, end) = decode_vec("empty.data", &file, 3);
    assert!(back.is_empty());
    assert_eq!(end.ok(), Some(summary));
}

#[test]
fn a_foreign_file_is_corrupt_naming_the_file() {
    for foreign in [
        &b"{\"entries\": []}"[..],
        b"PK\x03\x04 a zip file, say",
        &[0u8; 4096][..], // what a crash leaves after a rename without fsync
        b"\x89STCKP",     // a prefix of the magic, then nothing
    ] {
        let (back, end) = decode_vec("/var/ckpt/x.data", foreign, 5);
        assert!(back.is_empty());
        let what = if foreign.len() < MAGIC.len() {
            "truncated"
        } else {
            "not a checkpoint"
        };
        assert_corrupt(end, "/var/ckpt/x.data", what);
    }
    let (_, end) = decode_vec("nothing.data", b"", 1);
    assert_corrupt(end, "nothing.data", "empty");
}

#[test]
fn a_future_version_is_corrupt_and_says_so() {
    let (mut file, _) = encode_vec(&sample_entries()[..3], Compression::Lz4);
    file[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let (back, end) = decode_vec("future.data", &file, 1 << 16);
    assert!(back.is_empty());
    let err = assert_corrupt(end, "future.data", "newer version");
    assert!(err.to_string().contains("version 2"), "{err}");
    // Known from the first 10 bytes, whatever the rest.
    let (_, end) = decode_vec("future.data", &file[..10], 1);
    assert_corrupt(end, "future.data", "newer version");
}

#[test]
fn trailing_bytes_are_corrupt() {
    let (mut file, _) = encode_vec(&sample_entries()[..2], Compression::None);
    file.push(0);
    let (_, end) = decode_vec("trailing.data", &file, 64);
    assert_corrupt(end, "trailing.data", "trailing bytes");
}

/// Every prefix of a valid file is `Corrupt`, never a shorter but "valid" checkpoint.
#[test]
fn every_truncation_is_corrupt() {
    let mut entries = many_entries(40);
    entries.extend(sample_entries().into_iter().take(7));
    for compression in BOTH {
        let (file, summary) = encode_vec(&entries, compression);
        for len in 0..file.len() {
            let (back, end) = decode_vec("cut.data", &file[..len], 977);
            assert!(back.len() <= entries.len());
            assert!(back[..] == entries[..back.len()], "a prefix of the entries");
            let err = end.expect_err("a truncated file is an error");
            assert_eq!(err.kind(), ErrorKind::Corrupt, "length {len}: {err}");
            assert!(err.to_string().contains("cut.data"), "{err}");
        }
        assert_eq!(decode_vec("cut.data", &file, 977).1.ok(), Some(summary));
    }
}

/// Every single-bit flip of a valid file is caught: a checksum, the header or the whole-file
/// hash. Entries read before the damaged frame are right; the stream ends in `Corrupt`.
#[test]
fn every_bit_flip_is_corrupt() {
    let mut entries = many_entries(12);
    entries.push(Entry::new("m", "v").with_metadata(serde_json::json!({"a": [1, 2]})));
    entries.push(Entry::new("t", "v").with_expiry(UNIX_EPOCH + Duration::from_millis(5)));
    for compression in BOTH {
        let (file, _) = encode_vec(&entries, compression);
        for bit in 0..file.len() * 8 {
            let mut bad = file.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let (back, end) = decode_vec("flip.data", &bad, 1 << 16);
            assert!(
                back[..] == entries[..back.len()],
                "bit {bit}: a wrong entry"
            );
            let err = end.expect_err("a flipped bit is an error");
            assert_eq!(err.kind(), ErrorKind::Corrupt, "bit {bit}: {err}");
            assert!(err.to_string().contains("flip.data"), "{err}");
        }
    }
}

#[test]
fn damage_is_reported_where_it_is() {
    let entries = many_entries(50_000);
    let (file, _) = encode_vec(&entries, Compression::Lz4);
    // A byte in the middle of the second frame's payload.
    let mut bad = file.clone();
    let second = second_frame_offset(&file);
    bad[second + 21 + 100] ^= 0x40;
    let (back, end) = decode_vec("mid.data", &bad, 1 << 16);
    // Caught at the damaged frame: all of frame 1's entries, none of frame 2's.
    let first = u32::from_le_bytes([file[17], file[18], file[19], file[20]]) as usize;
    assert_eq!(back.len(), first);
    assert!(back[..] == entries[..first]);
    assert_corrupt(end, "mid.data", "checksum mismatch in frame 2");
    // The footer's hash field itself.
    let mut bad = file.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let (back, end) = decode_vec("foot.data", &bad, 1 << 16);
    assert_eq!(back.len(), entries.len());
    assert_corrupt(end, "foot.data", "SHA-256");
}

/// A frame header whose checksum is valid but whose length is absurd is refused before
/// anything is allocated for it.
#[test]
fn a_forged_huge_frame_length_is_refused() {
    let (file, _) = encode_vec(&many_entries(3), Compression::None);
    let mut forged = file[..16].to_vec();
    let mut header = vec![0x01];
    header.extend_from_slice(&1u32.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    forged.extend_from_slice(&header);
    let (_, end) = decode_vec("forged.data", &forged, 64);
    assert_corrupt(end, "forged.data", "frame 1");
}

#[tokio::test]
async fn errors_from_the_input_pass_through_unchanged() {
    let failing = stream::iter(vec![
        Ok(Entry::new("a", "1")),
        Err(StateError::new(ErrorKind::Connection, "lost the server")),
    ]);
    let (chunks, summary) = encode(failing, Compression::Lz4);
    let err = stream::try_collect(chunks)
        .await
        .expect_err("the scan failed");
    assert_eq!(err.kind(), ErrorKind::Connection);
    assert!(summary.get().is_none(), "no summary for a failed file");

    let (file, _) = encode_vec(&many_entries(5), Compression::None);
    let chunks = stream::iter(vec![
        Ok(Bytes::copy_from_slice(&file[..20])),
        Err(StateError::new(ErrorKind::Backend, "disk went away")),
    ]);
    let err = stream::try_collect(decode("x.data", chunks))
        .await
        .expect_err("io failed");
    assert_eq!(err.kind(), ErrorKind::Backend);
}

#[test]
fn an_expiry_past_the_formats_range_is_invalid_input() {
    let far = UNIX_EPOCH
        .checked_add(Duration::from_secs(i64::MAX as u64 / 2))
        .expect("this platform's clock holds a time past the format's range");
    let mut encoder = Encoder::new(Compression::None);
    let err = encoder
        .push(&Entry::new("k", "v").with_expiry(far))
        .expect_err("too far");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // The encoder goes on without that entry.
    assert!(encoder.push(&Entry::new("k", "v")).is_ok());
    let (_, summary) = encoder.finish().expect("finish");
    assert_eq!(summary.entries, 1);
}

/// Sub-millisecond expiries round down: a round trip never extends a lifetime.
#[test]
fn expiry_keeps_milliseconds_and_rounds_down() {
    let at = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_999_999);
    let (file, _) = encode_vec(&[Entry::new("k", "v").with_expiry(at)], Compression::None);
    let (back, end) = decode_vec("ms.data", &file, 100);
    assert!(end.is_ok());
    assert_eq!(
        back[0].expires_at,
        Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
    );
}

fn second_frame_offset(file: &[u8]) -> usize {
    let stored = u32::from_le_bytes([file[16 + 9], file[16 + 10], file[16 + 11], file[16 + 12]]);
    16 + 21 + stored as usize
}
