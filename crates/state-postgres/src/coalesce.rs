//! Coalescing: concurrent point `get`s, `put`s, `put_with_ttl`s and `compare_and_swap`s,
//! and `batch_get` chunks, sent as set-based statements (those of the batch operations,
//! and a swap of many rows), the way Redis clients auto-pipeline.
//!
//! Why: a statement costs the server 15-20 µs of CPU (and the client its sqlx round trip)
//! whatever it carries, so 16 tasks issuing one statement per call saturate a small
//! machine well below what the same calls cost as rows of fewer statements.
//!
//! How: `max_in_flight` slots (a semaphore) bound the statements running at once. A call
//! that finds a slot free runs as its own statement, at once, in its caller's task: no
//! timer, no hop. Otherwise it goes over a channel to the backend's dispatcher task and
//! waits on a oneshot. The dispatcher takes a call, then everything else already queued
//! (at most [`CHUNK_ROWS`] rows and [`CHUNK_BYTES`] per statement), and runs that group as
//! ONE statement on one connection, under the backend's retry policy; reads and puts form
//! separate groups. A `batch_get` chunk joins the reads as its keys' rows: a few large
//! statements cost the server less per key than many small ones (1000-key reads served
//! 1.4-1.6x the keys per second of 100-key ones, pgbench on 2 cores). `batch_put` does
//! not queue: its commit waits for the WAL flush, which needs statements in parallel, not
//! fewer of them. While every slot is busy, calls pile up in the channel and form the
//! next, bigger group. The dispatcher drives its statements itself, so the wake-up for a
//! finished one answers its callers and sends the next group, with its slot, in one go.
//!
//! Linearizability: a group's statement starts after every one of its calls was made and
//! ends before any of them is answered, so each call takes effect within its own span; a
//! batch chunk still reads all its keys in one statement, one snapshot. Calls grouped
//! together overlap in time, so any order among them is a valid one; in a
//! put group naming a key twice, the later call wins (one `INSERT … ON CONFLICT` cannot
//! touch a row twice), as if it ran second. Puts are answered after their statement has
//! committed (autocommit); a failed statement's error goes to each of its callers.
//!
//! Lifetime: the dispatcher holds a `Weak` of the backend, upgraded only while one of its
//! statements runs, and ends once the backend (the channel's only sender) is dropped. A
//! caller whose call cannot be delivered, or is dropped unanswered (the dispatcher's
//! runtime shut down), or who runs on another runtime than the dispatcher's (which might
//! not be driven at all), runs the operation itself, uncoalesced: it never hangs. A
//! cancelled caller drops its receiver, and the dispatcher leaves its call out of the next
//! statement if that has not started yet.
//!
//! Compare-and-swaps form two kinds of group, swaps (an expected value) and inserts (none),
//! each one statement, and a group names each key once: a second call on a key waits for
//! the next group, since one statement cannot write a row twice, and its outcome depends
//! on the first. The statement's answer says, key by key, which calls wrote.

use std::collections::HashSet;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::coalescer::{Call, CasCall, Coalescer, PutCall, ReadCall};
use crate::driver::{CHUNK_BYTES, CHUNK_ROWS, Inner, PostgresStateBackend};

impl Coalescer {
    /// Starts the dispatcher of `backend` on the current runtime; `None` when
    /// `max_in_flight` is 0 (coalescing off) or outside a runtime.
    pub fn start(backend: &Weak<Inner>, max_in_flight: usize) -> Option<Self> {
        if max_in_flight == 0 {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (calls, queue) = mpsc::unbounded_channel();
        let slots = Arc::new(Semaphore::new(max_in_flight));
        let dispatcher = Dispatcher {
            backend: backend.clone(),
            queue,
            open: true,
            slots: slots.clone(),
            gets: Group::default(),
            puts: Group::default(),
            swaps: Group::default(),
            inserts: Group::default(),
            held: None,
            arrivals: 0,
        };
        runtime.spawn(dispatcher.run());
        Some(Coalescer {
            calls,
            slots,
            runtime: runtime.id(),
        })
    }
}

/// Calls gathered for one statement.
struct Group<T> {
    calls: Vec<T>,
    /// The rows the statement will touch (a batch chunk is many).
    rows: usize,
    bytes: usize,
    /// When the first call came (the dispatcher's count of calls): the group holding the
    /// oldest call goes out first.
    since: u64,
    /// The calls' keys, for the groups that name a key once (compare-and-swaps).
    keys: HashSet<Bytes>,
}

impl<T> Default for Group<T> {
    fn default() -> Self {
        Group {
            calls: Vec::new(),
            rows: 0,
            bytes: 0,
            since: 0,
            keys: HashSet::new(),
        }
    }
}

impl<T> Group<T> {
    /// Whether a call of `rows` rows and `bytes` bytes may join: a group keeps within
    /// [`CHUNK_ROWS`] and [`CHUNK_BYTES`], except for its first call.
    fn has_room(&self, rows: usize, bytes: usize) -> bool {
        self.calls.is_empty()
            || (self.rows + rows <= CHUNK_ROWS && self.bytes + bytes <= CHUNK_BYTES)
    }

    /// Adds `call` if it fits (see [`has_room`](Self::has_room)); else hands it back.
    fn try_push(&mut self, call: T, rows: usize, bytes: usize, arrival: u64) -> Option<T> {
        if !self.has_room(rows, bytes) {
            return Some(call);
        }
        if self.calls.is_empty() {
            self.since = arrival;
        }
        self.rows += rows;
        self.bytes += bytes;
        self.calls.push(call);
        None
    }

    /// When the group's oldest call came; `None` when it is empty.
    fn since(&self) -> Option<u64> {
        (!self.calls.is_empty()).then_some(self.since)
    }

    fn take(&mut self) -> Vec<T> {
        self.rows = 0;
        self.bytes = 0;
        self.keys.clear();
        std::mem::take(&mut self.calls)
    }
}

impl Group<CasCall> {
    /// Adds `call` unless the group is full or already names its key (it is handed back).
    fn try_push_cas(&mut self, call: CasCall, arrival: u64) -> Option<CasCall> {
        if self.keys.contains(&call.key) {
            return Some(call);
        }
        let key = call.key.clone();
        let bytes = call.key.len() + call.new.len() + call.expected.as_ref().map_or(0, Bytes::len);
        let refused = self.try_push(call, 1, bytes, arrival);
        if refused.is_none() {
            self.keys.insert(key);
        }
        refused
    }
}

/// A call whose caller may have given up waiting for it.
trait Awaited {
    fn abandoned(&self) -> bool;
}

impl Awaited for ReadCall {
    fn abandoned(&self) -> bool {
        match self {
            ReadCall::Get(call) => call.reply.is_closed(),
            ReadCall::Batch(call) => call.reply.is_closed(),
        }
    }
}

impl Awaited for PutCall {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

impl Awaited for CasCall {
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Get,
    Put,
    Swap,
    Insert,
}

/// A group's statement; it gives its slot back when done.
type Statement = Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>;
type Acquire = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

struct Dispatcher {
    backend: Weak<Inner>,
    queue: mpsc::UnboundedReceiver<Call>,
    /// False once the queue is closed and empty: the backend is gone.
    open: bool,
    slots: Arc<Semaphore>,
    /// Point gets and batch_get chunks.
    gets: Group<ReadCall>,
    puts: Group<PutCall>,
    /// Compare-and-swaps with an expected value.
    swaps: Group<CasCall>,
    /// Compare-and-swaps expecting the key absent.
    inserts: Group<CasCall>,
    /// A call not yet in a group (its group was full or named its key, or nothing else
    /// was waiting).
    held: Option<Call>,
    /// Calls gathered so far, the groups' clock.
    arrivals: u64,
}

impl Dispatcher {
    /// The dispatcher's loop. Its statements run inside it, so that the wake-up for a
    /// finished statement also answers its callers and sends the next group, with that
    /// statement's slot, in one go.
    async fn run(mut self) {
        let mut running: FuturesUnordered<Statement> = FuturesUnordered::new();
        let mut spare: Vec<OwnedSemaphorePermit> = Vec::new();
        let mut acquiring: Option<Acquire> = None;
        loop {
            // A statement per group while slots can be had: from finished statements,
            // else free ones.
            loop {
                self.gather();
                if self.is_idle() {
                    break;
                }
                let slot = spare
                    .pop()
                    .or_else(|| self.slots.clone().try_acquire_owned().ok());
                let Some(slot) = slot else { break };
                if let Some(statement) = self.next_statement(slot) {
                    running.push(statement);
                }
            }
            // Unneeded slots go back at once, for callers to run their own statements.
            spare.clear();
            if self.is_idle() {
                if !self.open && running.is_empty() {
                    return;
                }
                // Not waiting for a slot: the fair semaphore would refuse them to callers.
                acquiring = None;
            } else if acquiring.is_none() {
                let slots = self.slots.clone();
                acquiring = Some(Box::pin(async move { slots.acquire_owned().await.ok() }));
            }
            // Wait for a statement to finish, a slot to come free (with calls waiting),
            // or a call (with none waiting). Calls that come while every slot is busy
            // stay in the queue and join the next group.
            poll_fn(|cx| {
                let mut woken = false;
                while let Poll::Ready(Some(slot)) = running.poll_next_unpin(cx) {
                    spare.push(slot);
                    woken = true;
                }
                if let Some(acquire) = acquiring.as_mut()
                    && let Poll::Ready(slot) = acquire.as_mut().poll(cx)
                {
                    acquiring = None;
                    spare.extend(slot);
                    woken = true;
                }
                if self.open && self.is_idle() {
                    match self.queue.poll_recv(cx) {
                        Poll::Ready(Some(call)) => self.held = Some(call),
                        Poll::Ready(None) => self.open = false,
                        Poll::Pending => {
                            return if woken {
                                Poll::Ready(())
                            } else {
                                Poll::Pending
                            };
                        }
                    }
                    woken = true;
                }
                if woken {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }
    }

    fn is_idle(&self) -> bool {
        self.held.is_none() && self.oldest().is_none()
    }

    /// The kind of the group holding the oldest call, if any holds one.
    fn oldest(&self) -> Option<Kind> {
        [
            (Kind::Get, self.gets.since()),
            (Kind::Put, self.puts.since()),
            (Kind::Swap, self.swaps.since()),
            (Kind::Insert, self.inserts.since()),
        ]
        .into_iter()
        .filter_map(|(kind, since)| Some((kind, since?)))
        .min_by_key(|&(_, since)| since)
        .map(|(kind, _)| kind)
    }

    /// Moves the held call and then queued ones into the groups, until the queue is empty
    /// or a call cannot join its group (that call is held for the next round).
    fn gather(&mut self) {
        loop {
            let call = match self.held.take() {
                Some(call) => call,
                None if !self.open => return,
                None => match self.queue.try_recv() {
                    Ok(call) => call,
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Disconnected) => {
                        self.open = false;
                        return;
                    }
                },
            };
            let arrival = self.arrivals;
            self.arrivals += 1;
            let refused = match call {
                Call::Read(call) => {
                    let (rows, bytes) = call.size();
                    self.gets
                        .try_push(call, rows, bytes, arrival)
                        .map(Call::Read)
                }
                Call::Put(call) => {
                    let bytes = call.key.len() + call.value.len();
                    self.puts.try_push(call, 1, bytes, arrival).map(Call::Put)
                }
                Call::Cas(call) if call.expected.is_some() => {
                    self.swaps.try_push_cas(call, arrival).map(Call::Cas)
                }
                Call::Cas(call) => self.inserts.try_push_cas(call, arrival).map(Call::Cas),
            };
            if refused.is_some() {
                self.held = refused;
                return;
            }
        }
    }

    /// The statement, holding `slot`, for the group with the oldest call; `None` (and the
    /// slot freed) when every caller of that group gave up or the backend is gone.
    fn next_statement(&mut self, slot: OwnedSemaphorePermit) -> Option<Statement> {
        match self.oldest()? {
            Kind::Get => {
                let calls = self.gets.take();
                self.statement(calls, slot, |backend, calls| async move {
                    backend.get_group(calls).await;
                })
            }
            Kind::Put => {
                let calls = self.puts.take();
                self.statement(calls, slot, |backend, calls| async move {
                    backend.put_group(calls).await;
                })
            }
            kind @ (Kind::Swap | Kind::Insert) => {
                let calls = match kind {
                    Kind::Swap => self.swaps.take(),
                    _ => self.inserts.take(),
                };
                self.statement(calls, slot, |backend, calls| async move {
                    backend.cas_group(calls).await;
                })
            }
        }
    }

    /// `run` of the calls still awaited, as a statement holding `slot`. Calls whose
    /// callers gave up (a timeout, a dropped future) are not sent. With the backend gone,
    /// the calls are dropped unanswered: any caller left runs its own.
    fn statement<T, F, Fut>(
        &self,
        mut calls: Vec<T>,
        slot: OwnedSemaphorePermit,
        run: F,
    ) -> Option<Statement>
    where
        T: Awaited,
        F: FnOnce(PostgresStateBackend, Vec<T>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        calls.retain(|call| !call.abandoned());
        let backend = self.backend().filter(|_| !calls.is_empty())?;
        let run = run(backend, calls);
        Some(Box::pin(async move {
            run.await;
            slot
        }))
    }

    /// The backend, for the time a statement runs.
    fn backend(&self) -> Option<PostgresStateBackend> {
        let inner = self.backend.upgrade()?;
        Some(PostgresStateBackend { inner })
    }
}
