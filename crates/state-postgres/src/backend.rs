//! [`PostgresStateBackend`]: the [`StateBackend`] over one PostgreSQL table.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::postgres::PgRow;
use state_core::{
    BoxStream, Capabilities, Checkpoint, Entry, ErrorKind, FencingToken, Health, Idempotency,
    ImportMode, Limits, Result, RetryPolicy, StateBackend, StateError, Ttl, stream, ttl_millis,
};

use crate::coalesce::Coalescer;
use crate::config::PostgresConfig;
use crate::conn::{Checkout, ConnSet};
use crate::error::{client_timeout, convert};
use crate::migrate::{self, AppliedMigration};
use crate::pager::{Pager, PagerKind};
use crate::sql::{Names, Statements, upper_bound};
use crate::stats::PostgresStats;

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
    reaper: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
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

/// The PostgreSQL [`StateBackend`].
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
    /// Opens the backend: checks the config, applies pending migrations (unless disabled)
    /// under an advisory lock, opens `pool_min` connections and starts the reaper if one is
    /// configured.
    pub async fn new(config: PostgresConfig) -> Result<Self> {
        config.validate()?;
        let names = Names::new(config.schema(), config.table());
        let conns = ConnSet::new(
            config.connect_options(),
            config.endpoint(),
            config.pool_size().1 as usize,
            config.acquire_timeout(),
            config.connect_timeout(),
        );
        if config.run_migrations() {
            let mut conn = connect_with_retry(&conns, config.retry()).await?;
            let outcome = migrate::run(&mut conn, &names).await;
            // Closing is a courtesy; the lock is already released or dies with the session.
            let _ = sqlx::Connection::close(conn).await;
            outcome?;
        }
        conns.warm_up(config.pool_size().0 as usize).await?;
        let default_ttl_ms = config
            .default_ttl()
            .map(|ttl| ttl_millis(ttl).map(|ms| ms as f64))
            .transpose()?;
        let coalesce = config.coalescing();
        // The dispatcher gets a `Weak`: it must not keep the backend alive.
        let inner = Arc::new_cyclic(|weak| Inner {
            coalescer: Coalescer::start(weak, coalesce),
            sql: Statements::new(&names),
            names,
            conns,
            prefix: Bytes::copy_from_slice(config.key_prefix()),
            default_ttl_ms,
            limits: config.limits(),
            retry: config.retry(),
            attempt_timeout: config.statement_timeout() + Duration::from_secs(5),
            reaper: std::sync::Mutex::new(None),
            config,
        });
        if let Some(interval) = inner.config.reaper_interval() {
            start_reaper(&inner, interval)?;
        }
        Ok(PostgresStateBackend { inner })
    }

    /// Opens the backend named by a `postgres://` URL.
    pub async fn from_url(url: &str) -> Result<Self> {
        PostgresStateBackend::new(PostgresConfig::from_url(url)?).await
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// The guide's `stats()`: counters since the backend was opened.
    pub async fn stats(&self) -> PostgresStats {
        let conns = &self.inner.conns;
        conns
            .counters
            .snapshot(conns.open_connections(), conns.max_connections())
    }

    /// Closes the idle connections gracefully (dropping the backend closes them abruptly,
    /// which the server logs). Operations after this reopen connections as needed.
    pub async fn close(&self) {
        self.inner.conns.close_idle().await;
    }

    /// The versions in refinery's history table for this schema and table.
    pub async fn migration_history(&self) -> Result<Vec<(i64, String)>> {
        let mut conn = self.inner.conns.connect().await?;
        let history = migrate::history(&mut conn, &self.inner.names).await;
        let _ = sqlx::Connection::close(conn).await;
        history
    }

    pub(crate) fn full_key(&self, key: &[u8]) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.inner.prefix.len() + key.len());
        full.extend_from_slice(&self.inner.prefix);
        full.extend_from_slice(key);
        full
    }

    /// Runs `op` with retries of retryable errors and a client deadline per attempt, and
    /// counts it as one operation.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        what: &'static str,
        idempotency: Idempotency,
        op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        let result = self.attempt(what, idempotency, op).await;
        self.inner
            .conns
            .counters
            .finish(started.elapsed(), result.is_ok());
        result
    }

    /// [`run`](Self::run) without counting an operation: a coalesced statement serves
    /// several calls, and each caller counts its own.
    pub(crate) async fn attempt<T, F, Fut>(
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
                || {
                    let attempt = op();
                    async move {
                        match tokio::time::timeout(deadline, attempt).await {
                            Ok(result) => result,
                            Err(_) => Err(client_timeout(what, deadline)),
                        }
                    }
                },
            )
            .await
    }

    pub(crate) async fn checkout(&self) -> Result<Checkout<'_>> {
        self.inner.conns.checkout().await
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
        self.inner.conns.counters.read(key.len() + value.len());
        Ok(Entry {
            key: Bytes::copy_from_slice(user_key),
            value: Bytes::from(value),
            expires_at: expires.map(micros_to_time).transpose()?,
            metadata,
        })
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

    fn ttl_param(&self, ttl: Option<Duration>) -> Result<Option<f64>> {
        match ttl {
            Some(ttl) => Ok(Some(ttl_millis(ttl)? as f64)),
            None => Ok(self.inner.default_ttl_ms),
        }
    }

    async fn upsert(
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
        self.inner.conns.counters.wrote(full.len() + value.len());
        Ok(())
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

    /// One attempt of a single-key read (the `get` statement).
    pub(crate) async fn read_one(&self, full: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut c = self.checkout().await?;
        let query = sqlx::query(self.inner.sql.get.clone()).bind(full);
        match c.fetch_optional("get", query).await? {
            Some(row) => Ok(Some(decode::<Vec<u8>>(&row, 0, "get")?)),
            None => Ok(None),
        }
    }

    /// A get as its own statement, counted as an operation.
    async fn read_counted(&self, full: &[u8]) -> Result<Option<Bytes>> {
        let value = self
            .run("get", Idempotency::Idempotent, || self.read_one(full))
            .await?;
        Ok(value.map(Bytes::from))
    }

    /// `put` and `put_with_ttl`: through the coalescer when there is one and every
    /// statement slot is busy.
    async fn put_point(
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
        let started = Instant::now();
        let full = Bytes::from(self.full_key(key));
        let written = full.len() + value.len();
        match coalescer
            .put(full, Bytes::copy_from_slice(value), ttl_ms)
            .await
        {
            Some(result) => {
                let counters = &self.inner.conns.counters;
                counters.finish(started.elapsed(), result.is_ok());
                if result.is_ok() {
                    counters.wrote(written);
                }
                result
            }
            // The dispatcher is gone or on another runtime: the old way.
            None => self.upsert(what, key, value, None, ttl_ms).await,
        }
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

async fn connect_with_retry(conns: &ConnSet, retry: RetryPolicy) -> Result<sqlx::PgConnection> {
    retry
        .run(Idempotency::Idempotent, |_| {}, || conns.connect())
        .await
}

fn start_reaper(inner: &Arc<Inner>, interval: Duration) -> Result<()> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        StateError::config("the reaper needs a tokio runtime; open the backend inside one")
    })?;
    let weak = Arc::downgrade(inner);
    let task = runtime.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let backend = PostgresStateBackend { inner };
            // A failed sweep is retried at the next tick; reads never depend on it.
            let _ = backend.cleanup_expired().await;
        }
    });
    let mut slot = inner
        .reaper
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *slot = Some(task.abort_handle());
    Ok(())
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

/// Puts each row of the `batch_get` statement, (1-based position in the request, value),
/// at its position in `out`; returns the bytes of the values placed.
pub(crate) fn place_by_ordinal(
    rows: Vec<PgRow>,
    out: &mut [Option<Bytes>],
    what: &str,
) -> Result<usize> {
    let mut bytes = 0;
    for row in rows {
        let ordinal: i64 = decode(&row, 0, what)?;
        let value: Vec<u8> = decode(&row, 1, what)?;
        let slot = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|i| out.get_mut(i))
            .ok_or_else(|| {
                StateError::corrupt(format!(
                    "{what}: the server returned a position outside the request"
                ))
            })?;
        bytes += value.len();
        *slot = Some(Bytes::from(value));
    }
    Ok(bytes)
}

pub(crate) fn decode<T>(row: &PgRow, index: usize, what: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|e| convert(e, what, true))
}

#[async_trait]
impl StateBackend for PostgresStateBackend {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::new("postgres");
        caps.ordered_scan = true;
        caps.consistent_snapshot = true;
        caps.atomic_restore = true;
        caps.metadata = true;
        caps.durable = true;
        caps.shared = true;
        caps.max_key_len = self.inner.limits.max_key_len;
        caps.max_value_len = self.inner.limits.max_value_len;
        caps
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.limits.check_key(key)?;
        let full = self.full_key(key);
        let counters = &self.inner.conns.counters;
        let value = match &self.inner.coalescer {
            // With a statement slot free, the call is its own statement, sent at once.
            Some(coalescer) => match coalescer.try_slot() {
                Some(_slot) => self.read_counted(&full).await?,
                None => {
                    let started = Instant::now();
                    let full = Bytes::from(full);
                    match coalescer.get(full.clone()).await {
                        Some(result) => {
                            counters.finish(started.elapsed(), result.is_ok());
                            result?
                        }
                        // The dispatcher is gone or on another runtime: the old way.
                        None => self.read_counted(&full).await?,
                    }
                }
            },
            None => self.read_counted(&full).await?,
        };
        if let Some(v) = &value {
            counters.read(v.len());
        }
        Ok(value)
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.put_point("put", key, value, self.inner.default_ttl_ms)
            .await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let ttl_ms = ttl_millis(ttl)? as f64;
        self.put_point("put_with_ttl", key, value, Some(ttl_ms))
            .await
    }

    async fn put_with_metadata(
        &self,
        key: &[u8],
        value: &[u8],
        metadata: serde_json::Value,
    ) -> Result<()> {
        self.upsert(
            "put_with_metadata",
            key,
            value,
            Some(metadata),
            self.inner.default_ttl_ms,
        )
        .await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.inner.limits.check_key(key)?;
        let full = &self.full_key(key)[..];
        // Re-sending a delete whose reply was lost could report `false` for a key it did
        // delete: not idempotent in its answer.
        self.run("delete", Idempotency::NotIdempotent, move || async move {
            let mut c = self.checkout().await?;
            let query = sqlx::query(self.inner.sql.delete.clone()).bind(full);
            match c.fetch_optional("delete", query).await? {
                Some(row) => decode::<bool>(&row, 0, "delete"),
                None => Ok(false),
            }
        })
        .await
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        for key in keys {
            self.inner.limits.check_key(key)?;
        }
        let mut out: Vec<Option<Bytes>> = vec![None; keys.len()];
        for (chunk_index, chunk) in keys.chunks(CHUNK_ROWS).enumerate() {
            let full: Vec<Vec<u8>> = chunk.iter().map(|k| self.full_key(k)).collect();
            let full = &full;
            let rows = self
                .run("batch_get", Idempotency::Idempotent, move || async move {
                    let mut c = self.checkout().await?;
                    let query = sqlx::query(self.inner.sql.batch_get.clone()).bind(full);
                    c.fetch_all("batch_get", query).await
                })
                .await?;
            let chunk_out = out.get_mut(chunk_index * CHUNK_ROWS..).unwrap_or_default();
            let bytes = place_by_ordinal(rows, chunk_out, "batch_get")?;
            self.inner.conns.counters.read(bytes);
        }
        Ok(out)
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        for (key, value) in entries {
            self.inner.limits.check_entry(key, value)?;
        }
        // Later writes of a key win, as in sequence. Keys go in sorted order so that
        // concurrent batches lock rows in one order and cannot deadlock one another.
        let mut latest: std::collections::BTreeMap<Vec<u8>, &[u8]> = Default::default();
        for (key, value) in entries {
            latest.insert(self.full_key(key), value);
        }
        let mut chunks: Vec<(Vec<Vec<u8>>, Vec<&[u8]>)> = Vec::new();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut values: Vec<&[u8]> = Vec::new();
        let mut bytes = 0;
        for (full, value) in latest {
            if keys.len() >= CHUNK_ROWS || bytes >= CHUNK_BYTES {
                chunks.push((std::mem::take(&mut keys), std::mem::take(&mut values)));
                bytes = 0;
            }
            bytes += full.len() + value.len();
            keys.push(full);
            values.push(value);
        }
        if !keys.is_empty() {
            chunks.push((keys, values));
        }
        let ttl_ms = self.inner.default_ttl_ms;
        let chunks = &chunks;
        self.run(
            "batch_put",
            Idempotency::NotIdempotent,
            move || async move {
                let mut c = self.checkout().await?;
                let many = chunks.len() > 1;
                if many {
                    c.begin("batch_put", "BEGIN").await?;
                }
                for (keys, values) in chunks {
                    let query = sqlx::query(self.inner.sql.batch_put.clone())
                        .bind(keys)
                        .bind(values)
                        .bind(ttl_ms);
                    if let Err(err) = c.execute("batch_put", query).await {
                        if many {
                            c.rollback().await;
                        }
                        return Err(err);
                    }
                }
                if many {
                    c.commit("batch_put").await?;
                }
                Ok(())
            },
        )
        .await?;
        let written: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        self.inner.conns.counters.wrote(written);
        Ok(())
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        for key in keys {
            self.inner.limits.check_key(key)?;
        }
        let mut deleted = 0;
        for chunk in keys.chunks(CHUNK_ROWS) {
            let full: Vec<Vec<u8>> = chunk.iter().map(|k| self.full_key(k)).collect();
            let full = &full;
            deleted += self
                .run(
                    "batch_delete",
                    Idempotency::NotIdempotent,
                    move || async move {
                        let mut c = self.checkout().await?;
                        let query = sqlx::query(self.inner.sql.batch_delete.clone()).bind(full);
                        let row = c.fetch_one("batch_delete", query).await?;
                        Ok(decode::<i64>(&row, 0, "batch_delete")?.max(0) as u64)
                    },
                )
                .await?;
        }
        Ok(deleted)
    }

    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.inner.limits.check_key(key)?;
        let full = &self.full_key(key)[..];
        self.run(
            "get_and_delete",
            Idempotency::NotIdempotent,
            move || async move {
                let mut c = self.checkout().await?;
                let query = sqlx::query(self.inner.sql.get_and_delete.clone()).bind(full);
                let Some(row) = c.fetch_optional("get_and_delete", query).await? else {
                    return Ok(None);
                };
                let value: Vec<u8> = decode(&row, 0, "get_and_delete")?;
                let live: bool = decode(&row, 1, "get_and_delete")?;
                Ok(live.then(|| Bytes::from(value)))
            },
        )
        .await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.inner.limits.check_entry(key, value)?;
        let ttl_ms = self.ttl_param(ttl)?;
        let full = &self.full_key(key)[..];
        self.run(
            "set_if_not_exists",
            Idempotency::NotIdempotent,
            move || async move {
                let mut c = self.checkout().await?;
                let query = sqlx::query(self.inner.sql.set_if_absent.clone())
                    .bind(full)
                    .bind(value)
                    .bind(ttl_ms);
                Ok(c.execute("set_if_not_exists", query).await?.rows_affected() == 1)
            },
        )
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        self.inner.limits.check_entry(key, new)?;
        if let Some(expected) = expected {
            self.inner.limits.check_value(expected)?;
        }
        let ttl_ms = self.inner.default_ttl_ms;
        let full = &self.full_key(key)[..];
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

    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()> {
        self.inner.limits.check_entry(key, value)?;
        let full = &self.full_key(key)[..];
        let ttl_ms = self.inner.default_ttl_ms;
        let token_text = &token.0.to_string();
        // Not re-sent after a lost reply: equal tokens may write, so a second application
        // could overwrite a plain put made in between.
        let current = self
            .run(
                "put_fenced",
                Idempotency::NotIdempotent,
                move || async move {
                    let mut c = self.checkout().await?;
                    let query = sqlx::query(self.inner.sql.put_fenced.clone())
                        .bind(full)
                        .bind(value)
                        .bind(token_text)
                        .bind(ttl_ms);
                    let row = c.fetch_one("put_fenced", query).await?;
                    decode::<String>(&row, 0, "put_fenced")
                },
            )
            .await?;
        let current: u64 = current.parse().map_err(|_| {
            StateError::corrupt(format!(
                "the fences table holds a token that is not a u64: {current}"
            ))
        })?;
        if current > token.0 {
            return Err(StateError::fenced(token.0, current));
        }
        self.inner.conns.counters.wrote(full.len() + value.len());
        Ok(())
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.inner.limits.check_key(key)?;
        let full = &self.full_key(key)[..];
        self.run("ttl", Idempotency::Idempotent, move || async move {
            let mut c = self.checkout().await?;
            let query = sqlx::query(self.inner.sql.ttl.clone()).bind(full);
            let Some(row) = c.fetch_optional("ttl", query).await? else {
                return Ok(Ttl::Missing);
            };
            if decode::<bool>(&row, 0, "ttl")? {
                return Ok(Ttl::Persistent);
            }
            let micros = decode::<Option<i64>>(&row, 1, "ttl")?.unwrap_or(1).max(1);
            // Millisecond precision, rounded up: a live key has at least 1ms left.
            Ok(Ttl::Remaining(Duration::from_millis(
                micros.unsigned_abs().div_ceil(1000),
            )))
        })
        .await
    }

    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        Pager::new(self, prefix, PagerKind::Scan).into_stream()
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        let (lower, upper) = self.namespace_range(prefix);
        let (lower, upper) = (&lower, &upper);
        self.run("count", Idempotency::Idempotent, move || async move {
            let mut c = self.checkout().await?;
            let mut query = sqlx::query(self.inner.sql.count.pick(upper)).bind(lower);
            if let Some(upper) = upper {
                query = query.bind(upper);
            }
            let row = c.fetch_one("count", query).await?;
            Ok(decode::<i64>(&row, 0, "count")?.max(0) as u64)
        })
        .await
    }

    async fn clear(&self, prefix: &[u8]) -> Result<u64> {
        let (lower, upper) = self.namespace_range(prefix);
        let (lower, upper) = (&lower, &upper);
        self.run("clear", Idempotency::NotIdempotent, move || async move {
            let mut c = self.checkout().await?;
            let mut query = sqlx::query(self.inner.sql.clear.pick(upper)).bind(lower);
            if let Some(upper) = upper {
                query = query.bind(upper);
            }
            let row = c.fetch_one("clear", query).await?;
            Ok(decode::<i64>(&row, 0, "clear")?.max(0) as u64)
        })
        .await
    }

    async fn checkpoint(&self) -> Result<Checkpoint> {
        let taken_at = SystemTime::now();
        let entries = stream::try_collect(self.export(b"")).await?;
        Ok(Checkpoint::new(entries, taken_at, true))
    }

    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        let entries = checkpoint.into_entries();
        self.import(
            stream::iter(entries.into_iter().map(Ok)),
            ImportMode::Replace,
        )
        .await
        .map(|_| ())
    }

    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        Pager::new(self, prefix, PagerKind::Export).into_stream()
    }

    async fn import(
        &self,
        mut entries: BoxStream<'_, Result<Entry>>,
        mode: ImportMode,
    ) -> Result<u64> {
        let started = Instant::now();
        let mut c = self.checkout().await?;
        c.begin("import", "BEGIN").await?;
        let outcome = async {
            if mode == ImportMode::Replace {
                let (lower, upper) = self.namespace_range(b"");
                let mut query = sqlx::query(self.inner.sql.clear.pick(&upper)).bind(lower);
                if let Some(upper) = upper {
                    query = query.bind(upper);
                }
                c.fetch_one("import", query).await?;
            }
            let mut chunk = Chunk::default();
            let mut written = 0;
            while let Some(entry) = stream::next(&mut entries).await {
                let entry = entry?;
                self.inner.limits.check_entry(&entry.key, &entry.value)?;
                let full = self.full_key(&entry.key);
                if chunk.must_flush_before(&full) {
                    written += self.import_chunk(&mut c, &mut chunk).await?;
                }
                self.inner
                    .conns
                    .counters
                    .wrote(full.len() + entry.value.len());
                chunk.push(full, entry)?;
            }
            written += self.import_chunk(&mut c, &mut chunk).await?;
            Ok::<u64, StateError>(written)
        }
        .await;
        let result = match outcome {
            Ok(written) => c.commit("import").await.map(|_| written),
            Err(err) => {
                c.rollback().await;
                Err(err)
            }
        };
        self.inner
            .conns
            .counters
            .finish(started.elapsed(), result.is_ok());
        result
    }

    async fn health_check(&self) -> Result<Health> {
        let started = Instant::now();
        let endpoint = self.inner.config.endpoint();
        let probe = async {
            let mut c = self.checkout().await?;
            let query = sqlx::query("SELECT pg_is_in_recovery()");
            let row = c.fetch_one("health check", query).await?;
            decode::<bool>(&row, 0, "health check")
        };
        let outcome = tokio::time::timeout(self.inner.attempt_timeout, probe).await;
        let latency = started.elapsed();
        Ok(match outcome {
            Ok(Ok(false)) => Health::healthy(latency, format!("PostgreSQL primary at {endpoint}")),
            Ok(Ok(true)) => Health::unhealthy(
                latency,
                format!("PostgreSQL at {endpoint} is a read-only replica (in recovery)"),
            ),
            Ok(Err(err)) => Health::unhealthy(latency, err.to_string()),
            Err(_) => Health::unhealthy(
                latency,
                format!(
                    "PostgreSQL at {endpoint} did not answer within {:?}",
                    self.inner.attempt_timeout
                ),
            ),
        })
    }
}

/// Applies pending migrations for `config` and returns what was applied (empty when the
/// schema is up to date). What `cargo xtask migrate --url URL` runs.
pub async fn migrate(config: &PostgresConfig) -> Result<Vec<AppliedMigration>> {
    config.validate()?;
    let names = Names::new(config.schema(), config.table());
    let conns = ConnSet::new(
        config.connect_options(),
        config.endpoint(),
        1,
        config.acquire_timeout(),
        config.connect_timeout(),
    );
    let mut conn = connect_with_retry(&conns, config.retry()).await?;
    let outcome = migrate::run(&mut conn, &names).await;
    let _ = sqlx::Connection::close(conn).await;
    outcome
}

/// `NotFound` for a checkpoint id that does not exist in this namespace.
pub(crate) fn checkpoint_not_found(id: i64) -> StateError {
    StateError::new(
        ErrorKind::NotFound,
        format!(
            "checkpoint {id} does not exist for this key prefix; list_checkpoints() shows the ids"
        ),
    )
}
