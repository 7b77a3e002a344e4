//! The write side of `import` (and so of `restore`): entries gathered into bounded chunks,
//! each written by one statement inside the import's transaction.

use std::collections::HashSet;

use sqlx::Row;
use state_core::{Entry, Result, StateError};

use crate::conn::Checkout;
use crate::driver::{CHUNK_BYTES, CHUNK_ROWS, PostgresStateBackend, time_to_micros};
use crate::error::convert;

impl PostgresStateBackend {
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

/// A batch being gathered for one `import_chunk` statement.
#[derive(Default)]
pub(crate) struct Chunk {
    pub keys: Vec<Vec<u8>>,
    pub values: Vec<Vec<u8>>,
    pub metadata: Vec<Option<String>>,
    pub expiries: Vec<Option<i64>>,
    pub seen: HashSet<Vec<u8>>,
    pub bytes: usize,
}

impl Chunk {
    /// Whether `key` must go to the next statement: one INSERT … ON CONFLICT cannot touch
    /// a row twice, and chunks stay bounded.
    pub fn must_flush_before(&self, key: &[u8]) -> bool {
        self.keys.len() >= CHUNK_ROWS || self.bytes >= CHUNK_BYTES || self.seen.contains(key)
    }

    pub fn push(&mut self, full_key: Vec<u8>, entry: Entry) -> Result<()> {
        self.bytes += full_key.len() + entry.value.len();
        self.seen.insert(full_key.clone());
        self.keys.push(full_key);
        self.values.push(entry.value.to_vec());
        self.metadata.push(
            entry
                .metadata
                .map(|m| serde_json::to_string(&m))
                .transpose()
                .map_err(|e| {
                    StateError::invalid_input(format!("metadata is not serialisable JSON: {e}"))
                })?,
        );
        self.expiries
            .push(entry.expires_at.map(time_to_micros).transpose()?);
        Ok(())
    }
}
