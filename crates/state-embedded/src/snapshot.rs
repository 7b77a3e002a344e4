//! Read snapshots kept between point reads while nothing commits ([`Snapshots`]).
//!
//! A point read begins a redb read transaction and opens the data table: under callgrind,
//! 3.6k of a get's 8.1k instructions (64-byte values, 16 tasks), more than the lookup
//! itself. While no write commits, every new transaction would see the same state, so
//! reads share one: each thread keeps, in the shard its number picks, the data table of the
//! last snapshot it opened, with the commit generation it was opened at.
//!
//! **Why such a read is linearizable.** The writer makes the generation odd before a commit
//! can become visible and even again once it returned ([`Snapshots::committing`],
//! [`Snapshots::committed`]); redb runs one write transaction at a time, so commits never
//! overlap. A snapshot is kept only if the generation was even, and the same, before
//! `begin_read` and after opening the table: it then holds every commit up to that
//! generation and no other. It is used only while the generation still equals it, that is
//! while no commit has begun since, so a read returns what a transaction begun at that
//! instant would.
//!
//! **Why memory stays bounded.** A kept snapshot pins the pages that later commits free.
//! After every commit the writer drops every kept snapshot it can lock without waiting, and
//! a read that finds its shard's snapshot stale drops it first: a snapshot outlives at most
//! the commit after it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use redb::Database;
use state_core::Result;

use crate::read::{self, ReadTable};

/// Snapshots kept for point reads, and the commit generation that says when they are stale.
pub(crate) struct Snapshots {
    /// Odd while a commit is under way; bumped twice per commit by the writer. On a line of
    /// its own: every read loads it, and the shards beside it are written.
    generation: Padded<AtomicU64>,
    shards: Box<[Padded<Mutex<Option<Kept>>>]>,
}

/// One cache line (two on CPUs that prefetch pairs) per value, so that threads on different
/// cores do not write the same line.
#[repr(align(128))]
struct Padded<T>(T);

/// A snapshot's data table and the generation it was opened at (even).
struct Kept {
    generation: u64,
    table: ReadTable,
}

impl Snapshots {
    pub(crate) fn new() -> Snapshots {
        // Twice the cores, so that the runtime's worker threads rarely share a shard; a
        // thread that finds its shard busy reads on a transaction of its own.
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let shards = (cores * 2).clamp(2, 64);
        Snapshots {
            generation: Padded(AtomicU64::new(0)),
            shards: (0..shards).map(|_| Padded(Mutex::new(None))).collect(),
        }
    }

    /// Runs `read` on the data table of a snapshot that holds every commit returned before
    /// this call: the kept one if no commit began since it was opened, else a new one.
    pub(crate) fn read<T>(
        &self,
        db: &Database,
        read: impl FnOnce(&ReadTable) -> Result<T>,
    ) -> Result<T> {
        let Some(mut kept) = self.shard() else {
            // Another thread on this shard, or a read inside a read.
            return read(&open(db)?);
        };
        let generation = self.generation.0.load(Ordering::SeqCst);
        if let Some(k) = kept.as_ref().filter(|k| k.generation == generation) {
            return read(&k.table);
        }
        *kept = None;
        let table = open(db)?;
        if generation % 2 == 1 || self.generation.0.load(Ordering::SeqCst) != generation {
            // A commit was under way or began meanwhile: this snapshot is not kept.
            return read(&table);
        }
        read(&kept.insert(Kept { generation, table }).table)
    }

    /// Before a write transaction commits: kept snapshots are stale from here on.
    pub(crate) fn committing(&self) {
        self.generation.0.fetch_add(1, Ordering::SeqCst);
    }

    /// After the commit returned, whether it succeeded or not: drops the snapshots it can
    /// lock without waiting (a read holding one drops it itself next time).
    pub(crate) fn committed(&self) {
        self.generation.0.fetch_add(1, Ordering::SeqCst);
        for shard in &self.shards {
            if let Ok(mut kept) = shard.0.try_lock() {
                *kept = None;
            }
        }
    }

    /// Drops every kept snapshot, waiting for reads that hold one: before the file closes.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            *shard.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
        }
    }

    /// How many snapshots are kept now (for tests of the bound above).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.shards
            .iter()
            .filter(|shard| shard.0.lock().is_ok_and(|kept| kept.is_some()))
            .count()
    }

    /// This thread's shard, unless another holds it. A read that panicked cannot have left
    /// it half-written (it holds a whole snapshot or none), so poisoning is ignored.
    fn shard(&self) -> Option<MutexGuard<'_, Option<Kept>>> {
        let index = THREAD_INDEX.with(|index| *index) % self.shards.len();
        match self.shards.get(index)?.0.try_lock() {
            Ok(kept) => Some(kept),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl std::fmt::Debug for Snapshots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshots")
            .field("generation", &self.generation.0.load(Ordering::Relaxed))
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// A new snapshot's data table. The table keeps the transaction alive, not the other way.
fn open(db: &Database) -> Result<ReadTable> {
    read::data_table(&read::begin(db)?)
}

/// Threads are numbered in the order they first read, spreading them over the shards.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static THREAD_INDEX: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests;
