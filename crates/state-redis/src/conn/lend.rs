//! Lending a slot's connection to one request ([`Lent`]) from a stash of its clones kept
//! per thread, so that a request changes no counter that another core changes too.
//!
//! Why: a request needs a `MultiplexedConnection` of its own (its sends take `&mut self`),
//! and a clone of the slot's one costs a lock and four reference counts going up (the
//! channel's sender count, its `Arc`, ours to the socket's load and task), then down again
//! when the request ends. Every request on every core changes the same counters, so each
//! change moves a cache line between cores. Taken from and given back to the stash of the
//! thread it runs on, a clone is made once and reused by request after request; only the
//! lock of that thread's shard is taken, whose cache line stays on its core.
//!
//! Generic over what is lent (the slot, `single.rs`, lends its `Open`), so that this room
//! needs nothing from the slot's. A clone in a stash is of one generation of the slot's
//! connection: a request takes only
//! a clone of the current one, a forgotten connection's clones are dropped with the slot's
//! `forget`, and clones given back after that are dropped then. The stash belongs to the
//! slot: no clone outlives the pool.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Shards of a stash: a thread uses shard (its number modulo this). More than the cores
/// of the machines we run on, so that worker threads rarely share one.
const SHARDS: usize = 8;

/// Clones a shard keeps at most; one more given back is dropped. Enough for the requests a
/// thread has in flight at once on one slot at the loads we measured (64 tasks).
const SHARD_CLONES: usize = 256;

/// The clones of one slot's connection, each with its generation, kept per thread.
pub(super) struct Stash<T> {
    /// The generation of the slot's current connection; 0 while it has none.
    live: AtomicU64,
    shards: [Shard<T>; SHARDS],
}

/// One shard, on its own cache line, so that two threads' shards never share one.
#[repr(align(128))]
struct Shard<T>(Mutex<Vec<(u64, T)>>);

impl<T> Default for Stash<T> {
    fn default() -> Self {
        Stash {
            live: AtomicU64::new(0),
            shards: std::array::from_fn(|_| Shard(Mutex::new(Vec::new()))),
        }
    }
}

impl<T> Stash<T> {
    /// A clone of the current connection, if the stash of this thread holds one.
    fn take(&self) -> Option<(u64, T)> {
        let live = self.live.load(Ordering::Acquire);
        if live == 0 {
            return None;
        }
        let mut shard = self.shard();
        // Clones of an older generation are only left by a race with `clear`.
        while let Some((generation, value)) = shard.pop() {
            if generation == live {
                return Some((generation, value));
            }
        }
        None
    }

    /// Keeps `value` for the next request on this thread, if it is still current.
    fn give_back(&self, generation: u64, value: T) {
        if generation != self.live.load(Ordering::Acquire) {
            return;
        }
        let mut shard = self.shard();
        if shard.len() < SHARD_CLONES {
            shard.push((generation, value));
        }
    }

    /// The connection of `generation` is now the slot's current one.
    pub(super) fn set_live(&self, generation: u64) {
        self.live.store(generation, Ordering::Release);
    }

    /// The slot forgot its connection: no clone of it is lent again, and those kept are
    /// dropped (the connection closes once the requests using it are done).
    pub(super) fn clear(&self) {
        self.live.store(0, Ordering::Release);
        for shard in &self.shards {
            let dropped = std::mem::take(&mut *lock(&shard.0));
            drop(dropped);
        }
    }

    fn shard(&self) -> MutexGuard<'_, Vec<(u64, T)>> {
        lock(&self.shards[thread_number() % SHARDS].0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A number for the calling thread, given on its first call: worker threads get
/// different ones.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NUMBER.with(|n| *n)
}

/// A clone of a slot's connection, lent to one request and given back to the stash of
/// the thread the request ends on.
pub(super) struct Lent<'a, T> {
    /// The clone and its generation; always `Some` until dropped.
    held: Option<(u64, T)>,
    stash: &'a Stash<T>,
}

impl<'a, T> Lent<'a, T> {
    /// Lends `value`, a clone of generation `generation`, to go back to `stash`.
    pub(super) fn new(generation: u64, value: T, stash: &'a Stash<T>) -> Lent<'a, T> {
        Lent {
            held: Some((generation, value)),
            stash,
        }
    }

    /// A clone kept in this thread's part of `stash`, if any.
    pub(super) fn from_stash(stash: &'a Stash<T>) -> Option<Lent<'a, T>> {
        let (generation, value) = stash.take()?;
        Some(Lent::new(generation, value, stash))
    }

    /// The clone's generation.
    pub(super) fn generation(&self) -> u64 {
        self.held.as_ref().map_or(0, |(generation, _)| *generation)
    }

    /// The clone; `None` only once given back (in `drop`).
    pub(super) fn get_mut(&mut self) -> Option<&mut T> {
        self.held.as_mut().map(|(_, value)| value)
    }
}

impl<T> Drop for Lent<'_, T> {
    fn drop(&mut self) {
        if let Some((generation, value)) = self.held.take() {
            self.stash.give_back(generation, value);
        }
    }
}

#[cfg(test)]
impl<T> Stash<T> {
    /// Clones kept in every shard.
    pub(super) fn kept(&self) -> usize {
        self.shards.iter().map(|shard| lock(&shard.0).len()).sum()
    }
}
