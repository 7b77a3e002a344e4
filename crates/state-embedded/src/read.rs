//! Reads: each in one redb read transaction, which never waits for writers (MVCC).

use std::ops::Bound;

use bytes::Bytes;
use redb::{AccessGuard, Database, ReadOnlyTable, ReadTransaction, ReadableDatabase};
use state_core::{Entry, Result};

use crate::error::redb;
use crate::record::{self, Record};
use crate::tables::DATA;

pub(crate) type ReadTable = ReadOnlyTable<&'static [u8], &'static [u8]>;

pub(crate) fn begin(db: &Database) -> Result<ReadTransaction> {
    db.begin_read()
        .map_err(|e| redb("begin a read transaction", e))
}

pub(crate) fn data_table(txn: &ReadTransaction) -> Result<ReadTable> {
    txn.open_table(DATA)
        .map_err(|e| redb("open the data table", e))
}

/// The live value of `full`. The clock is read only for a record that has an expiry: a
/// point read of a persistent key costs exactly what a raw redb read does, plus the copy.
pub(crate) fn get(table: &ReadTable, full: &[u8], now: &mut Now) -> Result<Option<Bytes>> {
    match table.get(full).map_err(|e| redb("read a record", e))? {
        Some(guard) => live_value(guard.value(), now),
        None => Ok(None),
    }
}

/// A stored record found by [`lookup`], its bytes not read yet.
pub(crate) type Found = AccessGuard<'static, &'static [u8]>;

/// The stored record of `full`, if any, for [`live_values`] to decode.
pub(crate) fn lookup(table: &ReadTable, full: &[u8]) -> Result<Option<Found>> {
    table.get(full).map_err(|e| redb("read a record", e))
}

/// Batches whose live values total at most this many bytes return them as slices of one
/// buffer: one allocation instead of one per value, and a caller that keeps one value
/// keeps at most this much memory alive.
const SHARED_BUFFER_MAX: usize = 64 * 1024;

/// The live values of records found by [`lookup`], in order.
///
/// A batch looks every key up first and then decodes. A decode is the first touch of a
/// value's bytes, which a lookup (keys and offsets only) leaves out of the CPU's caches:
/// under `perf` that miss was a seventh of a batch's cycles. Interleaved with the lookups,
/// each miss waited alone; in this short loop the loads are independent, and the CPU
/// overlaps them.
pub(crate) fn live_values(found: &[Option<Found>]) -> Result<Vec<Option<Bytes>>> {
    let mut now = Now::default();
    let values = found
        .iter()
        .map(|record| match record {
            Some(record) => live_slice(record.value(), &mut now),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let total: usize = values.iter().flatten().map(|value| value.len()).sum();
    if total > SHARED_BUFFER_MAX {
        return Ok(values
            .into_iter()
            .map(|value| value.map(Bytes::copy_from_slice))
            .collect());
    }
    let mut buffer = Vec::with_capacity(total);
    for value in values.iter().flatten() {
        buffer.extend_from_slice(value);
    }
    let buffer = Bytes::from(buffer);
    let mut at = 0;
    Ok(values
        .iter()
        .map(|value| {
            value.map(|value| {
                let start = at;
                at += value.len();
                buffer.slice(start..at)
            })
        })
        .collect())
}

/// The value of a stored record if it is live at `now`.
fn live_value(stored: &[u8], now: &mut Now) -> Result<Option<Bytes>> {
    Ok(live_slice(stored, now)?.map(Bytes::copy_from_slice))
}

/// The value bytes of a stored record if it is live at `now`.
fn live_slice<'a>(stored: &'a [u8], now: &mut Now) -> Result<Option<&'a [u8]>> {
    let rec = Record::decode(stored)?;
    let live = rec.expires_ms.is_none_or(|at| at > now.ms());
    Ok(live.then_some(rec.value))
}

/// The present instant in epoch milliseconds, read from the clock once, when first needed.
#[derive(Debug, Default)]
pub(crate) struct Now(Option<u64>);

impl Now {
    pub(crate) fn ms(&mut self) -> u64 {
        *self.0.get_or_insert_with(record::now_ms)
    }
}

/// The live record of `full`, decoded into its absolute expiry.
pub(crate) fn expiry(table: &ReadTable, full: &[u8], now_ms: u64) -> Result<Option<Option<u64>>> {
    let Some(guard) = table.get(full).map_err(|e| redb("read a record", e))? else {
        return Ok(None);
    };
    let expires = record::expiry_of(guard.value())?;
    Ok(record::is_live(expires, now_ms).then_some(expires))
}

/// The range of every key that starts with `prefix`, after `after` when given.
pub(crate) fn bounds<'a>(
    prefix: &'a [u8],
    end: Option<&'a [u8]>,
    after: Option<&'a [u8]>,
) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        after.map_or(Bound::Included(prefix), Bound::Excluded),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

/// Turns a stored pair into an entry, stripping the backend's key prefix.
pub(crate) fn entry(full: &[u8], stored: &[u8], strip: usize) -> Result<Entry> {
    let rec = Record::decode(stored)?;
    Ok(Entry {
        key: Bytes::copy_from_slice(full.get(strip..).unwrap_or_default()),
        value: Bytes::copy_from_slice(rec.value),
        expires_at: rec.expires_ms.map(record::from_ms),
        metadata: rec.metadata_json()?,
    })
}

/// Visits the live entries under `prefix` (after `after`) in key order until `visit` returns
/// false. Returns the last key looked at, live or not, so a paged scan can resume after it.
pub(crate) fn for_each_live(
    table: &ReadTable,
    prefix: &[u8],
    after: Option<&[u8]>,
    now_ms: u64,
    strip: usize,
    mut visit: impl FnMut(Entry) -> bool,
) -> Result<()> {
    let end = record::prefix_end(prefix);
    let range = table
        .range::<&[u8]>(bounds(prefix, end.as_deref(), after))
        .map_err(|e| redb("scan the data table", e))?;
    for item in range {
        let (key, value) = item.map_err(|e| redb("scan the data table", e))?;
        if !record::is_live(record::expiry_of(value.value())?, now_ms) {
            continue;
        }
        if !visit(entry(key.value(), value.value(), strip)?) {
            break;
        }
    }
    Ok(())
}

/// One page of a scan: at most `limit` keys looked at (live or not), the live ones as
/// entries, and the last key looked at (`None` when the range is exhausted).
pub(crate) fn page(
    db: &Database,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    strip: usize,
) -> Result<(Vec<Entry>, Option<Vec<u8>>)> {
    let txn = begin(db)?;
    let table = data_table(&txn)?;
    let now_ms = record::now_ms();
    let end = record::prefix_end(prefix);
    let range = table
        .range::<&[u8]>(bounds(prefix, end.as_deref(), after))
        .map_err(|e| redb("scan the data table", e))?;
    let mut entries = Vec::new();
    let mut last = None;
    let mut looked = 0;
    for item in range {
        let (key, value) = item.map_err(|e| redb("scan the data table", e))?;
        looked += 1;
        if record::is_live(record::expiry_of(value.value())?, now_ms) {
            entries.push(entry(key.value(), value.value(), strip)?);
        }
        if looked == limit {
            last = Some(key.value().to_vec());
            break;
        }
    }
    Ok((entries, last))
}

/// How many live keys start with `prefix`.
pub(crate) fn count(db: &Database, prefix: &[u8]) -> Result<u64> {
    let txn = begin(db)?;
    let table = data_table(&txn)?;
    let now_ms = record::now_ms();
    let end = record::prefix_end(prefix);
    let range = table
        .range::<&[u8]>(bounds(prefix, end.as_deref(), None))
        .map_err(|e| redb("scan the data table", e))?;
    let mut live = 0;
    for item in range {
        let (_, value) = item.map_err(|e| redb("scan the data table", e))?;
        if record::is_live(record::expiry_of(value.value())?, now_ms) {
            live += 1;
        }
    }
    Ok(live)
}
