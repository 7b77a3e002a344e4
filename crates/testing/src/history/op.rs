//! What a client asked for and what it got back.
//!
//! Keys are small indices and values are unique ids, so a history stays small, prints
//! readably and lets the checker tell every write apart (each value is written once).

use std::fmt;

/// A key of the workload, by index (the driver names it `{prefix}k{index}`).
pub type Key = u32;

/// A value, by the unique id of the write that wrote it.
pub type ValueId = u64;

/// Which client issued an operation.
pub type ClientId = u32;

/// The id a read records for bytes that do not decode as a value of the workload: no write
/// uses it, so such a read counts as a value from nowhere.
pub const UNDECODABLE: ValueId = u64::MAX;

/// An operation's position in its [`History`](super::History).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One client request, mirroring the `StateBackend` method of the same name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the fields are the method's arguments
pub enum Op {
    Get {
        key: Key,
    },
    Put {
        key: Key,
        value: ValueId,
    },
    Delete {
        key: Key,
    },
    /// `compare_and_swap`; `expected: None` means "the key is absent".
    Cas {
        key: Key,
        expected: Option<ValueId>,
        new: ValueId,
    },
    SetIfNotExists {
        key: Key,
        value: ValueId,
    },
    GetAndDelete {
        key: Key,
    },
    BatchGet {
        keys: Vec<Key>,
    },
    BatchPut {
        entries: Vec<(Key, ValueId)>,
    },
    BatchDelete {
        keys: Vec<Key>,
    },
}

/// The kind of an [`Op`], for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)] // one per Op variant
pub enum OpKind {
    Get,
    Put,
    Delete,
    Cas,
    SetIfNotExists,
    GetAndDelete,
    BatchGet,
    BatchPut,
    BatchDelete,
}

impl OpKind {
    /// Every kind, in declaration order.
    pub const ALL: [OpKind; 9] = [
        OpKind::Get,
        OpKind::Put,
        OpKind::Delete,
        OpKind::Cas,
        OpKind::SetIfNotExists,
        OpKind::GetAndDelete,
        OpKind::BatchGet,
        OpKind::BatchPut,
        OpKind::BatchDelete,
    ];

    /// The `StateBackend` method's name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Cas => "compare_and_swap",
            OpKind::SetIfNotExists => "set_if_not_exists",
            OpKind::GetAndDelete => "get_and_delete",
            OpKind::BatchGet => "batch_get",
            OpKind::BatchPut => "batch_put",
            OpKind::BatchDelete => "batch_delete",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Op {
    /// The kind of this operation.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Get { .. } => OpKind::Get,
            Op::Put { .. } => OpKind::Put,
            Op::Delete { .. } => OpKind::Delete,
            Op::Cas { .. } => OpKind::Cas,
            Op::SetIfNotExists { .. } => OpKind::SetIfNotExists,
            Op::GetAndDelete { .. } => OpKind::GetAndDelete,
            Op::BatchGet { .. } => OpKind::BatchGet,
            Op::BatchPut { .. } => OpKind::BatchPut,
            Op::BatchDelete { .. } => OpKind::BatchDelete,
        }
    }

    /// The keys this operation touches, in its order.
    pub fn keys(&self) -> Vec<Key> {
        match self {
            Op::Get { key }
            | Op::Put { key, .. }
            | Op::Delete { key }
            | Op::Cas { key, .. }
            | Op::SetIfNotExists { key, .. }
            | Op::GetAndDelete { key } => vec![*key],
            Op::BatchGet { keys } | Op::BatchDelete { keys } => keys.clone(),
            Op::BatchPut { entries } => entries.iter().map(|(k, _)| *k).collect(),
        }
    }

    /// The `(key, value)` pairs this operation writes if it takes effect.
    pub fn writes(&self) -> Vec<(Key, ValueId)> {
        match self {
            Op::Put { key, value } | Op::SetIfNotExists { key, value } => vec![(*key, *value)],
            Op::Cas { key, new, .. } => vec![(*key, *new)],
            Op::BatchPut { entries } => entries.clone(),
            _ => Vec::new(),
        }
    }
}

/// What a successful operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `put`, `batch_put`: nothing.
    Done,
    /// `get`, `get_and_delete`: the value, or `None` if the key was absent.
    Value(Option<ValueId>),
    /// `batch_get`: one value per key, in the op's order.
    Values(Vec<Option<ValueId>>),
    /// `delete`, `compare_and_swap`, `set_if_not_exists`.
    Bool(bool),
    /// `batch_delete`: how many keys were deleted.
    Count(u64),
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded and returned this.
    Ok(Output),
    /// It returned an error without `outcome_unknown`: it did not take effect. (A batch
    /// write may stop part way, so the checker treats a failed one as unknown per key.)
    Failed,
    /// It returned an error with `outcome_unknown`, timed out, was cancelled or never
    /// completed: it may or may not take effect, at any time after its invocation.
    Unknown,
}

impl Outcome {
    /// Short label: `ok`, `failed` or `unknown`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok(_) => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        }
    }
}

/// `v17`, or `absent`.
pub(crate) struct ShowValue(pub Option<ValueId>);

impl fmt::Display for ShowValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(UNDECODABLE) => f.write_str("v<undecodable>"),
            Some(v) => write!(f, "v{v}"),
            None => f.write_str("absent"),
        }
    }
}

fn keys_list(f: &mut fmt::Formatter<'_>, keys: &[Key]) -> fmt::Result {
    for (i, k) in keys.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "k{k}")?;
    }
    Ok(())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Get { key } => write!(f, "get(k{key})"),
            Op::Put { key, value } => write!(f, "put(k{key}, v{value})"),
            Op::Delete { key } => write!(f, "delete(k{key})"),
            Op::Cas { key, expected, new } => {
                write!(f, "cas(k{key}, {} -> v{new})", ShowValue(*expected))
            }
            Op::SetIfNotExists { key, value } => write!(f, "set_if_not_exists(k{key}, v{value})"),
            Op::GetAndDelete { key } => write!(f, "get_and_delete(k{key})"),
            Op::BatchGet { keys } => {
                f.write_str("batch_get(")?;
                keys_list(f, keys)?;
                f.write_str(")")
            }
            Op::BatchPut { entries } => {
                f.write_str("batch_put(")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "k{k}=v{v}")?;
                }
                f.write_str(")")
            }
            Op::BatchDelete { keys } => {
                f.write_str("batch_delete(")?;
                keys_list(f, keys)?;
                f.write_str(")")
            }
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Done => f.write_str("done"),
            Output::Value(v) => write!(f, "{}", ShowValue(*v)),
            Output::Values(vs) => {
                f.write_str("[")?;
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{}", ShowValue(*v))?;
                }
                f.write_str("]")
            }
            Output::Bool(b) => write!(f, "{b}"),
            Output::Count(n) => write!(f, "{n}"),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(output) => write!(f, "ok {output}"),
            Outcome::Failed => f.write_str("failed (did not take effect)"),
            Outcome::Unknown => f.write_str("unknown (may take effect)"),
        }
    }
}
