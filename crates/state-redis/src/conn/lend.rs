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
//! A clone in a stash is of one generation of the slot's connection: a request takes only
//! a clone of the current one, a forgotten connection's clones are dropped with the slot's
//! `forget`, and clones given back after that are dropped then. The stash belongs to the
//! slot: no clone outlives the pool.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use redis::{Cmd, Pipeline, RedisError, RedisResult, Value};

use super::single::{Open, Slot, lock};

/// Shards of a stash: a thread uses shard (its number modulo this). More than the cores
/// of the machines we run on, so that worker threads rarely share one.
const SHARDS: usize = 8;

/// Clones a shard keeps at most; one more given back is dropped. Enough for the requests a
/// thread has in flight at once on one slot at the loads we measured (64 tasks).
const SHARD_CLONES: usize = 256;

/// The clones of one slot's connection, kept per thread.
#[derive(Default)]
pub(super) struct Stash {
    /// The generation of the slot's current connection; 0 while it has none.
    live: AtomicU64,
    shards: [Shard; SHARDS],
}

/// One shard, on its own cache line, so that two threads' shards never share one.
#[derive(Default)]
#[repr(align(128))]
struct Shard(Mutex<Vec<Open>>);

impl Stash {
    /// A clone of the current connection, if the stash of this thread holds one.
    fn take(&self) -> Option<Open> {
        let live = self.live.load(Ordering::Acquire);
        if live == 0 {
            return None;
        }
        let mut shard = lock(&self.shard().0);
        // Clones of an older generation are only left by a race with `forget`.
        while let Some(open) = shard.pop() {
            if open.generation == live {
                return Some(open);
            }
        }
        None
    }

    /// Keeps `open` for the next request on this thread, if it is still current.
    fn give_back(&self, open: Open) {
        if open.generation != self.live.load(Ordering::Acquire) {
            return;
        }
        let mut shard = lock(&self.shard().0);
        if shard.len() < SHARD_CLONES {
            shard.push(open);
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

    fn shard(&self) -> &Shard {
        &self.shards[thread_number() % SHARDS]
    }
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
pub(super) struct Lent<'a> {
    /// Always `Some` until dropped.
    open: Option<Open>,
    slot: &'a Slot,
}

impl<'a> Lent<'a> {
    /// A clone of `slot`'s current connection, from this thread's stash if it has one.
    pub(super) fn from(slot: &'a Slot) -> Option<Lent<'a>> {
        let open = match slot.stash.take() {
            Some(open) => open,
            None => slot.current()?,
        };
        Some(Lent::new(open, slot))
    }

    /// Lends `open`, a clone of `slot`'s current connection.
    pub(super) fn new(open: Open, slot: &'a Slot) -> Lent<'a> {
        Lent {
            open: Some(open),
            slot,
        }
    }

    /// The connection's generation in its slot.
    pub(super) fn generation(&self) -> u64 {
        self.open.as_ref().map_or(0, |open| open.generation)
    }

    /// Sends one command on the lent connection ([`Open::query`]).
    pub(super) async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self.open.as_mut() {
            Some(open) => open.query(cmd).await,
            None => Err(given_back()),
        }
    }

    /// Sends a pipeline on the lent connection ([`Open::pipeline`]).
    pub(super) async fn pipeline(&mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        match self.open.as_mut() {
            Some(open) => open.pipeline(pipe).await,
            None => Err(given_back()),
        }
    }
}

/// The error of a request on a connection already given back: never seen, since only
/// `drop` gives it back.
fn given_back() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Client,
        "internal error: a request used a pooled connection after giving it back",
    ))
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            self.slot.stash.give_back(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::setup::{node_info, open_client};
    use super::super::single::{Dial, Dialer};
    use super::*;
    use crate::config::RedisConfig;

    impl Stash {
        /// Clones kept in every shard.
        fn kept(&self) -> usize {
            self.shards.iter().map(|shard| lock(&shard.0).len()).sum()
        }
    }

    /// A clone comes back to the stash and is lent again; once the slot forgets its
    /// connection, no clone of it is lent or kept, also one given back afterwards.
    #[tokio::test]
    async fn lends_clones_again_but_never_one_of_a_forgotten_connection()
    -> Result<(), Box<dyn std::error::Error>> {
        let service = testing::services::redis().await?;
        let config = RedisConfig::builder().url(service.url()).build()?;
        let host = config.hosts.first().ok_or("no host")?;
        let client = open_client(node_info(&config, &host.host, host.port)?, &config)?;
        let dialer = Dialer::new(Dial::Direct(client), &config);
        let slot = Slot::default();

        let first = slot.get_or_dial(&dialer).await?;
        let generation = first.generation();
        drop(first);
        assert_eq!(slot.stash.kept(), 1, "the dialled clone is kept");
        let mut lent = Lent::from(&slot).ok_or("no connection to lend")?;
        assert_eq!(slot.stash.kept(), 0, "the kept clone is lent");
        assert_eq!(
            lent.query(&redis::cmd("PING")).await?,
            Value::SimpleString("PONG".into())
        );
        let second = Lent::from(&slot).ok_or("no connection to lend")?;
        drop((lent, second));
        assert_eq!(
            slot.stash.kept(),
            2,
            "both clones are kept for later requests"
        );

        slot.forget(generation);
        assert_eq!(
            slot.stash.kept(),
            0,
            "a forgotten connection's clones are dropped"
        );
        assert!(
            Lent::from(&slot).is_none(),
            "nothing to lend once forgotten"
        );

        let redialled = slot.get_or_dial(&dialer).await?;
        assert_eq!(redialled.generation(), generation + 1);
        slot.forget(redialled.generation());
        drop(redialled);
        assert_eq!(
            slot.stash.kept(),
            0,
            "a clone given back after forget is dropped"
        );
        Ok(())
    }
}
