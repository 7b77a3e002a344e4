//! Point writes and reads as their own statements, counted as operations, and the choice
//! of `put` and `put_with_ttl` between that and the coalescer.

use std::time::Duration;

use bytes::Bytes;
use state_core::{Idempotency, Result, ttl_millis};

use crate::coalescer::Route;
use crate::driver::PostgresStateBackend;

impl PostgresStateBackend {
    pub(crate) fn ttl_param(&self, ttl: Option<Duration>) -> Result<Option<f64>> {
        match ttl {
            Some(ttl) => Ok(Some(ttl_millis(ttl)? as f64)),
            None => Ok(self.inner.default_ttl_ms),
        }
    }

    pub(crate) async fn upsert(
        &self,
        what: &'static str,
        key: &[u8],
        value: &[u8],
        metadata: Option<serde_json::Value>,
        ttl_ms: Option<f64>,
    ) -> Result<()> {
        self.inner.limits.check_entry(key, value)?;
        let full = &self.full_key(key)[..];
        let metadata = &metadata;
        // A blind write: re-sent after a lost reply it could bring back a value that
        // another client has since deleted or replaced.
        self.run(what, Idempotency::NotIdempotent, move || {
            self.write_one(what, full, value, metadata, ttl_ms)
        })
        .await?;
        Ok(())
    }

    /// A get as its own statement.
    pub(crate) async fn read_point(&self, full: &[u8]) -> Result<Option<Bytes>> {
        self.run("get", Idempotency::Idempotent, || self.read_one(full))
            .await
    }

    /// `put` and `put_with_ttl`: through the coalescer when there is one and every
    /// statement slot is busy.
    pub(crate) async fn put_point(
        &self,
        what: &'static str,
        key: &[u8],
        value: &[u8],
        ttl_ms: Option<f64>,
    ) -> Result<()> {
        let coalescer = match Route::of(self.inner.coalescer.as_ref()) {
            Route::Direct(_slot) => return self.upsert(what, key, value, None, ttl_ms).await,
            Route::Queued(coalescer) => coalescer,
        };
        self.inner.limits.check_entry(key, value)?;
        let full = Bytes::from(self.full_key(key));
        match coalescer
            .put(full, Bytes::copy_from_slice(value), ttl_ms)
            .await
        {
            Some(result) => result,
            // The dispatcher is gone or on another runtime: the old way.
            None => self.upsert(what, key, value, None, ttl_ms).await,
        }
    }

    /// `compare_and_swap` (limits checked): through the coalescer when there is one and
    /// every statement slot is busy.
    pub(crate) async fn cas_point(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        let coalescer = match Route::of(self.inner.coalescer.as_ref()) {
            Route::Direct(_slot) => return self.cas_one(&self.full_key(key), expected, new).await,
            Route::Queued(coalescer) => coalescer,
        };
        let call = coalescer.compare_and_swap(
            Bytes::from(self.full_key(key)),
            expected.map(Bytes::copy_from_slice),
            Bytes::copy_from_slice(new),
        );
        match call.await {
            Some(result) => result,
            // The dispatcher is gone or on another runtime: the old way.
            None => self.cas_one(&self.full_key(key), expected, new).await,
        }
    }

    /// A `compare_and_swap` of full key `full` as its own statement.
    pub(crate) async fn cas_one(
        &self,
        full: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        let ttl_ms = self.inner.default_ttl_ms;
        // Not re-sent after a lost reply: the first attempt may have swapped, and the
        // second would then find the new value and report a failed swap.
        self.run(
            "compare_and_swap",
            Idempotency::NotIdempotent,
            move || async move {
                let mut c = self.checkout().await?;
                let query = match expected {
                    None => sqlx::query(self.inner.sql.set_if_absent.clone())
                        .bind(full)
                        .bind(new)
                        .bind(ttl_ms),
                    Some(expected) => sqlx::query(self.inner.sql.swap.clone())
                        .bind(full)
                        .bind(new)
                        .bind(expected)
                        .bind(ttl_ms),
                };
                Ok(c.execute("compare_and_swap", query).await?.rows_affected() == 1)
            },
        )
        .await
    }
}
