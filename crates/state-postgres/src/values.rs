//! Values out of rows: a bytea column, or the `bytea[]` row of a batch read
//! ([`batch_read`](crate::batch_read)), cut here into values; which of the two forms a
//! batch read takes ([`ValueSizes`]); full keys of a batch in one buffer ([`FullKeys`]);
//! the writes of a batch that take effect ([`last_per_key`]).
//!
//! Every value is copied out of its row. A `Bytes` sharing the row's buffer would save
//! the copy, but sqlx cuts each message out of its connection's read buffer, so a value
//! the application keeps would keep that whole allocation alive (8 KiB or far more, for
//! a value of a few bytes): memory that grows with what callers hold, not with what they
//! read.

use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use sqlx::postgres::{PgRow, PgValueFormat};
use sqlx::{Postgres, Row, Type};
use state_core::{Result, StateError};

use crate::error::convert;

/// SQLSTATE `program_limit_exceeded`: here, values too large together for one array.
const PROGRAM_LIMIT_EXCEEDED: &str = "54000";

/// Above this mean value size, batch reads take a row per key: the server builds an
/// array by copying every value into it, which for 16 KiB values cost more server time
/// (on the same cores) than the rows' client overhead it saves (16 tasks: 27k gets/s
/// against 35k).
const ARRAY_MAX_MEAN: usize = 2048;

/// A running mean of the sizes of the values batch reads found (an exponential moving
/// average over batches; relaxed atomics: a stale mean only picks the slower statement
/// for a while).
#[derive(Default)]
pub(crate) struct ValueSizes {
    mean: AtomicUsize,
}

impl ValueSizes {
    /// Whether the values read lately were small enough for the array statement.
    pub(crate) fn small(&self) -> bool {
        self.mean.load(Ordering::Relaxed) <= ARRAY_MAX_MEAN
    }

    /// Folds the mean size of `values` found into the running mean (weight 1/8).
    pub(crate) fn record(&self, values: &[Option<Bytes>]) {
        let (bytes, found) = values.iter().flatten().fold((0usize, 0usize), |(b, n), v| {
            (b.saturating_add(v.len()), n + 1)
        });
        if found == 0 {
            return;
        }
        let batch = bytes / found;
        let old = self.mean.load(Ordering::Relaxed);
        let new = old - old / 8 + batch / 8;
        self.mean.store(new, Ordering::Relaxed);
    }
}

pub(crate) fn is_program_limit(err: &StateError) -> bool {
    std::error::Error::source(err)
        .and_then(|source| source.downcast_ref::<sqlx::Error>())
        .and_then(|err| err.as_database_error())
        .and_then(|db| db.code())
        .is_some_and(|code| code == PROGRAM_LIMIT_EXCEEDED)
}

/// The `n` values of the `batch_get_array` row, each a slice of the row's buffer.
pub(crate) fn values_of_array(row: PgRow, n: usize, what: &str) -> Result<Vec<Option<Bytes>>> {
    let value = row.try_get_raw(0).map_err(|e| convert(e, what, true))?;
    let is_binary_bytea_array = value.format() == PgValueFormat::Binary
        && <Vec<&[u8]> as Type<Postgres>>::compatible(&sqlx::ValueRef::type_info(&value));
    if !is_binary_bytea_array || sqlx::ValueRef::is_null(&value) {
        return Err(StateError::corrupt(format!(
            "{what}: the server did not answer with a binary bytea array"
        )));
    }
    let array = value
        .as_bytes()
        .map_err(|e| convert(sqlx::Error::Decode(e), what, true))?;
    bytea_array(array, n).ok_or_else(|| {
        StateError::corrupt(format!(
            "{what}: the server's array is malformed or does not hold {n} values"
        ))
    })
}

/// Parses a one-dimensional `bytea[]` in PostgreSQL's binary array format (`ndim`,
/// flags, element type, then per dimension its length and lower bound, then each element
/// as a length, -1 for NULL, and its bytes) into slices of `array`; `None` unless it is
/// well formed and holds exactly `n` elements.
fn bytea_array(array: &[u8], n: usize) -> Option<Vec<Option<Bytes>>> {
    let mut at = 0;
    let int = |at: &mut usize| -> Option<i32> {
        let bytes = array.get(*at..at.checked_add(4)?)?;
        *at += 4;
        Some(i32::from_be_bytes(bytes.try_into().ok()?))
    };
    let ndim = int(&mut at)?;
    let _flags = int(&mut at)?;
    let _element_type = int(&mut at)?;
    if ndim == 0 {
        return (n == 0 && at == array.len()).then(Vec::new);
    }
    let len = int(&mut at)?;
    let _lower_bound = int(&mut at)?;
    if ndim != 1 || usize::try_from(len).ok()? != n {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = int(&mut at)?;
        if len == -1 {
            out.push(None);
            continue;
        }
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        if end > array.len() {
            return None;
        }
        out.push(Some(Bytes::copy_from_slice(array.get(at..end)?)));
        at = end;
    }
    (at == array.len()).then_some(out)
}

/// Column `index` of `row`, a non-null bytea, copied out (see the module's note).
pub(crate) fn take_bytes(row: PgRow, index: usize, what: &str) -> Result<Bytes> {
    let value = row
        .try_get::<&[u8], _>(index)
        .map_err(|e| convert(e, what, true))?;
    Ok(Bytes::copy_from_slice(value))
}

/// Full keys, end to end in one buffer, with where each ends: a batch costs two
/// allocations instead of one per key (a tenth of a 100-key batch_get's own
/// instructions went to them).
pub(crate) struct FullKeys {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl FullKeys {
    /// `prefix` before each of `keys`.
    pub(crate) fn new(prefix: &[u8], keys: &[&[u8]]) -> FullKeys {
        let total = keys.iter().map(|k| prefix.len() + k.len()).sum();
        let mut full = FullKeys {
            bytes: Vec::with_capacity(total),
            ends: Vec::with_capacity(keys.len()),
        };
        for key in keys {
            full.bytes.extend_from_slice(prefix);
            full.bytes.extend_from_slice(key);
            full.ends.push(full.bytes.len());
        }
        full
    }

    /// How many keys.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// Their bytes, end to end.
    pub(crate) fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Each key as a slice of the buffer, in order (binds as `bytea[]`).
    pub(crate) fn slices(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let key = self.bytes.get(start..end).unwrap_or_default();
                start = end;
                key
            })
            .collect()
    }
}

/// Each key's last write among `writes`, in key order: later writes of a key win, as they
/// would in sequence, and statements that lock rows in key order cannot deadlock one
/// another. A stable sort of the writes reversed puts each key's last write first among
/// its equals, and `dedup_by` keeps the first: one allocation, where a `BTreeMap` took
/// one per key (about 5 % of the client's CPU in a batch-put run).
pub(crate) fn last_per_key<T>(
    writes: impl DoubleEndedIterator<Item = T>,
    key: impl Fn(&T) -> &[u8],
) -> Vec<T> {
    let mut out: Vec<T> = writes.rev().collect();
    out.sort_by(|a, b| key(a).cmp(key(b)));
    out.dedup_by(|later, kept| key(later) == key(kept));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary `bytea[]` of `elements` (`None`: NULL).
    fn encode(elements: &[Option<&[u8]>]) -> Bytes {
        let mut out = Vec::new();
        let has_null = elements.iter().any(Option::is_none);
        for int in [1, i32::from(has_null), 17, elements.len() as i32, 1] {
            out.extend_from_slice(&int.to_be_bytes());
        }
        for element in elements {
            match element {
                Some(bytes) => {
                    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                    out.extend_from_slice(bytes);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        Bytes::from(out)
    }

    #[test]
    fn large_values_switch_to_rows_and_small_ones_back() {
        let sizes = ValueSizes::default();
        assert!(sizes.small(), "arrays until values are seen");
        let large = vec![Some(Bytes::from(vec![0; 16 * 1024])), None];
        for _ in 0..2 {
            sizes.record(&large);
        }
        assert!(!sizes.small());
        sizes.record(&[None]);
        assert!(!sizes.small(), "a batch that found nothing changes nothing");
        let small = vec![Some(Bytes::from_static(b"v")); 3];
        for _ in 0..20 {
            sizes.record(&small);
        }
        assert!(sizes.small());
    }

    #[test]
    fn arrays_parse_into_slices_with_nulls_in_place() {
        let array = encode(&[Some(b"a"), None, Some(b""), Some(b"xyz")]);
        let values = bytea_array(&array, 4).expect("a well-formed array");
        let expected: Vec<Option<Bytes>> = vec![
            Some(Bytes::from_static(b"a")),
            None,
            Some(Bytes::new()),
            Some(Bytes::from_static(b"xyz")),
        ];
        assert_eq!(values, expected);
    }

    #[test]
    fn malformed_arrays_are_refused_without_panicking() {
        let array = encode(&[Some(b"abc"), None]);
        assert!(bytea_array(&array, 3).is_none(), "wrong count");
        for cut in 0..array.len() {
            assert!(
                bytea_array(&array.slice(..cut), 2).is_none(),
                "cut at {cut}"
            );
        }
        let mut longer = array.to_vec();
        longer.push(0);
        assert!(
            bytea_array(&Bytes::from(longer), 2).is_none(),
            "trailing bytes"
        );
        let empty = Bytes::from([0i32, 0, 17].map(i32::to_be_bytes).concat());
        assert_eq!(bytea_array(&empty, 0), Some(Vec::new()));
        assert!(bytea_array(&empty, 1).is_none());
    }

    #[test]
    fn last_per_key_keeps_each_keys_last_write_in_key_order() {
        let writes: [(&[u8], u8); 7] = [
            (b"b", 1),
            (b"a", 2),
            (b"b", 3),
            (b"c", 4),
            (b"a", 5),
            (b"b", 6),
            (b"", 7),
        ];
        let latest = last_per_key(writes.into_iter(), |(key, _)| key);
        assert_eq!(
            latest,
            [
                (&b""[..], 7),
                (&b"a"[..], 5),
                (&b"b"[..], 6),
                (&b"c"[..], 4)
            ]
        );
        assert!(last_per_key(std::iter::empty::<(&[u8], u8)>(), |(key, _)| key).is_empty());
    }
}
