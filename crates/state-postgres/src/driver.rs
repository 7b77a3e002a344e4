//! The driver core under the [`StateBackend`](state_core::StateBackend) implementation: the
//! state a backend's clones share, one attempt of a statement (retries, a client deadline,
//! a checked-out connection), the one-row read and write that point operations and
//! coalesced groups share, and row decoding.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt;
use sqlx::postgres::PgRow;
use sqlx::{Row, SqlSafeStr};
use state_core::{Entry, Idempotency, Limits, Result, RetryPolicy, StateError};

use crate::coalescer::Coalescer;
use crate::config::PostgresConfig;
use crate::conn::{Checkout, ConnSet};
use crate::error::{client_timeout, convert};
use crate::sql::{Names, Statements, upper_bound};
use crate::values::{FullKeys, ValueSizes, take_bytes};

/// Rows per batch statement: big enough to amortise the round trip, small enough to keep
/// one statement's arrays modest.
pub(crate) const CHUNK_ROWS: usize = 1000;
/// Key and value bytes per batch statement.
pub(crate) const CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// The state shared by a backend's clones, its streams and its reaper.
pub(crate) struct Inner {
    pub config: PostgresConfig,
    pub names: Names,
    pub sql: Statements,
    pub conns: ConnSet,
    /// One connection set per replica, when reads go to replicas (`read_from=replicas`).
    pub replicas: Vec<ConnSet>,
    /// Round robin over `replicas`.
    pub next_replica: std::sync::atomic::AtomicUsize,
    /// The recent size of the values batch reads found, which picks their statement.
    pub value_sizes: ValueSizes,
    pub prefix: Bytes,
    pub default_ttl_ms: Option<f64>,
    pub limits: Limits,
    pub retry: RetryPolicy,
    /// The client-side deadline of one attempt: the statement timeout plus a margin, so
    /// that the server's own timeout (a clean, known outcome) normally fires first.
    pub attempt_timeout: Duration,
    /// Gathers concurrent point gets and puts into batch statements; `None` when
    /// coalescing is off (or no runtime was there to run its task).
    pub coalescer: Option<Coalescer>,
    pub reaper: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let reaper = self
            .reaper
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(handle) = reaper.take() {
            handle.abort();
        }
    }
}

/// The PostgreSQL [`StateBackend`](state_core::StateBackend).
///
/// One table (`state_entries` by default) holds every key with its value, JSONB metadata,
/// timestamps and absolute expiry; a fences table keeps the highest fencing token per key;
/// checkpoint tables hold server-side copies. Expiry is decided by the database clock:
/// writes store `now() + ttl`, every read filters `expires_at > now()`.
///
/// Cloning is cheap and shares the connections.
///
/// ```no_run
/// use state_postgres::{PostgresConfig, PostgresStateBackend, StateBackend};
/// use std::time::Duration;
/// # async fn demo() -> state_core::Result<()> {
/// let config = PostgresConfig::new("postgresql://postgres@127.0.0.1/test").with_pool_size(1, 16);
/// let backend = PostgresStateBackend::new(config).await?;
/// backend.put_with_ttl(b"temp:key", b"value", Duration::from_secs(600)).await?;
/// backend.put_with_metadata(b"event:1", b"data", serde_json::json!({"source": "kafka"})).await?;
/// let id = backend.create_checkpoint().await?;
/// backend.restore_checkpoint(id).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStateBackend {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStateBackend")
            .field("url", &self.inner.config.redacted_url())
            .field("table", &self.inner.names.entries)
            .field("key_prefix", &String::from_utf8_lossy(&self.inner.prefix))
            .finish()
    }
}

impl PostgresStateBackend {
    pub(crate) fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.inner.prefix.len() + key.len());
        full.extend_from_slice(&self.inner.prefix);
        full.extend_from_slice(key);
        full
    }

    /// The full keys of `keys` in one buffer (see [`FullKeys`]).
    pub(crate) fn full_keys(&self, keys: &[&[u8]]) -> FullKeys {
        FullKeys::new(&self.inner.prefix, keys)
    }

    /// Runs `op` with retries of retryable errors and a client deadline per attempt.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &'static str,
        idempotency: Idempotency,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = self.inner.attempt_timeout;
        let counters = &self.inner.conns.counters;
        self.inner
            .retry
            .run(
                idempotency,
                |_| {
                    counters.shard().retries.fetch_add(1, Ordering::Relaxed);
                },
                // Not an `async move` block around `op()`: that would hold the attempt
                // twice (captured, and moved into the timeout), doubling the future that
                // every operation carries and copies.
                || {
                    tokio::time::timeout(deadline, op()).map(move |timed| {
                        timed.unwrap_or_else(|_| Err(client_timeout(what, deadline)))
                    })
                },
            )
            .await
    }

    pub(crate) async fn checkout(&self) -> Result<Checkout<'_>> {
        self.inner.conns.checkout().await
    }

    /// A connection for a plain read: on the next replica (round robin) when reads go to
    /// replicas, else on the primary. A retried read moves on to the next replica.
    pub(crate) async fn read_checkout(&self) -> Result<Checkout<'_>> {
        let replicas = &self.inner.replicas;
        if replicas.is_empty() {
            return self.inner.conns.checkout().await;
        }
        let i = self.inner.next_replica.fetch_add(1, Ordering::Relaxed) % replicas.len();
        match replicas.get(i) {
            Some(set) => set.checkout().await,
            None => self.inner.conns.checkout().await,
        }
    }

    /// Whether plain reads go to replicas (and so bypass the coalescer, which batches on
    /// the primary).
    pub(crate) fn reads_from_replicas(&self) -> bool {
        !self.inner.replicas.is_empty()
    }

    /// The namespace's key range: `[prefix, upper(prefix))`.
    pub(crate) fn namespace_range(&self, prefix: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
        let lower = self.full_key(prefix);
        let upper = upper_bound(&lower);
        (lower, upper)
    }

    pub(crate) fn entry_from_row(&self, row: &PgRow) -> Result<Entry> {
        let what = "reading a row";
        let key: Vec<u8> = row.try_get(0).map_err(|e| convert(e, what, true))?;
        let value: Vec<u8> = row.try_get(1).map_err(|e| convert(e, what, true))?;
        let expires: Option<i64> = row.try_get(2).map_err(|e| convert(e, what, true))?;
        let metadata: Option<serde_json::Value> =
            row.try_get(3).map_err(|e| convert(e, what, true))?;
        let Some(user_key) = key.strip_prefix(&self.inner.prefix[..]) else {
            return Err(StateError::corrupt(
                "a row outside the key prefix came back from a prefix query",
            ));
        };
        Ok(Entry {
            key: Bytes::copy_from_slice(user_key),
            value: Bytes::from(value),
            expires_at: expires.map(micros_to_time).transpose()?,
            metadata,
        })
    }

    /// One attempt of a single-row upsert (the `put` statement).
    pub(crate) async fn write_one(
        &self,
        what: &'static str,
        full: &[u8],
        value: &[u8],
        metadata: &Option<serde_json::Value>,
        ttl_ms: Option<f64>,
    ) -> Result<()> {
        let mut c = self.checkout().await?;
        let query = sqlx::query(self.inner.sql.put.clone())
            .bind(full)
            .bind(value)
            .bind(metadata.clone())
            .bind(ttl_ms);
        c.execute(what, query).await?;
        Ok(())
    }

    /// Lifts the statement timeout for the rest of `c`'s transaction, for a COPY whose
    /// length grows with the data (the paged statements it replaced were each short); lock
    /// waits stay bounded by the same timeout, so a COPY stuck behind a lock still fails.
    pub(crate) async fn allow_long_statement(
        &self,
        c: &mut Checkout<'_>,
        what: &str,
    ) -> Result<()> {
        let ms = self.inner.config.statement_timeout().as_millis();
        let sql = format!("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = {ms}");
        c.simple_owned(what, sqlx::AssertSqlSafe(sql).into_sql_str())
            .await
    }

    /// One attempt of a single-key read (the `get` statement).
    pub(crate) async fn read_one(&self, full: &[u8]) -> Result<Option<Bytes>> {
        let mut c = self.read_checkout().await?;
        let query = sqlx::query(self.inner.sql.get.clone()).bind(full);
        match c.fetch_optional("get", query).await? {
            Some(row) => Ok(Some(take_bytes(row, 0, "get")?)),
            None => Ok(None),
        }
    }
}

pub(crate) fn micros_to_time(micros: i64) -> Result<SystemTime> {
    let base = SystemTime::UNIX_EPOCH;
    let out = if micros >= 0 {
        base.checked_add(Duration::from_micros(micros.unsigned_abs()))
    } else {
        base.checked_sub(Duration::from_micros(micros.unsigned_abs()))
    };
    out.ok_or_else(|| StateError::corrupt("a stored expiry is outside the clock's range"))
}

pub(crate) fn time_to_micros(at: SystemTime) -> Result<i64> {
    let out = match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_micros()).ok(),
        Err(before) => i64::try_from(before.duration().as_micros())
            .ok()
            .map(|m| -m),
    };
    out.ok_or_else(|| StateError::invalid_input("an expiry time is outside the supported range"))
}

pub(crate) fn decode<T>(row: &PgRow, index: usize, what: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|e| convert(e, what, true))
}
