//! Coalescing, the callers' side: the statement slots, the channel to the dispatcher task
//! and the calls it carries. The dispatcher, and how and why calls are grouped, are in
//! `coalesce.rs`.

use std::sync::Arc;

use bytes::Bytes;
use state_core::{Result, StateError};
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot};

use crate::values::FullKeys;

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// Answers a call with `err`. A caller that left does not need its answer.
pub(crate) fn reject<T>(reply: Reply<T>, err: StateError) {
    let _ = reply.send(Err(err));
}

pub(crate) struct GetCall {
    /// The full key (prefix included).
    pub key: Bytes,
    pub reply: Reply<Option<Bytes>>,
}

pub(crate) struct PutCall {
    pub key: Bytes,
    pub value: Bytes,
    pub ttl_ms: Option<f64>,
    pub reply: Reply<()>,
}

/// One chunk of a `batch_get`: the values of `keys` (full keys), in order.
pub(crate) struct BatchGetCall {
    pub keys: FullKeys,
    pub reply: Reply<Vec<Option<Bytes>>>,
}

/// A call that reads: a point get or a batch chunk; both join one group.
pub(crate) enum ReadCall {
    Get(GetCall),
    Batch(BatchGetCall),
}

impl ReadCall {
    /// Answers the caller with `err`.
    pub fn fail(self, err: StateError) {
        match self {
            ReadCall::Get(call) => reject(call.reply, err),
            ReadCall::Batch(call) => reject(call.reply, err),
        }
    }

    /// The rows and bytes it adds to a statement.
    pub fn size(&self) -> (usize, usize) {
        match self {
            ReadCall::Get(call) => (1, call.key.len()),
            ReadCall::Batch(call) => (call.keys.len(), call.keys.byte_len()),
        }
    }
}

/// A `compare_and_swap`: `new` at `key` if it holds `expected` (`None`: if it is absent).
pub(crate) struct CasCall {
    pub key: Bytes,
    pub expected: Option<Bytes>,
    pub new: Bytes,
    pub reply: Reply<bool>,
}

pub(crate) enum Call {
    Read(ReadCall),
    Put(PutCall),
    Cas(CasCall),
}

/// Where a point call goes.
pub(crate) enum Route<'a> {
    /// Its own statement, sent at once, holding the statement slot it found free (none
    /// when coalescing is off).
    Direct(Option<SemaphorePermit<'a>>),
    /// Every slot is busy: to the dispatcher, to go out with the calls made meanwhile.
    Queued(&'a Coalescer),
}

impl Route<'_> {
    /// The route of a call made now on a backend with `coalescer`.
    pub fn of(coalescer: Option<&Coalescer>) -> Route<'_> {
        match coalescer {
            None => Route::Direct(None),
            Some(coalescer) => match coalescer.try_slot() {
                Some(slot) => Route::Direct(Some(slot)),
                None => Route::Queued(coalescer),
            },
        }
    }
}

/// The callers' side: the statement slots and a channel to the dispatcher task.
pub(crate) struct Coalescer {
    pub calls: mpsc::UnboundedSender<Call>,
    /// One permit per statement that may run at once, held by a caller running its own
    /// statement or by a group's statement.
    pub slots: Arc<Semaphore>,
    pub runtime: tokio::runtime::Id,
}

impl Coalescer {
    /// A free statement slot, if any: its holder runs its call as its own statement, at
    /// once and without a hop through the dispatcher. None is free while the dispatcher
    /// waits for one (the semaphore is fair), so queued calls go first.
    fn try_slot(&self) -> Option<SemaphorePermit<'_>> {
        self.slots.try_acquire().ok()
    }

    /// The value of full key `key`, or `None` when the dispatcher cannot serve the call
    /// and the caller must run it directly.
    pub async fn get(&self, key: Bytes) -> Option<Result<Option<Bytes>>> {
        let (reply, answer) = oneshot::channel();
        self.send(Call::Read(ReadCall::Get(GetCall { key, reply })))?;
        answer.await.ok()
    }

    /// Writes `value` at full key `key` as `put` does, or `None` when the dispatcher
    /// cannot serve the call and the caller must run it directly.
    pub async fn put(&self, key: Bytes, value: Bytes, ttl_ms: Option<f64>) -> Option<Result<()>> {
        let (reply, answer) = oneshot::channel();
        self.send(Call::Put(PutCall {
            key,
            value,
            ttl_ms,
            reply,
        }))?;
        answer.await.ok()
    }

    /// The values of full keys `keys`, in order, as `batch_get` reads one chunk, or `None`
    /// when the dispatcher cannot serve the call and the caller must run it directly.
    pub async fn batch_get(&self, keys: FullKeys) -> Option<Result<Vec<Option<Bytes>>>> {
        let (reply, answer) = oneshot::channel();
        self.send(Call::Read(ReadCall::Batch(BatchGetCall { keys, reply })))?;
        answer.await.ok()
    }

    /// Swaps in `new` at full key `key` if it holds `expected`, as `compare_and_swap`
    /// does, or `None` when the dispatcher cannot serve the call and the caller must run
    /// it directly.
    pub async fn compare_and_swap(
        &self,
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    ) -> Option<Result<bool>> {
        let (reply, answer) = oneshot::channel();
        self.send(Call::Cas(CasCall {
            key,
            expected,
            new,
            reply,
        }))?;
        answer.await.ok()
    }

    fn send(&self, call: Call) -> Option<()> {
        // A dispatcher on another runtime may never be polled (an idle current-thread
        // runtime), so only callers on its own runtime use it.
        let here = tokio::runtime::Handle::try_current().ok()?;
        if here.id() != self.runtime {
            return None;
        }
        self.calls.send(call).ok()
    }
}
