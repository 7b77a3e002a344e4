//! `import` and `restore`: all or nothing, on standalone and Sentinel as one transaction,
//! in Cluster by staging then switching each slot in.
//!
//! On standalone and Sentinel ([`atomic`]) the entries are queued into one `MULTI … EXEC`
//! on a connection of the restore's own, as `MSET`s of a thousand keys (and, for entries
//! with an expiry or already expired, a `SET … PXAT` script and a `DEL` per chunk): the
//! server applies them at `EXEC`, readers see the old state or the new one, and anything
//! that fails before `EXEC` (the client dying included) leaves the namespace as it was.
//! It needs `+mset` and `+watch` besides what staging needs; a user without them (checked
//! first, with `redis.acl_check_cmd`) gets the staged restore below. The count returned is
//! that of the live entries of the stream, a key given twice counting twice (as in the
//! memory backend); the staged restore counts the keys it set.
//!
//! The staged restore, in Cluster (and without the ACL above):
//!
//! 1. Stage ([`stage`]): each entry becomes a field of a hash, `{T}\0state-stage\0ID\0` +
//!    key prefix + `\0entries` (one per Cluster hash slot, the slot of the keys it holds;
//!    one in all on standalone and Sentinel). The field is the Redis key, the value is the
//!    value behind a header that carries the entry's final absolute expiry, or marks an
//!    entry that had expired (a tombstone: the key must end up absent). Entries are sent
//!    as one `HSET` per chunk, in [`LANES`] lanes chosen by the key's slot, each lane with
//!    one chunk in flight: the client holds a bounded number of entries whatever the size
//!    of the restore, and the entries of one key reach the server in stream order, so the
//!    last one wins. Every hash and its ticket (below) expire within 24 h, so a crash
//!    leaves nothing forever. An error here (a bad entry, a broken stream, a lost
//!    connection) deletes what was staged and leaves the namespace as it was.
//! 2. Replace in Cluster only: the old keys and fencing marks of the namespace are listed
//!    by SCAN into a second hash per slot (`…\0old`), so the switch of a slot knows them.
//! 3. Switch ([`switch`]): one script call per hash (per slot in Cluster) that, atomically
//!    on the server, deletes the old keys not in the checkpoint and the fencing marks
//!    (Replace), then `SET`s every staged key with its `PXAT` expiry (an expiry that
//!    passed meanwhile leaves the key absent), deletes the tombstoned ones, and unlinks
//!    the hash. Standalone and Sentinel have one call for the whole namespace: readers
//!    see the old state or the new one. On standalone and Sentinel the script finds the
//!    old keys itself, by SCAN of the live namespace, so a key written by another client
//!    during the restore is deleted by a Replace too. In Cluster each slot switches
//!    atomically, the namespace as a whole does not, and keys written by other clients
//!    after the listing of step 2 survive a Replace.
//!
//! The switch blocks the server while it runs (about 1 µs a key: a second or two for a
//! million, the price of atomicity); other clients get `BUSY` once it passes
//! `busy-reply-threshold` (5 s by default). A switch that outlives our `response_timeout`
//! is not failed: each hash has a ticket (`…\0ticket`, `ready`) that the script must
//! consume before it changes anything, so after a timeout the client settles the outcome
//! by one idempotent script that either finds the switch done or aborts it for good (see
//! [`switch`]). Nothing that may have been applied is ever sent again.

mod atomic;
mod stage;
mod switch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use state_core::{BoxStream, Entry, ImportMode, Result};

use crate::driver::RedisStateBackend;
use crate::keys;

/// The longest the staged state lives if a restore dies half-way.
const STAGE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Lanes of staging: how many chunks are in flight at once.
const LANES: usize = crate::driver::BATCH_CONCURRENCY;

/// Names of the keys one restore uses, and when they expire.
struct Restore<'a> {
    backend: &'a RedisStateBackend,
    id: Vec<u8>,
    /// Unix ms at which the staged state expires if it is never switched in.
    expire_at: u64,
    /// The buckets (hash slots in Cluster, 0 otherwise) that hold staged state.
    touched: Buckets,
}

/// A set of buckets: a bit per hash slot. Atomic, so that chunks in flight (which borrow
/// the restore) and the loop that adds buckets can share it.
struct Buckets(Vec<AtomicU64>);

impl Buckets {
    fn new() -> Self {
        Buckets(
            (0..usize::from(keys::SLOTS) / 64)
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }

    fn insert(&self, bucket: u16) {
        if let Some(word) = self.0.get(usize::from(bucket / 64)) {
            word.fetch_or(1 << (bucket % 64), Ordering::Relaxed);
        }
    }

    fn iter(&self) -> impl Iterator<Item = u16> + '_ {
        (0..keys::SLOTS).filter(|&b| {
            self.0
                .get(usize::from(b / 64))
                .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (b % 64)) != 0)
        })
    }
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn restore_id() -> Vec<u8> {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "{:016x}",
        RandomState::new().hash_one((std::process::id(), SystemTime::now()))
    )
    .into_bytes()
}

impl<'a> Restore<'a> {
    fn new(backend: &'a RedisStateBackend) -> Self {
        Restore {
            backend,
            id: restore_id(),
            expire_at: unix_ms(SystemTime::now() + STAGE_TTL),
            touched: Buckets::new(),
        }
    }

    /// Where the entries of `full` (a Redis key) are staged.
    fn bucket_of(&self, full: &[u8]) -> u16 {
        if self.backend.is_cluster() {
            keys::slot(full)
        } else {
            0
        }
    }

    /// `{T}\0state-stage\0ID\0` + key prefix + `\0` + `part`, in `bucket`'s slot. The key
    /// prefix in the name lets an operator (and the kill test) find a restore's leftovers.
    fn key(&self, bucket: u16, part: &[u8]) -> Vec<u8> {
        let prefix = self.backend.prefix();
        let mut name = Vec::with_capacity(prefix.len() + 1 + part.len());
        name.extend_from_slice(prefix);
        name.push(0);
        name.extend_from_slice(part);
        keys::stage_key(bucket, &self.id, &name)
    }

    fn entries_key(&self, bucket: u16) -> Vec<u8> {
        self.key(bucket, b"entries")
    }

    fn old_key(&self, bucket: u16) -> Vec<u8> {
        self.key(bucket, b"old")
    }

    fn ticket_key(&self, bucket: u16) -> Vec<u8> {
        self.key(bucket, b"ticket")
    }

    /// Best-effort removal of everything staged (it expires anyway): after a failure, and
    /// the tickets after a success.
    async fn drop_staged(&self) {
        let mut names = Vec::new();
        for bucket in self.touched.iter() {
            names.push(self.entries_key(bucket));
            names.push(self.old_key(bucket));
            names.push(self.ticket_key(bucket));
        }
        let _ = self.backend.delete_keys(&names).await;
    }
}

impl RedisStateBackend {
    pub(crate) async fn import_staged(
        &self,
        entries: BoxStream<'_, Result<Entry>>,
        mode: ImportMode,
    ) -> Result<u64> {
        let restore = Restore::new(self);
        if !self.is_cluster()
            && let Some(tx) = atomic::Transaction::open(&restore, mode).await?
        {
            let done = tx.run(entries, mode).await;
            // The ticket's work is done; deleting it also voids the WATCH of an EXEC
            // that was never sent. Deleting it again is harmless, so it may be retried.
            let mut del = redis::pipe();
            del.cmd("DEL").arg(restore.ticket_key(0));
            let _ = self
                .write("restore ticket", state_core::Idempotency::Idempotent, &del)
                .await;
            drop(tx);
            return done;
        }
        if let Err(e) = restore.stage(entries).await {
            restore.drop_staged().await;
            return Err(e);
        }
        if mode == ImportMode::Replace
            && self.is_cluster()
            && let Err(e) = restore.list_old_keys().await
        {
            restore.drop_staged().await;
            return Err(e);
        }
        let switched = restore.switch(mode).await;
        // Whatever is left is not (or no longer) needed: a switched hash is gone already,
        // and a failed switch settled its outcome before returning (see `switch`).
        restore.drop_staged().await;
        switched
    }
}
