//! The write transaction: its frame ([`Core::transact`]: durability, bounded expiry sweep,
//! commit) and what a write call does in it ([`Writer`]). The writer thread
//! ([`crate::group`]) and imports run their transactions through it.

use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use redb::{Database, ReadableTable, WriteTransaction};
use state_core::{Result, StateError};

use crate::error::redb;
use crate::flush::FlushState;
use crate::record::{self, Record, expiry_key, split_expiry_key};
use crate::snapshot::Snapshots;
use crate::tables::{DATA, DataTable, EXPIRY, ExpiryTable, FENCES, FenceTable};

/// How many keys a `clear` removes per step; bounds its memory, not its atomicity.
const CLEAR_CHUNK: usize = 512;

/// The write-transaction frame, shared by the writer thread and imports.
pub(crate) struct Core {
    pub(crate) db: Arc<Database>,
    /// A lower bound on the earliest expiry in the index (`u64::MAX`: none), so that writes
    /// skip the sweep without touching the index while nothing has expired.
    pub(crate) next_expiry: AtomicU64,
    /// The flusher's counters in `Eventual` mode: commits skip the `fsync` and are counted.
    pub(crate) flush: Option<Arc<FlushState>>,
    /// The snapshots point reads keep between commits, made stale by every commit here.
    pub(crate) snapshots: Snapshots,
}

/// Why a write transaction did not commit.
pub(crate) enum Failure {
    /// The body (a write call's closure) failed.
    Call(StateError),
    /// The transaction itself failed: begin, opening the tables, the sweep, or the commit.
    Frame(StateError),
}

impl Core {
    /// Runs `body` in one write transaction, sweeps up to `sweep` expired entries, and
    /// commits with the configured durability; any error rolls everything back.
    pub(crate) fn transact<T>(
        &self,
        sweep: usize,
        body: impl FnOnce(&mut Writer<'_>) -> Result<T>,
    ) -> Result<T, Failure> {
        let mut txn = self
            .db
            .begin_write()
            .map_err(|e| Failure::Frame(redb("begin a write transaction", e)))?;
        if self.flush.is_some() {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| Failure::Frame(redb("set the commit durability", e)))?;
        }
        let result = match Writer::new(&txn, &self.next_expiry) {
            Err(e) => Err(Failure::Frame(e)),
            Ok(mut writer) => match body(&mut writer) {
                Err(e) => Err(Failure::Call(e)),
                Ok(out) => writer
                    .sweep(sweep, false)
                    .map(|_| out)
                    .map_err(Failure::Frame),
            },
        };
        match result {
            Ok(out) => {
                self.snapshots.committing();
                let committed = txn.commit();
                self.snapshots.committed();
                if let Err(e) = committed {
                    // The sweep may have lowered nothing yet raised the hint; recheck next time.
                    self.reset_expiry_hint();
                    return Err(Failure::Frame(redb("commit", e)));
                }
                if let Some(flush) = &self.flush {
                    flush.commits.fetch_add(1, Ordering::AcqRel);
                }
                Ok(out)
            }
            Err(e) => {
                self.reset_expiry_hint();
                // Dropping also aborts; aborting explicitly frees the pages at once.
                let _ = txn.abort();
                Err(e)
            }
        }
    }

    /// Makes the next write look at the expiry index, after a rollback that may have left
    /// the hint too high.
    pub(crate) fn reset_expiry_hint(&self) {
        self.next_expiry.store(0, Ordering::Relaxed);
    }
}

/// The tables of one write transaction, the index ones opened only when needed.
pub(crate) struct Writer<'t> {
    txn: &'t WriteTransaction,
    /// The instant every liveness check of this transaction uses.
    pub(crate) now_ms: u64,
    pub(crate) data: DataTable<'t>,
    expiry: Option<ExpiryTable<'t>>,
    fences: Option<FenceTable<'t>>,
    next_expiry: &'t AtomicU64,
}

fn open_expiry<'a, 't>(
    slot: &'a mut Option<ExpiryTable<'t>>,
    txn: &'t WriteTransaction,
) -> Result<&'a mut ExpiryTable<'t>> {
    if slot.is_none() {
        *slot = Some(
            txn.open_table(EXPIRY)
                .map_err(|e| redb("open the expiry index", e))?,
        );
    }
    slot.as_mut()
        .ok_or_else(|| StateError::new(state_core::ErrorKind::Backend, "expiry index not open"))
}

impl<'t> Writer<'t> {
    fn new(txn: &'t WriteTransaction, next_expiry: &'t AtomicU64) -> Result<Self> {
        let data = txn
            .open_table(DATA)
            .map_err(|e| redb("open the data table", e))?;
        Ok(Writer {
            txn,
            now_ms: record::now_ms(),
            data,
            expiry: None,
            fences: None,
            next_expiry,
        })
    }

    /// Stores an encoded record and keeps the expiry index in step with it.
    pub(crate) fn put(&mut self, full: &[u8], record: &[u8], expires: Option<u64>) -> Result<()> {
        let old = self
            .data
            .insert(full, record)
            .map_err(|e| redb("write a record", e))?
            // A damaged old record leaves at worst a stale index entry, which the sweep
            // recognises and drops: never a reason to refuse the overwrite.
            .and_then(|old| record::expiry_of(old.value()).ok().flatten());
        self.reindex(full, old, expires)
    }

    fn reindex(&mut self, full: &[u8], old: Option<u64>, new: Option<u64>) -> Result<()> {
        if old == new {
            return Ok(());
        }
        let expiry = open_expiry(&mut self.expiry, self.txn)?;
        if let Some(old) = old {
            expiry
                .remove(expiry_key(old, full).as_slice())
                .map_err(|e| redb("update the expiry index", e))?;
        }
        if let Some(new) = new {
            expiry
                .insert(expiry_key(new, full).as_slice(), ())
                .map_err(|e| redb("update the expiry index", e))?;
            self.next_expiry.fetch_min(new, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Removes `full`; returns its value if it was live.
    pub(crate) fn take(&mut self, full: &[u8]) -> Result<Option<Bytes>> {
        let now_ms = self.now_ms;
        let (expires, value) = {
            let removed = self
                .data
                .remove(full)
                .map_err(|e| redb("delete a record", e))?;
            let Some(guard) = removed else {
                return Ok(None);
            };
            match Record::decode(guard.value()) {
                Ok(rec) => (
                    rec.expires_ms,
                    rec.is_live(now_ms)
                        .then(|| Bytes::copy_from_slice(rec.value)),
                ),
                // Deleting a damaged record is how a user gets rid of it.
                Err(_) => (None, None),
            }
        };
        self.reindex(full, expires, None)?;
        Ok(value)
    }

    /// Removes `full`; returns whether it was live.
    pub(crate) fn remove(&mut self, full: &[u8]) -> Result<bool> {
        let expires = {
            let removed = self
                .data
                .remove(full)
                .map_err(|e| redb("delete a record", e))?;
            let Some(guard) = removed else {
                return Ok(false);
            };
            record::expiry_of(guard.value()).ok().flatten()
        };
        self.reindex(full, expires, None)?;
        Ok(record::is_live(expires, self.now_ms))
    }

    /// Whether `full` holds a live record whose value is `expected` (`None`: no live record).
    pub(crate) fn live_value_is(&self, full: &[u8], expected: Option<&[u8]>) -> Result<bool> {
        let current = self.data.get(full).map_err(|e| redb("read a record", e))?;
        let Some(guard) = current else {
            return Ok(expected.is_none());
        };
        let rec = Record::decode(guard.value())?;
        let value = rec.is_live(self.now_ms).then_some(rec.value);
        Ok(value == expected)
    }

    /// Fails with `Fenced` if a higher token wrote `full`; records `token` otherwise.
    pub(crate) fn fence(&mut self, full: &[u8], token: u64) -> Result<()> {
        if self.fences.is_none() {
            self.fences = Some(
                self.txn
                    .open_table(FENCES)
                    .map_err(|e| redb("open the fences table", e))?,
            );
        }
        let Some(fences) = self.fences.as_mut() else {
            return Ok(());
        };
        let current = fences
            .get(full)
            .map_err(|e| redb("read a fencing token", e))?
            .map(|g| g.value());
        if let Some(current) = current
            && current > token
        {
            return Err(StateError::fenced(token, current));
        }
        fences
            .insert(full, token)
            .map_err(|e| redb("write a fencing token", e))?;
        Ok(())
    }

    /// Deletes every record and fencing mark under `prefix`; returns how many were live.
    /// Works in chunks so memory stays bounded however large the namespace is.
    pub(crate) fn clear_prefix(&mut self, prefix: &[u8]) -> Result<u64> {
        let end = record::prefix_end(prefix);
        let range = || -> (Bound<&[u8]>, Bound<&[u8]>) {
            (
                Bound::Included(prefix),
                end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
            )
        };
        let mut live = 0;
        loop {
            let mut chunk: Vec<(Vec<u8>, Option<u64>)> = Vec::new();
            for item in self
                .data
                .range::<&[u8]>(range())
                .map_err(|e| redb("scan the data table", e))?
            {
                let (key, value) = item.map_err(|e| redb("scan the data table", e))?;
                chunk.push((
                    key.value().to_vec(),
                    record::expiry_of(value.value()).ok().flatten(),
                ));
                if chunk.len() == CLEAR_CHUNK {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            for (key, expires) in &chunk {
                self.data
                    .remove(key.as_slice())
                    .map_err(|e| redb("delete a record", e))?;
                self.reindex(key, *expires, None)?;
                if record::is_live(*expires, self.now_ms) {
                    live += 1;
                }
            }
        }
        if self.fences.is_none() {
            self.fences = Some(
                self.txn
                    .open_table(FENCES)
                    .map_err(|e| redb("open the fences table", e))?,
            );
        }
        if let Some(fences) = self.fences.as_mut() {
            fences
                .retain_in::<&[u8], _>(range(), |_, _| false)
                .map_err(|e| redb("delete fencing marks", e))?;
        }
        Ok(live)
    }

    /// Reclaims at most `max` expired entries, oldest first, through the index. Unless
    /// `force`, does nothing while the earliest known expiry lies in the future.
    pub(crate) fn sweep(&mut self, max: usize, force: bool) -> Result<usize> {
        if max == 0 || (!force && self.next_expiry.load(Ordering::Relaxed) > self.now_ms) {
            return Ok(0);
        }
        let expiry = open_expiry(&mut self.expiry, self.txn)?;
        let mut swept = 0;
        let next = loop {
            let first = expiry
                .first()
                .map_err(|e| redb("read the expiry index", e))?
                .map(|(k, _)| k.value().to_vec());
            let Some(index_key) = first else {
                break u64::MAX;
            };
            let (at, full) = split_expiry_key(&index_key)?;
            if at > self.now_ms || swept == max {
                break at;
            }
            expiry
                .remove(index_key.as_slice())
                .map_err(|e| redb("update the expiry index", e))?;
            // The record may have been rewritten with another expiry: only an entry that
            // still carries this expiry is the one the index points at.
            let current = self
                .data
                .get(full)
                .map_err(|e| redb("read a record", e))?
                .map(|g| record::expiry_of(g.value()).ok().flatten());
            if current == Some(Some(at)) {
                self.data
                    .remove(full)
                    .map_err(|e| redb("delete an expired record", e))?;
                swept += 1;
            }
        };
        self.next_expiry.store(next, Ordering::Relaxed);
        Ok(swept)
    }
}
