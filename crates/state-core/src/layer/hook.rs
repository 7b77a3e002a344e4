//! [`Hook`]: one method that runs around every call of a backend, and what it is told about
//! the call ([`Op`]) and its result ([`Outcome`]).

use std::fmt;
use std::future::Future;

use bytes::Bytes;

use crate::backend::BoxStream;
use crate::error::Result;
use crate::retry::Idempotency;
use crate::types::{Capabilities, Checkpoint, Entry, Health, Limits, Ttl};

use crate::stats::Stats;

/// What a layer does around each call of the backend it wraps; [`Layered`](super::Layered)
/// turns a hook into a [`StateBackend`](crate::StateBackend).
///
/// Every method but [`around`](Self::around) has a default that passes things through.
pub trait Hook: Send + Sync + fmt::Debug + 'static {
    /// Runs `call`, the inner backend's answer to `op`. Returning without awaiting `call`
    /// (with an error) means nothing was sent.
    fn around<T: Outcome>(
        &self,
        op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send;

    /// Wraps the stream of a scan or an export. Passed through by default.
    fn around_stream<'a>(
        &'a self,
        kind: OpKind,
        stream: BoxStream<'a, Result<Entry>>,
    ) -> BoxStream<'a, Result<Entry>> {
        let _ = kind;
        stream
    }

    /// Wraps the entries given to `import` (and, as a stream, to `restore`) before the
    /// inner backend reads them. Passed through by default.
    fn around_entries<'a>(
        &'a self,
        entries: BoxStream<'a, Result<Entry>>,
    ) -> BoxStream<'a, Result<Entry>> {
        entries
    }

    /// Checks the entries of a checkpoint about to be restored; an error means nothing is
    /// sent. Nothing to check by default.
    fn check_entries(&self, entries: &[Entry]) -> Result<()> {
        let _ = entries;
        Ok(())
    }

    /// The capabilities the wrapped backend shows, given the inner one's.
    fn capabilities(&self, inner: Capabilities) -> Capabilities {
        inner
    }

    /// The statistics the wrapped backend reports, given the inner one's.
    fn stats(&self, inner: Stats) -> Stats {
        inner
    }
}

/// The operations of [`StateBackend`](crate::StateBackend), as a layer sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)] // each variant is the trait method of the same name
pub enum OpKind {
    Get,
    Put,
    PutWithTtl,
    PutWithMetadata,
    Delete,
    BatchGet,
    BatchPut,
    BatchDelete,
    GetAndDelete,
    SetIfNotExists,
    CompareAndSwap,
    PutFenced,
    Ttl,
    Scan,
    Count,
    Clear,
    Checkpoint,
    Restore,
    Export,
    Import,
    HealthCheck,
}

impl OpKind {
    /// Every operation, in the trait's order: `ALL[kind.index()] == kind`.
    pub const ALL: [OpKind; 21] = [
        OpKind::Get,
        OpKind::Put,
        OpKind::PutWithTtl,
        OpKind::PutWithMetadata,
        OpKind::Delete,
        OpKind::BatchGet,
        OpKind::BatchPut,
        OpKind::BatchDelete,
        OpKind::GetAndDelete,
        OpKind::SetIfNotExists,
        OpKind::CompareAndSwap,
        OpKind::PutFenced,
        OpKind::Ttl,
        OpKind::Scan,
        OpKind::Count,
        OpKind::Clear,
        OpKind::Checkpoint,
        OpKind::Restore,
        OpKind::Export,
        OpKind::Import,
        OpKind::HealthCheck,
    ];

    /// The position of this kind in [`ALL`](Self::ALL), for tables indexed by operation.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The trait method's name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::PutWithTtl => "put_with_ttl",
            OpKind::PutWithMetadata => "put_with_metadata",
            OpKind::Delete => "delete",
            OpKind::BatchGet => "batch_get",
            OpKind::BatchPut => "batch_put",
            OpKind::BatchDelete => "batch_delete",
            OpKind::GetAndDelete => "get_and_delete",
            OpKind::SetIfNotExists => "set_if_not_exists",
            OpKind::CompareAndSwap => "compare_and_swap",
            OpKind::PutFenced => "put_fenced",
            OpKind::Ttl => "ttl",
            OpKind::Scan => "scan",
            OpKind::Count => "count",
            OpKind::Clear => "clear",
            OpKind::Checkpoint => "checkpoint",
            OpKind::Restore => "restore",
            OpKind::Export => "export",
            OpKind::Import => "import",
            OpKind::HealthCheck => "health_check",
        }
    }

    /// Whether the operation may change stored state.
    pub fn is_write(self) -> bool {
        !matches!(
            self,
            OpKind::Get
                | OpKind::BatchGet
                | OpKind::Ttl
                | OpKind::Scan
                | OpKind::Count
                | OpKind::Checkpoint
                | OpKind::Export
                | OpKind::HealthCheck
        )
    }

    /// Whether applying it twice could be observed, seen from outside any backend: every
    /// write counts as not idempotent here (a layer cannot know the backend's tricks).
    pub fn idempotency(self) -> Idempotency {
        if self.is_write() {
            Idempotency::NotIdempotent
        } else {
            Idempotency::Idempotent
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The caller's input to one operation, borrowed: what a layer may check before the call.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Input<'a> {
    /// No key (health check, checkpoint, restore, import).
    None,
    /// One key.
    Key(&'a [u8]),
    /// A key and the value to store.
    Entry(&'a [u8], &'a [u8]),
    /// A compare-and-swap: the key, the expected value and the new one.
    Swap(&'a [u8], Option<&'a [u8]>, &'a [u8]),
    /// Several keys.
    Keys(&'a [&'a [u8]]),
    /// Several entries.
    Entries(&'a [(&'a [u8], &'a [u8])]),
    /// A key prefix (scans, counts, clears); may be empty.
    Prefix(&'a [u8]),
}

impl Input<'_> {
    /// How many keys or entries the call names (1 for a point call, 0 for none).
    pub fn entries(&self) -> usize {
        match *self {
            Input::None | Input::Prefix(_) => 0,
            Input::Key(_) | Input::Entry(..) | Input::Swap(..) => 1,
            Input::Keys(keys) => keys.len(),
            Input::Entries(entries) => entries.len(),
        }
    }

    /// The length of the key, for a point call.
    pub fn key_len(&self) -> Option<usize> {
        match *self {
            Input::Key(key) | Input::Entry(key, _) | Input::Swap(key, ..) => Some(key.len()),
            _ => None,
        }
    }

    /// Key and value bytes the caller hands over to be stored (keys without prefix).
    pub fn bytes_written(&self) -> u64 {
        let n = match *self {
            Input::Entry(key, value) | Input::Swap(key, _, value) => key.len() + value.len(),
            Input::Entries(entries) => entries.iter().map(|(k, v)| k.len() + v.len()).sum(),
            Input::None | Input::Key(_) | Input::Keys(_) | Input::Prefix(_) => 0,
        };
        n as u64
    }

    /// Checks every key and value against `limits`.
    pub fn check(&self, limits: &Limits) -> Result<()> {
        match *self {
            // A prefix longer than any key matches nothing: not an error.
            Input::None | Input::Prefix(_) => Ok(()),
            Input::Key(key) => limits.check_key(key),
            Input::Entry(key, value) => limits.check_entry(key, value),
            Input::Swap(key, expected, new) => {
                limits.check_entry(key, new)?;
                expected.map_or(Ok(()), |e| limits.check_value(e))
            }
            Input::Keys(keys) => keys.iter().try_for_each(|key| limits.check_key(key)),
            Input::Entries(entries) => entries
                .iter()
                .try_for_each(|(key, value)| limits.check_entry(key, value)),
        }
    }
}

/// One call, as a layer sees it.
#[derive(Debug, Clone, Copy)]
pub struct Op<'a> {
    /// Which operation.
    pub kind: OpKind,
    /// The caller's input.
    pub input: Input<'a>,
}

/// What a successful result says about reads: keys found or not, and value bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observed {
    /// Keys found.
    pub hits: u64,
    /// Keys looked up and not found.
    pub misses: u64,
    /// Value bytes handed back to the caller.
    pub bytes_read: u64,
}

/// A result a hook may look at: what it read, if anything.
pub trait Outcome: Send {
    /// What this result read.
    fn observed(&self) -> Observed {
        Observed::default()
    }
}

impl Outcome for () {}
impl Outcome for bool {}
impl Outcome for u64 {}
impl Outcome for Ttl {}
impl Outcome for Health {}

impl Outcome for Option<Bytes> {
    fn observed(&self) -> Observed {
        match self {
            Some(value) => Observed {
                hits: 1,
                misses: 0,
                bytes_read: value.len() as u64,
            },
            None => Observed {
                hits: 0,
                misses: 1,
                bytes_read: 0,
            },
        }
    }
}

impl Outcome for Vec<Option<Bytes>> {
    fn observed(&self) -> Observed {
        self.iter()
            .map(Outcome::observed)
            .fold(Observed::default(), |sum, one| Observed {
                hits: sum.hits + one.hits,
                misses: sum.misses + one.misses,
                bytes_read: sum.bytes_read + one.bytes_read,
            })
    }
}

impl Outcome for Checkpoint {
    fn observed(&self) -> Observed {
        Observed {
            bytes_read: self.entries().iter().map(|e| e.value.len() as u64).sum(),
            ..Observed::default()
        }
    }
}
