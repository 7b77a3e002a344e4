//! PostgreSQL's binary `COPY` format, both ways, as pure functions over bytes: the export
//! reads rows of `COPY (SELECT …) TO STDOUT (FORMAT binary)`, the import writes rows for
//! `COPY … FROM STDIN (FORMAT binary)`.
//!
//! The format (<https://www.postgresql.org/docs/current/sql-copy.html>): an 11-byte
//! signature, a 4-byte flags field, a 4-byte header-extension length and that many bytes;
//! then per row a 2-byte field count and per field a 4-byte length (-1 for NULL) and the
//! bytes; then a field count of -1. Integers are big-endian. The messages that carry the
//! stream need not line up with rows, so the reader keeps the unfinished tail of one
//! message (never more than one row) until the next arrives.

use bytes::{Buf, Bytes, BytesMut};
use state_core::{Result, StateError};

/// The first 11 bytes of every binary COPY stream.
pub(crate) const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The largest field PostgreSQL can send (1 GiB): a longer declared length is corruption,
/// and it bounds what the reader buffers for one row.
const MAX_FIELD: usize = 1 << 30;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC), the origin
/// of binary `timestamptz` values.
pub(crate) const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// One row: `N` fields, each `None` for SQL NULL. The fields share the received buffer.
pub(crate) type Fields<const N: usize> = [Option<Bytes>; N];

/// An incremental reader of a binary COPY stream whose rows have `N` fields.
#[derive(Debug, Default)]
pub(crate) struct CopyReader<const N: usize> {
    /// The unfinished tail of what was fed so far (at most the header or one row).
    pending: BytesMut,
    /// How many bytes `pending` must hold before parsing can make progress again.
    need: usize,
    header_done: bool,
    trailer_seen: bool,
}

/// Why parsing stopped inside `data`.
enum Step<T> {
    Done(T),
    /// Not enough bytes yet: at least this many are needed from the start of the slice.
    More(usize),
}

impl<const N: usize> CopyReader<N> {
    pub fn new() -> Self {
        CopyReader {
            pending: BytesMut::new(),
            need: 0,
            header_done: false,
            trailer_seen: false,
        }
    }

    /// Parses what `chunk` completes and hands each whole row to `each`, in order.
    pub fn feed(
        &mut self,
        chunk: Bytes,
        mut each: impl FnMut(Fields<N>) -> Result<()>,
    ) -> Result<()> {
        let mut data = if self.pending.is_empty() {
            chunk
        } else {
            self.pending.extend_from_slice(&chunk);
            if self.pending.len() < self.need {
                return Ok(());
            }
            self.pending.split().freeze()
        };
        loop {
            if self.trailer_seen {
                if data.has_remaining() {
                    return Err(corrupt("bytes follow the end-of-data marker"));
                }
                return Ok(());
            }
            let step = if self.header_done {
                parse_row::<N>(&data)?
            } else {
                parse_header(&data)?
            };
            match step {
                Step::Done((used, row)) => {
                    let row_data = data.split_to(used);
                    match row {
                        Parsed::Header => self.header_done = true,
                        Parsed::Trailer => self.trailer_seen = true,
                        Parsed::Row(spans) => each(spans.map(|span| {
                            span.map(|(start, len)| row_data.slice(start..start + len))
                        }))?,
                    }
                }
                Step::More(need) => {
                    self.pending.extend_from_slice(&data);
                    self.need = need;
                    return Ok(());
                }
            }
        }
    }

    /// Checks that the stream ended where a stream may end: after the end-of-data marker,
    /// with nothing left over.
    pub fn finish(&self) -> Result<()> {
        if !self.trailer_seen {
            let what = if self.header_done {
                "the stream ended before its end-of-data marker (truncated)"
            } else {
                "the stream ended before its header was complete (truncated)"
            };
            return Err(corrupt(what));
        }
        Ok(())
    }
}

enum Parsed<const N: usize> {
    Header,
    Trailer,
    /// Each field's `(offset, length)` inside the row's bytes, `None` for NULL.
    Row([Option<(usize, usize)>; N]),
}

fn parse_header<const N: usize>(data: &[u8]) -> Result<Step<(usize, Parsed<N>)>> {
    let fixed = SIGNATURE.len() + 8;
    if data.len() < SIGNATURE.len() {
        // A wrong signature is reported as soon as its first bytes differ.
        if !SIGNATURE.starts_with(data) {
            return Err(corrupt(
                "the stream does not start with the binary COPY signature",
            ));
        }
        return Ok(Step::More(fixed));
    }
    if &data[..SIGNATURE.len()] != SIGNATURE {
        return Err(corrupt(
            "the stream does not start with the binary COPY signature",
        ));
    }
    let (Some(flags), Some(extension)) = (
        be_i32(data, SIGNATURE.len()),
        be_i32(data, SIGNATURE.len() + 4),
    ) else {
        return Ok(Step::More(fixed));
    };
    // Bit 16 means OIDs are included; bits 17-31 mark features this reader cannot skip.
    if flags as u32 & 0xFFFF_0000 != 0 {
        return Err(corrupt(format!(
            "the header has flags {flags:#x} this reader does not know"
        )));
    }
    let extension = usize::try_from(extension)
        .ok()
        .filter(|&len| len <= MAX_FIELD)
        .ok_or_else(|| {
            corrupt(format!(
                "the header extension length {extension} is invalid"
            ))
        })?;
    let total = fixed + extension;
    if data.len() < total {
        return Ok(Step::More(total));
    }
    Ok(Step::Done((total, Parsed::Header)))
}

fn parse_row<const N: usize>(data: &[u8]) -> Result<Step<(usize, Parsed<N>)>> {
    let Some(count) = be_i16(data, 0) else {
        return Ok(Step::More(2));
    };
    if count == -1 {
        return Ok(Step::Done((2, Parsed::Trailer)));
    }
    if usize::try_from(count).ok() != Some(N) {
        return Err(corrupt(format!(
            "a row has {count} fields where {N} were asked for"
        )));
    }
    let mut spans = [None; N];
    let mut at = 2;
    for span in spans.iter_mut() {
        let Some(len) = be_i32(data, at) else {
            return Ok(Step::More(at + 4));
        };
        at += 4;
        if len == -1 {
            continue;
        }
        let len = usize::try_from(len)
            .ok()
            .filter(|&len| len <= MAX_FIELD)
            .ok_or_else(|| corrupt(format!("a field has the invalid length {len}")))?;
        if data.len() < at + len {
            return Ok(Step::More(at + len));
        }
        *span = Some((at, len));
        at += len;
    }
    Ok(Step::Done((at, Parsed::Row(spans))))
}

fn be_i16(data: &[u8], at: usize) -> Option<i16> {
    let bytes = data.get(at..at.checked_add(2)?)?;
    Some(i16::from_be_bytes([bytes[0], bytes[1]]))
}

fn be_i32(data: &[u8], at: usize) -> Option<i32> {
    let bytes: [u8; 4] = data.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(i32::from_be_bytes(bytes))
}

fn corrupt(what: impl std::fmt::Display) -> StateError {
    StateError::corrupt(format!(
        "the binary COPY stream from PostgreSQL is malformed: {what}; the export stopped, \
         try again (a proxy between client and server may be altering the stream)"
    ))
}

/// A `bytea` field.
pub(crate) fn bytes_field(field: Option<Bytes>, name: &str) -> Result<Bytes> {
    field.ok_or_else(|| corrupt(format!("the {name} column is NULL")))
}

/// A `timestamptz` field as microseconds since the Unix epoch; `None` for NULL and for
/// `+infinity` (which never passes), `-infinity` as the earliest time.
pub(crate) fn timestamptz_field(field: Option<&[u8]>) -> Result<Option<i64>> {
    let Some(data) = field else {
        return Ok(None);
    };
    let raw: [u8; 8] = data
        .try_into()
        .map_err(|_| corrupt(format!("a timestamptz field has {} bytes", data.len())))?;
    match i64::from_be_bytes(raw) {
        i64::MAX => Ok(None),
        pg => Ok(Some(pg.saturating_add(PG_EPOCH_UNIX_MICROS))),
    }
}

/// A `jsonb` field: a version byte (1) and the JSON text.
pub(crate) fn jsonb_field(field: Option<&[u8]>) -> Result<Option<serde_json::Value>> {
    let Some(data) = field else {
        return Ok(None);
    };
    let Some((1, text)) = data.split_first() else {
        return Err(corrupt(
            "a jsonb field is not in version 1 of the binary format",
        ));
    };
    serde_json::from_slice(text)
        .map(Some)
        .map_err(|e| corrupt(format!("a jsonb field is not JSON ({e})")))
}

/// The header of a stream written for `COPY … FROM STDIN (FORMAT binary)`.
pub(crate) fn write_header(out: &mut Vec<u8>) {
    out.extend_from_slice(SIGNATURE);
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
}

/// The end-of-data marker.
pub(crate) fn write_trailer(out: &mut Vec<u8>) {
    out.extend_from_slice(&(-1i16).to_be_bytes());
}

/// One row of `(key bytea, value bytea, metadata jsonb, expires_at timestamptz)`; the key
/// is `prefix` followed by `key`, `expires_at` in microseconds since the Unix epoch.
pub(crate) fn write_entry(
    out: &mut Vec<u8>,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    metadata: Option<&serde_json::Value>,
    expires_at: Option<i64>,
) -> Result<()> {
    let start = out.len();
    let written = write_entry_fields(out, prefix, key, value, metadata, expires_at);
    if written.is_err() {
        // Nothing of a refused row stays in the buffer.
        out.truncate(start);
    }
    written
}

fn write_entry_fields(
    out: &mut Vec<u8>,
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    metadata: Option<&serde_json::Value>,
    expires_at: Option<i64>,
) -> Result<()> {
    out.extend_from_slice(&4i16.to_be_bytes());
    put_len(out, prefix.len() + key.len())?;
    out.extend_from_slice(prefix);
    out.extend_from_slice(key);
    put_len(out, value.len())?;
    out.extend_from_slice(value);
    match metadata {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(json) => {
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            out.push(1);
            serde_json::to_writer(&mut *out, json).map_err(|e| {
                StateError::invalid_input(format!("metadata is not serialisable JSON: {e}"))
            })?;
            let len = i32::try_from(out.len() - at - 4).map_err(|_| too_long("metadata"))?;
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
    match expires_at {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(unix) => {
            let pg = unix.checked_sub(PG_EPOCH_UNIX_MICROS).ok_or_else(|| {
                StateError::invalid_input("an expiry time is outside the supported range")
            })?;
            out.extend_from_slice(&8i32.to_be_bytes());
            out.extend_from_slice(&pg.to_be_bytes());
        }
    }
    Ok(())
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    let len = i32::try_from(len)
        .ok()
        .filter(|&l| l as usize <= MAX_FIELD)
        .ok_or_else(|| too_long("a key or value"))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

fn too_long(what: &str) -> StateError {
    StateError::invalid_input(format!(
        "{what} is longer than PostgreSQL's 1 GiB field limit; store smaller values"
    ))
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
