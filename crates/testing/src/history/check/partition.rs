//! Splits a history into one register history per key (P-compositionality: a history is
//! linearizable iff each key's sub-history is), in the form the search works on.
//!
//! Values become small codes: `NONE` (absent), `ANON` (any value that no operation reads
//! or compares against: such values are interchangeable, and merging them lets the memo
//! cache see equal futures as equal), and one code per observed value.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};

use crate::history::op::{Key, Op, OpId, Outcome, Output, ValueId};
use crate::history::record::History;

/// A value as the search sees it.
pub(super) type Code = u32;
/// The key is absent.
pub(super) const NONE: Code = 0;
/// Some value that no operation observes.
pub(super) const ANON: Code = 1;

/// The per-key effect and expected output of an operation that completed successfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    /// get, or one key of a batch_get: returns the state.
    Read(Code),
    /// put, or one key of a batch_put: any state, sets the value.
    Write(Code),
    /// delete (`Some(existed)`), or one key of a batch_delete (`None`: only a total count
    /// was returned, so any answer fits). Sets absent.
    Delete(Option<bool>),
    /// compare_and_swap.
    Cas { expected: Code, new: Code, ok: bool },
    /// set_if_not_exists.
    Sine { value: Code, ok: bool },
    /// get_and_delete: returns the state, sets absent.
    GetAndDelete(Code),
}

impl Effect {
    /// The state after this operation if it fits state `s`.
    pub fn accept(self, s: Code) -> Option<Code> {
        match self {
            Effect::Read(c) => (s == c).then_some(s),
            Effect::Write(c) => Some(c),
            Effect::Delete(Some(true)) => (s != NONE).then_some(NONE),
            Effect::Delete(Some(false)) => (s == NONE).then_some(NONE),
            Effect::Delete(None) => Some(NONE),
            Effect::Cas { expected, new, ok } => match ok {
                true => (s == expected).then_some(new),
                false => (s != expected).then_some(s),
            },
            Effect::Sine { value, ok } => match ok {
                true => (s == NONE).then_some(value),
                false => (s != NONE).then_some(s),
            },
            Effect::GetAndDelete(c) => (s == c).then_some(NONE),
        }
    }

    /// The state this operation needs when it does not fit: `Some(exactly this)`, or
    /// `None` for any state but the current one.
    pub fn needs(self) -> Option<Code> {
        match self {
            Effect::Read(c) | Effect::GetAndDelete(c) => Some(c),
            Effect::Cas {
                expected, ok: true, ..
            } => Some(expected),
            Effect::Delete(Some(false)) | Effect::Sine { ok: true, .. } => Some(NONE),
            _ => None,
        }
    }
}

/// A per-key operation with a known return: it took effect exactly once, between `call`
/// and `ret`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Timed {
    pub op: OpId,
    pub call: u64,
    pub ret: u64,
    pub effect: Effect,
}

/// What an operation of unknown outcome can do to a key, once, at any time after `call`.
/// Its output is unconstrained, so only its effect matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Class {
    /// Sets absent (delete, get_and_delete, batch_delete).
    Deleter,
    /// Sets an unobserved value from any state (put, batch_put).
    AnonPut,
    /// Sets an unobserved value if absent (set_if_not_exists, cas from absent).
    AnonFromNone,
    /// Sets `value` if the state is `pre` (`None`: any state).
    Specific { pre: Option<Code>, value: Code },
}

/// A per-key operation of unknown outcome.
#[derive(Debug, Clone, Copy)]
pub(super) struct Forever {
    pub op: OpId,
    pub call: u64,
    pub class: Class,
}

/// One key's history, ready for the search.
#[derive(Debug, Clone, Default)]
pub(super) struct KeyHistory {
    pub key: Key,
    pub timed: Vec<Timed>,
    pub forever: Vec<Forever>,
    /// The value id of each observed code (index `code - 2`).
    pub observed: Vec<ValueId>,
}

impl KeyHistory {
    /// How many codes there are (NONE, ANON and the observed values).
    pub fn codes(&self) -> usize {
        self.observed.len() + 2
    }
}

/// Splits `history` by key. Fails, naming the operations, if a value is written twice or an
/// output does not fit its operation: the checker's reasoning needs unique values.
pub(super) fn partition(history: &History) -> Result<Vec<KeyHistory>, String> {
    check_unique_writes(history)?;
    let mut observed: BTreeMap<Key, HashMap<ValueId, Code>> = BTreeMap::new();
    let mut keys: BTreeMap<Key, KeyHistory> = BTreeMap::new();
    for r in history.records() {
        for k in r.op.keys() {
            keys.entry(k).or_insert_with(|| KeyHistory {
                key: k,
                ..KeyHistory::default()
            });
        }
        let mut observe = |key: Key, v: Option<ValueId>| {
            if let (Some(v), Some(kh)) = (v, keys.get_mut(&key)) {
                let codes = observed.entry(key).or_default();
                if let Entry::Vacant(slot) = codes.entry(v) {
                    slot.insert(kh.codes() as Code);
                    kh.observed.push(v);
                }
            }
        };
        if let Op::Cas { key, expected, .. } = &r.op {
            observe(*key, *expected);
        }
        if let (Outcome::Ok(output), Some(_)) = (&r.outcome, r.complete) {
            match (&r.op, output) {
                (Op::Get { key } | Op::GetAndDelete { key }, Output::Value(v)) => observe(*key, *v),
                (Op::BatchGet { keys }, Output::Values(vs)) => {
                    for (k, v) in keys.iter().zip(vs) {
                        observe(*k, *v);
                    }
                }
                _ => {}
            }
        }
    }
    let empty = HashMap::new();
    for r in history.records() {
        for (key, piece) in split(r, &observed, &empty)? {
            if let Some(kh) = keys.get_mut(&key) {
                match piece {
                    Piece::Timed(t) => kh.timed.push(t),
                    Piece::Forever(f) => kh.forever.push(f),
                }
            }
        }
    }
    Ok(keys.into_values().collect())
}

fn check_unique_writes(history: &History) -> Result<(), String> {
    let mut writer: HashMap<ValueId, OpId> = HashMap::new();
    let mut seen_in_op = HashSet::new();
    for r in history.records() {
        seen_in_op.clear();
        for (_, v) in r.op.writes() {
            if !seen_in_op.insert(v) {
                return Err(format!("{} writes v{v} twice; values must be unique", r.id));
            }
            if let Some(first) = writer.insert(v, r.id) {
                return Err(format!(
                    "v{v} is written by {first} and {}; the checker needs every write to use \
                     a value no other write uses",
                    r.id
                ));
            }
        }
    }
    Ok(())
}

enum Piece {
    Timed(Timed),
    Forever(Forever),
}

/// The per-key pieces of one operation. Failed operations did nothing and give none,
/// except a failed batch write, which may have been partly applied.
fn split(
    r: &crate::history::record::Record,
    observed: &BTreeMap<Key, HashMap<ValueId, Code>>,
    empty: &HashMap<ValueId, Code>,
) -> Result<Vec<(Key, Piece)>, String> {
    let code = |key: Key, v: Option<ValueId>| -> Code {
        match v {
            None => NONE,
            Some(v) => observed
                .get(&key)
                .unwrap_or(empty)
                .get(&v)
                .copied()
                .unwrap_or(ANON),
        }
    };
    let forever = |key: Key, class: Class| {
        (
            key,
            Piece::Forever(Forever {
                op: r.id,
                call: r.invoke,
                class,
            }),
        )
    };
    let specific = |key: Key, pre: Option<Code>, v: ValueId| -> Class {
        match (code(key, Some(v)), pre) {
            (ANON, None) => Class::AnonPut,
            (ANON, Some(NONE)) => Class::AnonFromNone,
            (value, pre) => Class::Specific { pre, value },
        }
    };
    let (outcome, ret) = match (&r.outcome, r.complete) {
        (Outcome::Ok(output), Some(ret)) => (Some(output), ret),
        (Outcome::Failed, Some(_)) => (None, 0),
        _ => (None, u64::MAX),
    };
    let failed = matches!(r.outcome, Outcome::Failed) && r.complete.is_some();
    let Some(output) = outcome else {
        // Unknown, or failed: reads do nothing either way.
        let unknown_single = !failed;
        return Ok(match &r.op {
            Op::Put { key, value } if unknown_single => {
                vec![forever(*key, specific(*key, None, *value))]
            }
            Op::Cas { key, expected, new } if unknown_single => {
                let pre = code(*key, *expected);
                vec![forever(*key, specific(*key, Some(pre), *new))]
            }
            Op::SetIfNotExists { key, value } if unknown_single => {
                vec![forever(*key, specific(*key, Some(NONE), *value))]
            }
            Op::Delete { key } | Op::GetAndDelete { key } if unknown_single => {
                vec![forever(*key, Class::Deleter)]
            }
            Op::BatchPut { entries } => entries
                .iter()
                .map(|(k, v)| forever(*k, specific(*k, None, *v)))
                .collect(),
            Op::BatchDelete { keys } => keys.iter().map(|k| forever(*k, Class::Deleter)).collect(),
            _ => Vec::new(),
        });
    };
    let timed = |key: Key, effect: Effect| {
        (
            key,
            Piece::Timed(Timed {
                op: r.id,
                call: r.invoke,
                ret,
                effect,
            }),
        )
    };
    let mismatch = || {
        format!(
            "{} {} has output {output:?}, which does not fit",
            r.id, r.op
        )
    };
    Ok(match (&r.op, output) {
        (Op::Get { key }, Output::Value(v)) => vec![timed(*key, Effect::Read(code(*key, *v)))],
        (Op::Put { key, value }, Output::Done) => {
            vec![timed(*key, Effect::Write(code(*key, Some(*value))))]
        }
        (Op::Delete { key }, Output::Bool(b)) => vec![timed(*key, Effect::Delete(Some(*b)))],
        (Op::Cas { key, expected, new }, Output::Bool(ok)) => vec![timed(
            *key,
            Effect::Cas {
                expected: code(*key, *expected),
                new: code(*key, Some(*new)),
                ok: *ok,
            },
        )],
        (Op::SetIfNotExists { key, value }, Output::Bool(ok)) => vec![timed(
            *key,
            Effect::Sine {
                value: code(*key, Some(*value)),
                ok: *ok,
            },
        )],
        (Op::GetAndDelete { key }, Output::Value(v)) => {
            vec![timed(*key, Effect::GetAndDelete(code(*key, *v)))]
        }
        (Op::BatchGet { keys }, Output::Values(vs)) if vs.len() == keys.len() => keys
            .iter()
            .zip(vs)
            .map(|(k, v)| timed(*k, Effect::Read(code(*k, *v))))
            .collect(),
        (Op::BatchPut { entries }, Output::Done) => entries
            .iter()
            .map(|(k, v)| timed(*k, Effect::Write(code(*k, Some(*v)))))
            .collect(),
        (Op::BatchDelete { keys }, Output::Count(_)) => keys
            .iter()
            .map(|k| timed(*k, Effect::Delete(None)))
            .collect(),
        _ => return Err(mismatch()),
    })
}
