//! Jepsen-style counts that need no search (RELIABILITY.md case 30): values read that no
//! one wrote, reads of values an acknowledged write had already replaced, and values back
//! after an acknowledged delete. Each is O(n log n): per key, operations sorted by invoke
//! time and suffix minima of their acknowledgement times.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::op::{Key, Op, OpId, OpKind, Outcome, Output, ValueId};
use super::record::{History, Record};

/// How many examples of each anomaly [`Anomalies::examples`] keeps.
const EXAMPLES: usize = 3;

/// Operations by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Succeeded.
    pub ok: usize,
    /// Failed without taking effect.
    pub failed: usize,
    /// Of unknown outcome (including never completed).
    pub unknown: usize,
}

impl Counts {
    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok(_) => self.ok += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Unknown => self.unknown += 1,
        }
    }

    /// All operations counted.
    pub fn total(&self) -> usize {
        self.ok + self.failed + self.unknown
    }
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (ok {}, failed {}, unknown {})",
            self.total(),
            self.ok,
            self.failed,
            self.unknown
        )
    }
}

/// What [`anomalies`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Anomalies {
    /// Successful reads that returned a value no operation wrote to that key (or one that
    /// does not decode), or whose only write was invoked after the read completed.
    /// Writes that failed without `outcome_unknown` do not count as writes.
    pub values_from_nowhere: usize,
    /// Successful reads of a value V while an acknowledged write of another value,
    /// invoked after V's write was acknowledged, had been acknowledged before the read
    /// was invoked: an acknowledged write that was lost, or a stale replica read.
    pub stale_reads: usize,
    /// The distinct acknowledged writes that some stale read shows were lost.
    pub lost_writes: usize,
    /// Successful reads of a value V while an acknowledged delete (delete, batch_delete,
    /// get_and_delete) of that key, invoked after V's write was acknowledged, had been
    /// acknowledged before the read was invoked: V is written once, so it came back.
    pub resurrections: usize,
    /// Every operation, by outcome.
    pub total: Counts,
    /// Operations by kind and outcome.
    pub by_kind: BTreeMap<OpKind, Counts>,
    /// A few examples of each anomaly, one line each.
    pub examples: Vec<String>,
}

impl Anomalies {
    /// Whether no value came from nowhere, no read was stale and nothing was resurrected.
    pub fn is_clean(&self) -> bool {
        self.values_from_nowhere == 0 && self.stale_reads == 0 && self.resurrections == 0
    }
}

impl fmt::Display for Anomalies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "operations: {}; values from nowhere: {}; stale reads: {} (lost writes: {}); \
             resurrections: {}",
            self.total,
            self.values_from_nowhere,
            self.stale_reads,
            self.lost_writes,
            self.resurrections
        )?;
        for (kind, counts) in &self.by_kind {
            writeln!(f, "  {kind:<18} {counts}")?;
        }
        for example in &self.examples {
            writeln!(f, "  {example}")?;
        }
        Ok(())
    }
}

/// A successful read of a value.
struct Read<'a> {
    record: &'a Record,
    key: Key,
    value: ValueId,
}

/// An acknowledged operation that replaced a key's value (a write of another value, or a
/// delete), by interval.
#[derive(Clone, Copy)]
struct Ack {
    invoke: u64,
    complete: u64,
    id: OpId,
}

/// Acknowledged operations of one key sorted by invoke time, with suffix minima of their
/// completion, so "some op invoked after t and acknowledged before u" is a binary search.
struct Index {
    by_invoke: Vec<Ack>,
    suffix_min: Vec<Ack>,
}

impl Index {
    fn new(mut acks: Vec<Ack>) -> Index {
        acks.sort_by_key(|a| (a.invoke, a.id));
        let mut suffix_min = acks.clone();
        for i in (0..suffix_min.len().saturating_sub(1)).rev() {
            if suffix_min[i + 1].complete < suffix_min[i].complete {
                suffix_min[i] = suffix_min[i + 1];
            }
        }
        Index {
            by_invoke: acks,
            suffix_min,
        }
    }

    /// An op invoked after `after` and acknowledged before `before`, if any.
    fn between(&self, after: u64, before: u64) -> Option<Ack> {
        let i = self.by_invoke.partition_point(|a| a.invoke <= after);
        self.suffix_min
            .get(i)
            .copied()
            .filter(|a| a.complete < before)
    }
}

/// The reads of a history, and for each key its writes of values and its deletes.
fn reads(history: &History) -> Vec<Read<'_>> {
    let mut reads = Vec::new();
    for r in history.records() {
        let (Outcome::Ok(output), Some(_)) = (&r.outcome, r.complete) else {
            continue;
        };
        match (&r.op, output) {
            (Op::Get { key } | Op::GetAndDelete { key }, Output::Value(Some(value))) => {
                reads.push(Read {
                    record: r,
                    key: *key,
                    value: *value,
                })
            }
            (Op::BatchGet { keys }, Output::Values(values)) => {
                for (key, value) in keys.iter().zip(values) {
                    if let Some(value) = value {
                        reads.push(Read {
                            record: r,
                            key: *key,
                            value: *value,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    reads
}

/// Whether `r` may have written its values: acknowledged as effective, of unknown outcome,
/// or a failed batch (possibly partly applied). Also whether the write was acknowledged.
fn write_status(r: &Record) -> Option<bool> {
    let acked = r.complete.is_some();
    match (&r.op, &r.outcome) {
        (_, Outcome::Unknown) => Some(false),
        (Op::BatchPut { .. }, Outcome::Failed) => Some(false),
        (Op::Put { .. } | Op::BatchPut { .. }, Outcome::Ok(_)) => Some(acked),
        (Op::Cas { .. } | Op::SetIfNotExists { .. }, Outcome::Ok(Output::Bool(true))) => {
            Some(acked)
        }
        _ => None,
    }
}

/// Counts the anomalies of `history` and its operations by kind and outcome.
pub fn anomalies(history: &History) -> Anomalies {
    let mut out = Anomalies::default();
    for r in history.records() {
        out.total.add(&r.outcome);
        out.by_kind.entry(r.op.kind()).or_default().add(&r.outcome);
    }
    // Per (key, value): the earliest invoke of a write, and its acknowledgement if any.
    let mut writes: HashMap<(Key, ValueId), (u64, Option<u64>, OpId)> = HashMap::new();
    let mut overwrites: BTreeMap<Key, Vec<Ack>> = BTreeMap::new();
    let mut deletes: BTreeMap<Key, Vec<Ack>> = BTreeMap::new();
    for r in history.records() {
        if let Some(acked) = write_status(r) {
            for (key, value) in r.op.writes() {
                let ack = if acked { r.complete } else { None };
                let slot = writes.entry((key, value)).or_insert((r.invoke, ack, r.id));
                slot.0 = slot.0.min(r.invoke);
                slot.1 = match (slot.1, ack) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if let Some(complete) = ack {
                    let a = Ack {
                        invoke: r.invoke,
                        complete,
                        id: r.id,
                    };
                    overwrites.entry(key).or_default().push(a);
                }
            }
        }
        if let (Outcome::Ok(_), Some(complete)) = (&r.outcome, r.complete) {
            let keys = match &r.op {
                Op::Delete { key } | Op::GetAndDelete { key } => vec![*key],
                Op::BatchDelete { keys } => keys.clone(),
                _ => Vec::new(),
            };
            for key in keys {
                let a = Ack {
                    invoke: r.invoke,
                    complete,
                    id: r.id,
                };
                deletes.entry(key).or_default().push(a);
            }
        }
    }
    let overwrites: BTreeMap<Key, Index> = overwrites
        .into_iter()
        .map(|(k, v)| (k, Index::new(v)))
        .collect();
    let deletes: BTreeMap<Key, Index> = deletes
        .into_iter()
        .map(|(k, v)| (k, Index::new(v)))
        .collect();
    let mut examples: [Vec<String>; 3] = Default::default();
    let mut note = |which: usize, line: String| {
        if examples[which].len() < EXAMPLES {
            examples[which].push(line);
        }
    };
    // Per key: (V's acknowledgement, read invoke) of every read of an acknowledged value.
    let mut witnesses: BTreeMap<Key, Vec<(u64, u64)>> = BTreeMap::new();
    for read in reads(history) {
        let (r, key, value) = (read.record, read.key, read.value);
        let read_end = r.complete.unwrap_or(u64::MAX);
        let Some(&(_, ack, writer)) = writes.get(&(key, value)).filter(|w| w.0 < read_end) else {
            out.values_from_nowhere += 1;
            note(
                0,
                format!("value from nowhere: {} {} -> {}", r.id, r.op, r.outcome),
            );
            continue;
        };
        let Some(acked) = ack else { continue };
        witnesses.entry(key).or_default().push((acked, r.invoke));
        let show = |d: Ack| {
            history
                .get(d.id)
                .map_or_else(|| d.id.to_string(), |d| format!("{} {}", d.id, d.op))
        };
        if let Some(d) = overwrites
            .get(&key)
            .and_then(|i| i.between(acked, r.invoke))
        {
            out.stale_reads += 1;
            note(
                1,
                format!(
                    "stale read: {} {} -> {} although {} was acknowledged after {} \
                     (the write of v{value}) and before the read",
                    r.id,
                    r.op,
                    r.outcome,
                    show(d),
                    writer
                ),
            );
        }
        if let Some(d) = deletes.get(&key).and_then(|i| i.between(acked, r.invoke)) {
            out.resurrections += 1;
            note(
                2,
                format!(
                    "resurrection: {} {} -> {} although {} was acknowledged after {} \
                     (the write of v{value}) and before the read",
                    r.id,
                    r.op,
                    r.outcome,
                    show(d),
                    writer
                ),
            );
        }
    }
    out.lost_writes = lost_writes(&overwrites, witnesses);
    out.examples = examples.into_iter().flatten().collect();
    out
}

/// The overwrites D for which some read R of an acknowledged value V has V acknowledged
/// before D's invoke and R invoked after D's acknowledgement.
fn lost_writes(
    overwrites: &BTreeMap<Key, Index>,
    witnesses: BTreeMap<Key, Vec<(u64, u64)>>,
) -> usize {
    let mut lost = HashSet::new();
    for (key, mut reads) in witnesses {
        let Some(index) = overwrites.get(&key) else {
            continue;
        };
        reads.sort_unstable();
        let mut prefix_max = Vec::with_capacity(reads.len());
        let mut max = 0;
        for &(_, read_invoke) in &reads {
            max = max.max(read_invoke);
            prefix_max.push(max);
        }
        for d in &index.by_invoke {
            let n = reads.partition_point(|&(acked, _)| acked < d.invoke);
            if n > 0 && prefix_max[n - 1] > d.complete {
                lost.insert(d.id);
            }
        }
    }
    lost.len()
}

#[cfg(test)]
mod tests;
