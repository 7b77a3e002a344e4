//! A million keys stream through encode → a directory → decode with memory that does not
//! grow with the number of keys (its own test binary, so its peak RSS is its own).

use bytes::Bytes;
use state_checkpoint::{
    CheckpointId, CheckpointStore, Compression, DirStore, Manifest, decode_with_summary, encode,
};
use state_core::{Entry, stream};

const KEYS: u64 = 1_000_000;
const VALUE_LEN: usize = 64;
/// Far below the ~80 MiB of entries: a checkpoint collected anywhere would exceed it.
const MAX_GROWTH_KIB: u64 = 40 * 1024;

/// 64 bytes that do not compress, different for every key.
fn value(i: u64) -> Bytes {
    let mut state = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(VALUE_LEN);
    while out.len() < VALUE_LEN {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    Bytes::from(out)
}

fn entry(i: u64) -> Entry {
    Entry::new(format!("key-{i:08}"), value(i))
}

/// The peak resident set of this process so far, in KiB (Linux's `VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmHWM line")
}

#[tokio::test(flavor = "current_thread")]
async fn a_million_keys_stream_through_in_flat_memory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = DirStore::open(tmp.path()).expect("open");
    let id = CheckpointId { token: 1, seq: 1 };
    let baseline = peak_rss_kib();

    let entries = stream::iter((0..KEYS).map(|i| Ok(entry(i))));
    let (chunks, summary) = encode(entries, Compression::Lz4);
    let written = store.write_data(id, chunks).await.expect("write");
    let summary = summary.get().expect("summary");
    assert_eq!(summary.entries, KEYS);
    assert!(
        written > 60 * 1024 * 1024,
        "{written} bytes: the values hardly compress"
    );
    let manifest = Manifest::new(id, &summary, Compression::Lz4, "generated", true);
    assert!(store.commit(&manifest).await.expect("commit"));

    let chunks = store.read_data(id).await.expect("read");
    let (mut decoded, check) = decode_with_summary("million.data", chunks);
    let mut next = 0u64;
    while let Some(item) = stream::next(&mut decoded).await {
        let got = item.expect("a valid entry");
        assert!(got == entry(next), "entry {next}");
        next += 1;
    }
    assert_eq!(next, KEYS);
    assert!(manifest.matches(&check.get().expect("summary")));

    let growth = peak_rss_kib().saturating_sub(baseline);
    assert!(
        growth < MAX_GROWTH_KIB,
        "peak memory grew by {growth} KiB for {written} bytes of checkpoint"
    );
}
