//! What a run does: the workloads, the shape (ops, concurrency, sizes), how calls are split
//! between workers, and which keys each worker touches.
//!
//! Both `statectl bench` and `bench-ref` take their options from [`ShapeArgs`] and their key
//! sequence from [`Worker`], so the two sides of a ratio do exactly the same work.

use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};

/// A workload as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Point writes of random keys.
    Put,
    /// Point reads of random keys of a filled keyspace.
    Get,
    /// 90% point reads, 10% point writes, over a filled keyspace.
    Mixed,
    /// Writes of `--batch` entries per call.
    BatchPut,
    /// Reads of `--batch` keys per call, over a filled keyspace.
    BatchGet,
    /// Compare-and-swap of random keys of a filled keyspace: each worker owns a share of the
    /// keys and flips them between two values, so every call succeeds and writes.
    Cas,
    /// Every operation above, one after the other.
    All,
}

impl Workload {
    /// The operations this workload measures, in the order they run.
    pub fn ops(self) -> Vec<Op> {
        match self {
            Workload::Put => vec![Op::Put],
            Workload::Get => vec![Op::Get],
            Workload::Mixed => vec![Op::Mixed],
            Workload::BatchPut => vec![Op::BatchPut],
            Workload::BatchGet => vec![Op::BatchGet],
            Workload::Cas => vec![Op::Cas],
            Workload::All => Op::ALL.to_vec(),
        }
    }
}

/// One measured operation: one row of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `put`.
    Put,
    /// `get`.
    Get,
    /// 90% `get`, 10% `put`.
    Mixed,
    /// `batch_put` of `batch` entries.
    BatchPut,
    /// `batch_get` of `batch` keys.
    BatchGet,
    /// `compare_and_swap`.
    Cas,
}

impl Op {
    /// Every operation, in the order `--workload all` runs them: writes first, then the
    /// keyspace is filled once for the reads.
    pub const ALL: [Op; 6] = [
        Op::Put,
        Op::BatchPut,
        Op::Get,
        Op::BatchGet,
        Op::Mixed,
        Op::Cas,
    ];

    /// The name used in tables and JSON (`batch-put`, …).
    pub fn name(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Mixed => "mixed",
            Op::BatchPut => "batch-put",
            Op::BatchGet => "batch-get",
            Op::Cas => "cas",
        }
    }

    /// The operation named `name`, if any.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Whether one call handles `batch` keys.
    pub fn is_batch(self) -> bool {
        matches!(self, Op::BatchPut | Op::BatchGet)
    }

    /// Whether the keyspace must be filled before this operation runs.
    pub fn needs_fill(self) -> bool {
        matches!(self, Op::Get | Op::BatchGet | Op::Mixed | Op::Cas)
    }
}

/// The benchmark options shared by `statectl bench` and `bench-ref`.
#[derive(Debug, Clone, Args)]
pub struct ShapeArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Workload::All)]
    pub workload: Workload,
    /// Operations per measured op; for batch workloads, keys (entries), so calls = ops / batch.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: u64,
    /// Concurrent workers sharing one backend.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub concurrency: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(0..=(64 << 20)))]
    pub value_size: u64,
    /// How many distinct keys the operations pick from.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub keyspace: u64,
    /// Keys per call of the batch workloads.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch: u64,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

impl ShapeArgs {
    /// The shape these options describe.
    pub fn shape(&self) -> Shape {
        Shape {
            ops: self.ops,
            concurrency: self.concurrency,
            value_size: self.value_size,
            keyspace: self.keyspace,
            batch: self.batch,
        }
    }
}

/// The size of a run: the same numbers on both sides of a ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Operations (keys, for batch workloads) per measured op.
    pub ops: u64,
    /// Concurrent workers.
    pub concurrency: u64,
    /// Value size in bytes.
    pub value_size: u64,
    /// Distinct keys.
    pub keyspace: u64,
    /// Keys per batch call.
    pub batch: u64,
}

/// How many entries one fill call writes (the fill is not measured).
pub const FILL_CHUNK: u64 = 1_000;

impl Shape {
    /// Keys per call of `op`: `batch` (at most `ops`) for batch ops, else 1.
    pub fn keys_per_call(&self, op: Op) -> u64 {
        if op.is_batch() {
            self.batch.min(self.ops).max(1)
        } else {
            1
        }
    }

    /// How many calls `op` makes in all (whole batches only).
    pub fn calls(&self, op: Op) -> u64 {
        self.ops / self.keys_per_call(op)
    }

    /// The workers for `op`: `concurrency` of them (for `cas`, at most one per key), the
    /// calls split as evenly as possible.
    pub fn workers(&self, op: Op) -> Vec<Worker> {
        let calls = self.calls(op);
        let n = match op {
            Op::Cas => self.concurrency.min(self.keyspace),
            _ => self.concurrency,
        }
        .max(1);
        (0..n)
            .map(|index| Worker {
                index,
                calls: calls / n + u64::from(index < calls % n),
                keys_per_call: self.keys_per_call(op),
                picker: KeyPicker::new(self.keyspace, seed(op, index)),
                cas: (op == Op::Cas).then(|| CasKeys::new(index, n, self.keyspace)),
            })
            .collect()
    }

    /// The index ranges the fill writes, one call each.
    pub fn fill_chunks(&self) -> impl Iterator<Item = Range<u64>> + use<> {
        let keyspace = self.keyspace;
        (0..keyspace.div_ceil(FILL_CHUNK))
            .map(move |c| c * FILL_CHUNK..((c + 1) * FILL_CHUNK).min(keyspace))
    }

    /// The value every write stores (and the fill).
    pub fn value(&self) -> Vec<u8> {
        (0..self.value_size)
            .map(|i| b'a' + (i % 26) as u8)
            .collect()
    }

    /// The value `cas` swaps in and out: [`value`](Self::value) in upper case.
    pub fn alt_value(&self) -> Vec<u8> {
        self.value().to_ascii_uppercase()
    }
}

/// One worker's share of an op.
#[derive(Debug, Clone)]
pub struct Worker {
    /// 0-based worker number.
    pub index: u64,
    /// How many calls this worker makes.
    pub calls: u64,
    /// Keys per call.
    pub keys_per_call: u64,
    /// Where this worker's keys come from.
    pub picker: KeyPicker,
    /// For `cas`: the keys this worker owns and which of them hold the alternate value.
    pub cas: Option<CasKeys>,
}

impl Worker {
    /// For `cas`: the next key index and whether it now holds the alternate value (the call
    /// swaps it to the other one). `None` for other ops.
    pub fn next_cas(&mut self) -> Option<(u64, bool)> {
        let cas = self.cas.as_mut()?;
        Some(cas.next(&mut self.picker))
    }

    /// For `cas`, after a call whose outcome is unknown: records what key `index` was
    /// found to hold (`flipped`: the alternate value), so the next swap expects that.
    pub fn resync_cas(&mut self, index: u64, flipped: bool) {
        if let Some(cas) = self.cas.as_mut() {
            cas.set(index, flipped);
        }
    }
}

/// The keys `index, index + stride, …` of one `cas` worker and one bit per key: whether it
/// holds the alternate value. No other worker touches them, so every swap succeeds.
#[derive(Debug, Clone)]
pub struct CasKeys {
    first: u64,
    stride: u64,
    count: u64,
    flipped: Vec<u64>,
}

impl CasKeys {
    fn new(first: u64, stride: u64, keyspace: u64) -> Self {
        let count = keyspace.saturating_sub(first).div_ceil(stride.max(1));
        CasKeys {
            first,
            stride: stride.max(1),
            count,
            flipped: vec![0; count.div_ceil(64) as usize],
        }
    }

    fn set(&mut self, index: u64, flipped: bool) {
        let Some(j) = index.checked_sub(self.first).map(|d| d / self.stride) else {
            return;
        };
        let (word, bit) = ((j / 64) as usize, 1u64 << (j % 64));
        if let Some(w) = self.flipped.get_mut(word) {
            if flipped {
                *w |= bit;
            } else {
                *w &= !bit;
            }
        }
    }

    fn next(&mut self, picker: &mut KeyPicker) -> (u64, bool) {
        let j = picker.next_u64() % self.count.max(1);
        let (word, bit) = ((j / 64) as usize, 1u64 << (j % 64));
        let was = match self.flipped.get_mut(word) {
            Some(w) => {
                let was = *w & bit != 0;
                *w ^= bit;
                was
            }
            None => false,
        };
        (self.first + j * self.stride, was)
    }
}

fn seed(op: Op, worker: u64) -> u64 {
    let op_index = Op::ALL.iter().position(|o| *o == op).unwrap_or(0) as u64;
    (op_index << 32) ^ worker ^ 0x5EED_0FBE_4C00
}

/// A deterministic pseudo-random key picker (splitmix64): the same seed gives the same keys
/// on both sides, and it keeps no per-key state, so memory stays bounded.
#[derive(Debug, Clone)]
pub struct KeyPicker {
    state: u64,
    keyspace: u64,
}

impl KeyPicker {
    /// A picker over `0..keyspace`.
    pub fn new(keyspace: u64, seed: u64) -> Self {
        KeyPicker {
            state: seed,
            keyspace: keyspace.max(1),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next key index.
    pub fn next_index(&mut self) -> u64 {
        self.next_u64() % self.keyspace
    }

    /// True `percent` times out of 100 (the put share of `mixed`).
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The share of `mixed` calls that are puts.
pub const MIXED_PUT_PERCENT: u64 = 10;

/// Writes `prefix` followed by the zero-padded index (`bench:…:0000000042`) into `buf`.
pub fn key_into(buf: &mut String, prefix: &str, index: u64) {
    buf.clear();
    buf.push_str(prefix);
    // Writing to a String cannot fail.
    let _ = write!(buf, "{index:010}");
}

/// The key of `index` under `prefix`.
pub fn key(prefix: &str, index: u64) -> String {
    let mut buf = String::with_capacity(prefix.len() + 10);
    key_into(&mut buf, prefix, index);
    buf
}

/// A prefix of the form `bench:XXXXXXXX:` that no other run is likely to use, so a run on a
/// shared server touches and cleans up only its own keys.
pub fn run_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut picker = KeyPicker::new(u64::MAX, nanos ^ u64::from(std::process::id()) << 32);
    format!("bench:{:08x}:", picker.next_u64() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(ops: u64, concurrency: u64, batch: u64) -> Shape {
        Shape {
            ops,
            concurrency,
            value_size: 8,
            keyspace: 1000,
            batch,
        }
    }

    #[test]
    fn calls_are_split_evenly_and_completely() {
        let s = shape(1003, 4, 100);
        let calls: Vec<u64> = s.workers(Op::Put).iter().map(|w| w.calls).collect();
        assert_eq!(calls, [251, 251, 251, 250]);
        let batches: Vec<u64> = s.workers(Op::BatchPut).iter().map(|w| w.calls).collect();
        assert_eq!(batches, [3, 3, 2, 2]);
        assert_eq!(s.keys_per_call(Op::BatchGet), 100);
        // Fewer ops than one batch: one smaller batch.
        assert_eq!(shape(10, 2, 100).calls(Op::BatchPut), 1);
        assert_eq!(shape(10, 2, 100).keys_per_call(Op::BatchPut), 10);
    }

    #[test]
    fn pickers_are_deterministic_and_in_range() {
        let mut a = shape(10, 2, 1).workers(Op::Get);
        let mut b = shape(10, 2, 1).workers(Op::Get);
        for _ in 0..1000 {
            let i = a[1].picker.next_index();
            assert!(i < 1000);
            assert_eq!(i, b[1].picker.next_index());
        }
        assert_ne!(a[0].picker.next_index(), a[1].picker.next_index());
    }

    #[test]
    fn keys_and_fill_cover_the_keyspace() {
        assert_eq!(key("bench:x:", 42), "bench:x:0000000042");
        let chunks: Vec<_> = Shape {
            keyspace: 2500,
            ..shape(1, 1, 1)
        }
        .fill_chunks()
        .collect();
        assert_eq!(chunks, [0..1000, 1000..2000, 2000..2500]);
        let p = run_prefix();
        assert!(
            p.starts_with("bench:") && p.ends_with(':') && p.len() == 15,
            "{p}"
        );
        assert_eq!(Op::from_name("batch-get"), Some(Op::BatchGet));
    }

    #[test]
    fn cas_workers_own_disjoint_keys_and_track_their_values() {
        let s = Shape {
            keyspace: 10,
            ..shape(100, 4, 1)
        };
        let mut workers = s.workers(Op::Cas);
        let mut flipped = [false; 10];
        for w in workers.iter_mut() {
            for _ in 0..w.calls {
                let Some((i, was)) = w.next_cas() else {
                    panic!("a cas worker without keys");
                };
                assert_eq!(i % 4, w.index, "worker {} got key {i}", w.index);
                assert_eq!(flipped[i as usize], was, "key {i}");
                flipped[i as usize] = !was;
            }
        }
        // More workers than keys: one worker per key.
        assert_eq!(shape(10, 16, 1).workers(Op::Cas).len(), 16);
        let tiny = Shape {
            keyspace: 3,
            ..shape(10, 16, 1)
        };
        assert_eq!(tiny.workers(Op::Cas).len(), 3);
        assert_eq!(s.alt_value(), b"ABCDEFGH");
    }
}
