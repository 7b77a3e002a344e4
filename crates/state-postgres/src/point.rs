//! Point writes and reads as their own statements, counted as operations, and the choice
//! of `put` and `put_with_ttl` between that and the coalescer.

use std::time::Duration;

use bytes::Bytes;
use state_core::{Idempotency, Result, ttl_millis};

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
        let Some(coalescer) = &self.inner.coalescer else {
            return self.upsert(what, key, value, None, ttl_ms).await;
        };
        if let Some(_slot) = coalescer.try_slot() {
            // A statement slot is free: this call is its own statement, sent at once.
            return self.upsert(what, key, value, None, ttl_ms).await;
        }
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
}
