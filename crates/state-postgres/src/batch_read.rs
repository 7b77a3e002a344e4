//! The batch read: the values of many keys in one statement, as one row holding every
//! value as a `bytea[]`, or as a row per key found when values run large. A chunk of a
//! `batch_get` that finds every statement slot busy joins the coalescer's next group of
//! reads (`coalesce.rs`).
//!
//! Why one row: sqlx hands each row through its row stream (a yield, a `PgRow`, type
//! checks per column), which cost a 100-key batch_get about twice what the same read
//! costs tokio-postgres (callgrind). An array arrives as one row, cut into values by
//! [`values_of_array`].

use bytes::Bytes;
use sqlx::postgres::PgRow;
use state_core::{Idempotency, Result, StateError};

use crate::coalescer::Route;
use crate::driver::{PostgresStateBackend, decode};
use crate::values::{is_program_limit, take_bytes, values_of_array};

impl PostgresStateBackend {
    /// The values of user keys `keys` (at most a chunk, limits checked), in order.
    pub(crate) async fn read_chunk(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        let full = self.full_keys(keys);
        let route = match self.reads_from_replicas() {
            // Replicas take reads as their own statements; groups run on the primary.
            true => Route::Direct(None),
            false => Route::of(self.inner.coalescer.as_ref()),
        };
        let coalescer = match route {
            Route::Direct(_slot) => return self.read_values("batch_get", &full.slices()).await,
            Route::Queued(coalescer) => coalescer,
        };
        match coalescer.batch_get(full).await {
            Some(result) => result,
            // The dispatcher is gone or on another runtime: the old way.
            None => {
                let full = self.full_keys(keys);
                self.read_values("batch_get", &full.slices()).await
            }
        }
    }

    /// The values of `keys` (full keys, duplicates allowed), in order, in one statement.
    pub(crate) async fn read_values(
        &self,
        what: &'static str,
        keys: &[&[u8]],
    ) -> Result<Vec<Option<Bytes>>> {
        let values = if self.inner.value_sizes.small() {
            self.read_array(what, keys).await?
        } else {
            self.read_rows(what, keys).await?
        };
        self.inner.value_sizes.record(&values);
        Ok(values)
    }

    /// [`read_values`](Self::read_values) as one row holding a `bytea[]`.
    async fn read_array(&self, what: &'static str, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        let array = self
            .run(what, Idempotency::Idempotent, move || async move {
                let mut c = self.read_checkout().await?;
                let query = sqlx::query(self.inner.sql.batch_get_array.clone()).bind(keys);
                c.fetch_one(what, query).await
            })
            .await;
        match array {
            Ok(row) => values_of_array(row, keys.len(), what),
            // More than an array can hold (1 GB): a row per key. A read, so sending it
            // again is harmless.
            Err(err) if is_program_limit(&err) => self.read_rows(what, keys).await,
            Err(err) => Err(err),
        }
    }

    /// [`read_values`](Self::read_values) as one row per key found.
    async fn read_rows(&self, what: &'static str, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        let rows = self
            .run(what, Idempotency::Idempotent, move || async move {
                let mut c = self.read_checkout().await?;
                let query = sqlx::query(self.inner.sql.batch_get.clone()).bind(keys);
                c.fetch_all(what, query).await
            })
            .await?;
        let mut out = vec![None; keys.len()];
        place_by_ordinal(rows, &mut out, what)?;
        Ok(out)
    }
}

/// Puts each row of the `batch_get` statement, (1-based position in the request, value),
/// at its position in `out`.
fn place_by_ordinal(rows: Vec<PgRow>, out: &mut [Option<Bytes>], what: &str) -> Result<()> {
    for row in rows {
        let ordinal: i64 = decode(&row, 0, what)?;
        let value = take_bytes(row, 1, what)?;
        let slot = usize::try_from(ordinal.saturating_sub(1))
            .ok()
            .and_then(|i| out.get_mut(i))
            .ok_or_else(|| {
                StateError::corrupt(format!(
                    "{what}: the server returned a position outside the request"
                ))
            })?;
        *slot = Some(value);
    }
    Ok(())
}
