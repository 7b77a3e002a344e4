//! The [`StateBackend`] trait: one async key-value API over every store.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
pub use futures_core::stream::BoxStream;

use crate::error::{Result, StateError};
use crate::stats::{Gauge, Stats};
use crate::types::{Capabilities, Checkpoint, Entry, FencingToken, Health, ImportMode, Ttl};

/// An async key-value store with TTLs, atomic operations, fenced writes, streaming scans and
/// snapshots.
///
/// The trait is object-safe: services hold an `Arc<dyn StateBackend>` picked by URL at
/// start-up. Semantics shared by every implementation (the `testing` crate's conformance
/// suite is their executable definition):
///
/// - Keys and values are arbitrary bytes (empty values, 0x00 and 0xFF included). Keys are
///   non-empty and at most [`Capabilities::max_key_len`] bytes; values at most
///   [`Capabilities::max_value_len`]. A violation is an
///   [`InvalidInput`](crate::ErrorKind::InvalidInput) error raised before anything is sent.
/// - TTLs have millisecond precision (rounded up); zero is invalid input. An expired key is
///   invisible to every read at once, whatever the backend's cleanup schedule. An expiry is
///   a point on the wall clock of whoever keeps it (this process for memory and redb, the
///   server for Redis and PostgreSQL), as it must be to survive restarts and checkpoints:
///   a wall clock set back (NTP, a VM's host) lengthens every pending TTL by that much (and
///   an entry that expired less than that long ago and was not yet removed is live again),
///   and one set forward shortens them.
/// - Every key lives under the backend's key prefix; scans of one backend never see the keys
///   of another whose prefix differs (prefixes must not be prefixes of one another: end
///   them with a separator such as `:`).
///
/// Where this trait departs from the guide's signatures it says why on the method.
#[async_trait]
pub trait StateBackend: Send + Sync + std::fmt::Debug + 'static {
    /// What this backend guarantees.
    fn capabilities(&self) -> Capabilities;

    /// The value of `key`, or `None` if it is absent or expired.
    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>>;

    /// Stores `value` under `key`. Any old TTL is cleared, unless the backend has a default
    /// TTL configured, which then applies.
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()>;

    /// Stores `value` under `key`, expiring after `ttl` (millisecond precision, rounded up).
    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()>;

    /// Stores `value` with JSON `metadata` (and the default TTL, if any). Backends without
    /// [`Capabilities::metadata`] return [`Unsupported`](crate::ErrorKind::Unsupported).
    async fn put_with_metadata(
        &self,
        key: &[u8],
        value: &[u8],
        metadata: serde_json::Value,
    ) -> Result<()> {
        let _ = (key, value, metadata);
        Err(StateError::unsupported(
            self.capabilities().backend,
            "put_with_metadata",
        ))
    }

    /// Deletes `key`; returns whether a live key was deleted.
    async fn delete(&self, key: &[u8]) -> Result<bool>;

    /// The values of `keys`, in the same order. One round trip per chunk where the backend
    /// has a network.
    ///
    /// Provided as one [`get`](Self::get) per key; backends override it to do better.
    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(key).await?);
        }
        Ok(values)
    }

    /// Stores every entry (as [`put`](Self::put) would). All keys are validated before any
    /// is written.
    ///
    /// Provided as one [`put`](Self::put) per entry after checking every entry against
    /// the [`Capabilities`] limits; backends override it to do better.
    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        let limits = self.capabilities().limits();
        for (key, value) in entries {
            limits.check_entry(key, value)?;
        }
        for (key, value) in entries {
            self.put(key, value).await?;
        }
        Ok(())
    }

    /// Deletes every key; returns how many live keys were deleted.
    ///
    /// Provided as one [`delete`](Self::delete) per distinct key; backends override it to do
    /// better.
    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        let limits = self.capabilities().limits();
        for key in keys {
            limits.check_key(key)?;
        }
        let mut distinct: Vec<&[u8]> = keys.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let mut deleted = 0;
        for key in distinct {
            deleted += u64::from(self.delete(key).await?);
        }
        Ok(deleted)
    }

    /// Atomically reads and deletes `key`.
    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>>;

    /// Atomically stores `value` if `key` is absent (an expired key counts as absent);
    /// returns whether it was stored.
    ///
    /// The guide passes a bare `Duration`; this takes `Option<Duration>` so that a key
    /// without expiry can be claimed too: pass `Some(ttl)` for the guide's behaviour.
    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool>;

    /// Atomically replaces the value of `key` with `new` if it currently is `expected`
    /// (`None`: the key is absent). Returns whether it was replaced. The TTL is cleared,
    /// as with [`put`](Self::put).
    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool>;

    /// Stores `value` under `key` unless a higher fencing token already wrote this key, in
    /// which case it fails with [`Fenced`](crate::ErrorKind::Fenced) and changes nothing.
    /// The highest token seen is kept per key, apart from the value: a later `put`,
    /// `delete` or expiry does not forget it; `clear` and `import(Replace)` of the namespace
    /// do.
    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()>;

    /// The remaining lifetime of `key`.
    ///
    /// The guide returned a bare duration; a persistent key then had to be reported as
    /// `Duration::MAX`. [`Ttl`] says missing, persistent or remaining plainly.
    async fn ttl(&self, key: &[u8]) -> Result<Ttl>;

    /// Streams every live entry whose key starts with `prefix` (within the backend's
    /// namespace), in bounded memory. Keys come in ascending order where
    /// [`Capabilities::ordered_scan`] holds. A scan is fuzzy: keys written while it runs may
    /// or may not appear; for a snapshot use [`export`](Self::export).
    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>>;

    /// How many live keys start with `prefix`.
    async fn count(&self, prefix: &[u8]) -> Result<u64>;

    /// Deletes every key that starts with `prefix` (and the fencing marks of those keys);
    /// returns how many live keys were deleted.
    async fn clear(&self, prefix: &[u8]) -> Result<u64>;

    /// Every live entry of the namespace, held in memory (the guide's `checkpoint().len()`).
    /// For large state prefer [`export`](Self::export), which streams.
    ///
    /// Provided as the whole [`export`](Self::export) collected, consistent where
    /// [`Capabilities::consistent_snapshot`] holds; backends override it to do better.
    async fn checkpoint(&self) -> Result<Checkpoint> {
        let taken_at = std::time::SystemTime::now();
        let consistent = self.capabilities().consistent_snapshot;
        let entries = crate::stream::try_collect(self.export(b"")).await?;
        Ok(Checkpoint::new(entries, taken_at, consistent))
    }

    /// Replaces the whole namespace with the checkpoint's entries, keeping each entry's
    /// absolute expiry (entries already expired stay absent). All or nothing where
    /// [`Capabilities::atomic_restore`] holds.
    ///
    /// Provided as [`import`](Self::import) in [`ImportMode::Replace`]; backends override it
    /// to do better.
    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        let entries = checkpoint.into_entries().into_iter().map(Ok);
        self.import(crate::stream::iter(entries), ImportMode::Replace)
            .await
            .map(|_| ())
    }

    /// Streams the live entries under `prefix` with their absolute expiry and metadata: a
    /// point-in-time snapshot where [`Capabilities::consistent_snapshot`] holds.
    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>>;

    /// Writes the streamed entries; returns how many live entries were written. `Replace`
    /// first removes every key of the namespace. All or nothing where
    /// [`Capabilities::atomic_restore`] holds: an error in the stream leaves the old state.
    async fn import(&self, entries: BoxStream<'_, Result<Entry>>, mode: ImportMode) -> Result<u64>;

    /// Checks that the backend answers.
    async fn health_check(&self) -> Result<Health>;

    /// What the backend has done since it was opened (the guide's `backend.stats()`).
    ///
    /// The operation figures are counted by a [`StatsLayer`](crate::StatsLayer), the same
    /// way for every backend; a bare backend reports only what its driver alone sees
    /// (retries, and extra figures such as connections). Layers pass the call down, so ask
    /// the outermost backend.
    async fn stats(&self) -> Stats {
        Stats::default()
    }

    /// Figures read from the server now, which only the driver can ask for: Redis's
    /// `used_memory` and connected clients, a PostgreSQL table's size and dead tuples.
    /// Each call asks the server (one or a few round trips), so poll it on an interval
    /// (`state_metrics::GaugeCollector` does), not per operation.
    ///
    /// Empty by default: backends without server-side figures report none. Layers pass
    /// the call down, so ask the outermost backend.
    async fn gauges(&self) -> Result<Vec<Gauge>> {
        Ok(Vec::new())
    }

    /// The concrete backend under any layers, for the extras of its own type (such as
    /// PostgreSQL's server-side checkpoints):
    /// `backend.as_any().and_then(|b| b.downcast_ref::<T>())`. `None` unless the backend
    /// opts in; layers pass the call down.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}
