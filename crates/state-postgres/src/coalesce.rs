//! Coalescing: concurrent point `get`s, `put`s and `put_with_ttl`s sent as the set-based
//! statements of the batch operations, the way Redis clients auto-pipeline.
//!
//! Why: a statement costs the server 15-20 µs of CPU (and the client its sqlx round trip)
//! whatever it carries, so 16 tasks issuing one statement per call saturate a small
//! machine well below what the same calls cost as rows of fewer statements.
//!
//! How: `max_in_flight` slots (a semaphore) bound the statements running at once. A call
//! that finds a slot free runs as its own statement, at once, in its caller's task: no
//! timer, no hop. Otherwise it goes over a channel to the backend's dispatcher task and
//! waits on a oneshot. The dispatcher takes a call, then everything else already queued
//! (at most [`CHUNK_ROWS`] calls and [`CHUNK_BYTES`] per statement), and runs that group as
//! ONE statement on one connection, under the backend's retry policy; gets and puts form
//! separate groups. While every slot is busy, calls pile up in the channel and form the
//! next, bigger group. The dispatcher drives its statements itself, so the wake-up for a
//! finished one answers its callers and sends the next group, with its slot, in one go.
//!
//! Linearizability: a group's statement starts after every one of its calls was made and
//! ends before any of them is answered, so each call takes effect within its own span.
//! Calls grouped together overlap in time, so any order among them is a valid one; in a
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

use std::collections::BTreeMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::Poll;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use state_core::{Idempotency, Result, StateError};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::coalescer::{Call, Coalescer, GetCall, PutCall, Reply};
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
            held: None,
            puts_first: false,
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
    bytes: usize,
}

impl<T> Default for Group<T> {
    fn default() -> Self {
        Group {
            calls: Vec::new(),
            bytes: 0,
        }
    }
}

impl<T> Group<T> {
    fn is_full(&self) -> bool {
        self.calls.len() >= CHUNK_ROWS || self.bytes >= CHUNK_BYTES
    }

    fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        std::mem::take(&mut self.calls)
    }
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
    gets: Group<GetCall>,
    puts: Group<PutCall>,
    /// A call not yet in a group (its group was full, or nothing else was waiting).
    held: Option<Call>,
    /// Whether the puts' group holds the oldest call, so goes out first.
    puts_first: bool,
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
        self.held.is_none() && self.gets.calls.is_empty() && self.puts.calls.is_empty()
    }

    /// Moves the held call and then queued ones into the groups, until the queue is empty
    /// or a call's group is full (that call is held for the next round).
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
            let idle = self.gets.calls.is_empty() && self.puts.calls.is_empty();
            match call {
                Call::Get(call) if self.gets.is_full() => {
                    self.held = Some(Call::Get(call));
                    return;
                }
                Call::Put(call) if self.puts.is_full() => {
                    self.held = Some(Call::Put(call));
                    return;
                }
                Call::Get(call) => {
                    self.puts_first &= !idle;
                    self.gets.bytes += call.key.len();
                    self.gets.calls.push(call);
                }
                Call::Put(call) => {
                    self.puts_first |= idle;
                    self.puts.bytes += call.key.len() + call.value.len();
                    self.puts.calls.push(call);
                }
            }
        }
    }

    /// The statement, holding `slot`, for the group with the oldest call; `None` (and the
    /// slot freed) when every caller of that group gave up or the backend is gone.
    fn next_statement(&mut self, slot: OwnedSemaphorePermit) -> Option<Statement> {
        let puts = !self.puts.calls.is_empty() && (self.puts_first || self.gets.calls.is_empty());
        self.puts_first = !puts;
        // Calls whose callers gave up (a timeout, a dropped future) are not sent. With the
        // backend gone, the calls are dropped unanswered: any caller left runs its own.
        if puts {
            let mut calls = self.puts.take();
            calls.retain(|call| !call.reply.is_closed());
            let backend = self.backend().filter(|_| !calls.is_empty())?;
            Some(Box::pin(async move {
                backend.put_group(calls).await;
                slot
            }))
        } else {
            let mut calls = self.gets.take();
            calls.retain(|call| !call.reply.is_closed());
            let backend = self.backend().filter(|_| !calls.is_empty())?;
            Some(Box::pin(async move {
                backend.get_group(calls).await;
                slot
            }))
        }
    }

    /// The backend, for the time a statement runs.
    fn backend(&self) -> Option<PostgresStateBackend> {
        let inner = self.backend.upgrade()?;
        Some(PostgresStateBackend { inner })
    }
}

impl PostgresStateBackend {
    async fn get_group(&self, calls: Vec<GetCall>) {
        let keys: Vec<&[u8]> = calls.iter().map(|call| &call.key[..]).collect();
        match self.read_many(&keys).await {
            Ok(values) => {
                for (call, value) in calls.into_iter().zip(values) {
                    // A caller that left does not need its answer.
                    let _ = call.reply.send(Ok(value));
                }
            }
            Err(err) => share(err, calls.into_iter().map(|call| call.reply)),
        }
    }

    /// One statement reading `keys` (full keys, duplicates allowed), in order.
    async fn read_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        if let [key] = keys {
            // A lone call takes the point statement, cheaper for the server than a join.
            let value = self
                .run("get", Idempotency::Idempotent, || self.read_one(key))
                .await?;
            return Ok(vec![value]);
        }
        self.read_values("get", keys).await
    }

    async fn put_group(&self, calls: Vec<PutCall>) {
        // Every call is answered only once the statement has committed (autocommit).
        match self.write_many(&calls).await {
            Ok(()) => {
                for call in calls {
                    let _ = call.reply.send(Ok(()));
                }
            }
            Err(err) => share(err, calls.into_iter().map(|call| call.reply)),
        }
    }

    /// One statement writing every call, as `put` writes one row.
    async fn write_many(&self, calls: &[PutCall]) -> Result<()> {
        if let [call] = calls {
            return self
                .run("put", Idempotency::NotIdempotent, || {
                    self.write_one("put", &call.key, &call.value, &None, call.ttl_ms)
                })
                .await;
        }
        // The later call of a key wins. Sorted keys lock rows in one order, so concurrent
        // statements (and batch_put, sorted too) cannot deadlock one another.
        let mut latest: BTreeMap<&[u8], &PutCall> = BTreeMap::new();
        for call in calls {
            latest.insert(&call.key, call);
        }
        let keys: Vec<&[u8]> = latest.keys().copied().collect();
        let values: Vec<&[u8]> = latest.values().map(|call| &call.value[..]).collect();
        let ttls: Vec<Option<f64>> = latest.values().map(|call| call.ttl_ms).collect();
        let (keys, values, ttls) = (&keys, &values, &ttls);
        self.run("put", Idempotency::NotIdempotent, move || async move {
            let mut c = self.checkout().await?;
            let query = sqlx::query(self.inner.sql.batch_put_ttl.clone())
                .bind(keys)
                .bind(values)
                .bind(ttls);
            c.execute("put", query).await?;
            Ok(())
        })
        .await
    }
}

/// Gives every caller of a failed statement the error: the original to one, copies with
/// the same kind, message and outcome to the others (the driver's source is not `Clone`).
fn share<T>(err: StateError, replies: impl Iterator<Item = Reply<T>>) {
    let mut replies = replies.peekable();
    while let Some(reply) = replies.next() {
        if replies.peek().is_none() {
            let _ = reply.send(Err(err));
            return;
        }
        let mut copy = StateError::new(err.kind(), err.message());
        if err.outcome_unknown() {
            copy = copy.with_outcome_unknown();
        }
        let _ = reply.send(Err(copy));
    }
}
