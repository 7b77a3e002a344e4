//! The write side of `import` (and so of `restore`).
//!
//! Merge: entries gathered into bounded chunks, each written by one `INSERT … ON CONFLICT`
//! statement inside the import's transaction.
//!
//! Replace: the namespace is cleared in the import's transaction, so a row can only meet
//! an earlier row of the same stream. Rows go through `COPY … FROM STDIN (FORMAT binary)`
//! (the upsert statement cost 2.1 x psql's COPY of the same rows), except a key that may
//! have come before (see [`SeenKeys`]): those gather in a chunk for the upsert statement
//! (a key repeated within the chunk keeps its last entry), written when the chunk is
//! full or the stream ends, after the COPY segment in progress is finished, so the later
//! row wins. Expired
//! entries are dropped against the transaction's own `now()`, which every later read of
//! the transaction compares with too; an expired repeat goes through the upsert path,
//! which deletes the earlier row. Memory: the filter (fixed), one send buffer, one chunk.

use std::collections::HashMap;

use sqlx::{PgConnection, Row};
use state_core::{BoxStream, Entry, Result, StateError, stream};

use crate::conn::Checkout;
use crate::copy::{write_entry, write_header, write_trailer};
use crate::driver::{CHUNK_BYTES, CHUNK_ROWS, PostgresStateBackend, decode, time_to_micros};
use crate::error::convert;
use crate::seen::SeenKeys;

/// COPY data sent to the server at a time.
const SEND_BYTES: usize = 256 * 1024;

/// How one COPY segment ended.
enum SegmentEnd {
    /// The stream is exhausted.
    Done,
    /// The upsert chunk must be written before this entry (with its full key) joins it.
    Flush(Vec<u8>, Entry),
    /// The stream or an entry failed; the COPY was aborted.
    Failed,
}

impl PostgresStateBackend {
    /// Writes `entries` into the namespace that `c`'s open transaction has just cleared.
    pub(crate) async fn import_replace(
        &self,
        c: &mut Checkout<'_>,
        entries: &mut BoxStream<'_, Result<Entry>>,
    ) -> Result<u64> {
        let row = c
            .fetch_one("import", sqlx::query(self.inner.sql.now_micros.clone()))
            .await?;
        let now: i64 = decode(&row, 0, "import")?;
        self.allow_long_statement(c, "import").await?;
        let mut seen = SeenKeys::new();
        let mut side = Chunk::default();
        let mut written = 0;
        loop {
            let mut failed = None;
            let copied = {
                let conn = c.begin_query()?;
                self.copy_segment(conn, entries, now, &mut seen, &mut side, &mut failed)
                    .await
            };
            let copied = c.settle("import", copied);
            if let Some(err) = failed {
                return Err(err);
            }
            let (rows, end) = copied?;
            written += rows;
            match end {
                SegmentEnd::Done => return Ok(written + self.import_chunk(c, &mut side).await?),
                SegmentEnd::Flush(full, entry) => {
                    written += self.import_chunk(c, &mut side).await?;
                    side.push(full, entry)?;
                }
                SegmentEnd::Failed => {
                    return Err(StateError::new(
                        state_core::ErrorKind::Backend,
                        "internal error: an import segment failed without an error",
                    ));
                }
            }
        }
    }

    /// One `COPY … FROM STDIN`: entries from the stream until it ends or the upsert chunk
    /// must be written first. A failure of the stream or of an entry is put in `failed`,
    /// after the COPY was aborted (so the connection can roll back).
    async fn copy_segment(
        &self,
        conn: &mut PgConnection,
        entries: &mut BoxStream<'_, Result<Entry>>,
        now: i64,
        seen: &mut SeenKeys,
        side: &mut Chunk,
        failed: &mut Option<StateError>,
    ) -> std::result::Result<(u64, SegmentEnd), sqlx::Error> {
        let prefix = &self.inner.prefix[..];
        let mut copy = conn
            .copy_in_raw(self.inner.sql.import_copy.as_str())
            .await?;
        let mut buf = Vec::with_capacity(SEND_BYTES + 64 * 1024);
        write_header(&mut buf);
        let end = loop {
            let Some(item) = stream::next(entries).await else {
                break SegmentEnd::Done;
            };
            let step = item.and_then(|entry| {
                self.inner.limits.check_entry(&entry.key, &entry.value)?;
                let expiry = entry.expires_at.map(time_to_micros).transpose()?;
                let probe = seen.probe(prefix, &entry.key);
                let expired = expiry.is_some_and(|at| at <= now);
                if !seen.maybe_contains(probe) {
                    // First sight: copied, or dropped when expired (nothing to delete).
                    if !expired {
                        write_entry(
                            &mut buf,
                            prefix,
                            &entry.key,
                            &entry.value,
                            entry.metadata.as_ref(),
                            expiry,
                        )?;
                        seen.insert(probe);
                    }
                    return Ok(None);
                }
                let full = self.full_key(&entry.key);
                if side.must_flush_before(&full) {
                    return Ok(Some((full, entry)));
                }
                side.push(full, entry)?;
                Ok(None)
            });
            match step {
                Ok(None) => {}
                Ok(Some((full, entry))) => break SegmentEnd::Flush(full, entry),
                Err(err) => {
                    *failed = Some(err);
                    copy.abort("the import stream failed").await?;
                    return Ok((0, SegmentEnd::Failed));
                }
            }
            if buf.len() >= SEND_BYTES {
                copy.send(buf.as_slice()).await?;
                buf.clear();
            }
        };
        write_trailer(&mut buf);
        copy.send(buf.as_slice()).await?;
        Ok((copy.finish().await?, end))
    }

    /// Writes `entries` in chunked, one-statement batches inside `c`'s open transaction.
    pub(crate) async fn import_chunk(
        &self,
        c: &mut Checkout<'_>,
        chunk: &mut Chunk,
    ) -> Result<u64> {
        if chunk.keys.is_empty() {
            return Ok(0);
        }
        let query = sqlx::query(self.inner.sql.import_chunk.clone())
            .bind(std::mem::take(&mut chunk.keys))
            .bind(std::mem::take(&mut chunk.values))
            .bind(std::mem::take(&mut chunk.metadata))
            .bind(std::mem::take(&mut chunk.expiries));
        chunk.seen.clear();
        chunk.bytes = 0;
        let row = c.fetch_one("import", query).await?;
        let written: i64 = row.try_get(0).map_err(|e| convert(e, "import", true))?;
        Ok(written.max(0) as u64)
    }
}

/// A batch being gathered for one `import_chunk` statement. A key pushed twice keeps its
/// later entry in the earlier place: one INSERT … ON CONFLICT cannot touch a row twice,
/// and the later write wins anyway (nothing between the two touches that key).
#[derive(Default)]
pub(crate) struct Chunk {
    pub keys: Vec<Vec<u8>>,
    pub values: Vec<Vec<u8>>,
    pub metadata: Vec<Option<String>>,
    pub expiries: Vec<Option<i64>>,
    /// Each key's position in the vectors.
    pub seen: HashMap<Vec<u8>, usize>,
    pub bytes: usize,
}

impl Chunk {
    /// Whether the chunk is full: `key` must go to the next statement (unless it is in
    /// this one already and replaces its entry).
    pub fn must_flush_before(&self, key: &[u8]) -> bool {
        (self.keys.len() >= CHUNK_ROWS || self.bytes >= CHUNK_BYTES) && !self.seen.contains_key(key)
    }

    pub fn push(&mut self, full_key: Vec<u8>, entry: Entry) -> Result<()> {
        let metadata = entry
            .metadata
            .map(|m| serde_json::to_string(&m))
            .transpose()
            .map_err(|e| {
                StateError::invalid_input(format!("metadata is not serialisable JSON: {e}"))
            })?;
        let expiry = entry.expires_at.map(time_to_micros).transpose()?;
        let value = entry.value.to_vec();
        if let Some(&at) = self.seen.get(&full_key)
            && let (Some(v), Some(m), Some(x)) = (
                self.values.get_mut(at),
                self.metadata.get_mut(at),
                self.expiries.get_mut(at),
            )
        {
            self.bytes = self.bytes.saturating_sub(v.len()) + value.len();
            *v = value;
            *m = metadata;
            *x = expiry;
            return Ok(());
        }
        self.bytes += full_key.len() + value.len();
        self.seen.insert(full_key.clone(), self.keys.len());
        self.keys.push(full_key);
        self.values.push(value);
        self.metadata.push(metadata);
        self.expiries.push(expiry);
        Ok(())
    }
}
