//! `impl StateBackend for PostgresStateBackend`: the table of operations, each a statement
//! (or a few) run through the driver core.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use state_core::{
    BoxStream, Capabilities, Entry, FencingToken, Gauge, Health, Idempotency, ImportMode, Result,
    StateBackend, StateError, Stats, Ttl, stream, ttl_millis,
};

use crate::coalescer::Route;
use crate::driver::{CHUNK_BYTES, CHUNK_ROWS, PostgresStateBackend, decode};
use crate::import::Chunk;
use crate::pager::{Pager, PagerKind};
use crate::values::{FullKeys, last_per_key};

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
        if self.reads_from_replicas() {
            return self.read_point(&full).await;
        }
        match Route::of(self.inner.coalescer.as_ref()) {
            Route::Direct(_slot) => self.read_point(&full).await,
            Route::Queued(coalescer) => {
                let full = Bytes::from(full);
                match coalescer.get(full.clone()).await {
                    Some(result) => result,
                    // The dispatcher is gone or on another runtime: the old way.
                    None => self.read_point(&full).await,
                }
            }
        }
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
        let mut out: Vec<Option<Bytes>> = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(CHUNK_ROWS) {
            out.extend(self.read_chunk(chunk).await?);
        }
        Ok(out)
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        for (key, value) in entries {
            self.inner.limits.check_entry(key, value)?;
        }
        // With one prefix before every key, the user keys sort as the full keys do.
        let latest = last_per_key(entries.iter().copied(), |(key, _)| key);
        let mut chunks: Vec<(FullKeys, Vec<&[u8]>)> = Vec::new();
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut values: Vec<&[u8]> = Vec::new();
        let mut bytes = 0;
        for (key, value) in latest {
            if keys.len() >= CHUNK_ROWS || bytes >= CHUNK_BYTES {
                chunks.push((self.full_keys(&keys), std::mem::take(&mut values)));
                keys.clear();
                bytes = 0;
            }
            bytes += self.inner.prefix.len() + key.len() + value.len();
            keys.push(key);
            values.push(value);
        }
        if !keys.is_empty() {
            chunks.push((self.full_keys(&keys), values));
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
                        .bind(keys.slices())
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
        Ok(())
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        for key in keys {
            self.inner.limits.check_key(key)?;
        }
        let mut deleted = 0;
        for chunk in keys.chunks(CHUNK_ROWS) {
            let buffer = self.full_keys(chunk);
            let full = &buffer.slices();
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
        self.cas_point(key, expected, new).await
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
        Ok(())
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.inner.limits.check_key(key)?;
        let full = &self.full_key(key)[..];
        self.run("ttl", Idempotency::Idempotent, move || async move {
            let mut c = self.read_checkout().await?;
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
            let mut c = self.read_checkout().await?;
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

    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.export_copy(prefix)
    }

    async fn import(
        &self,
        mut entries: BoxStream<'_, Result<Entry>>,
        mode: ImportMode,
    ) -> Result<u64> {
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
                return self.import_replace(&mut c, &mut entries).await;
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
                chunk.push(full, entry)?;
            }
            written += self.import_chunk(&mut c, &mut chunk).await?;
            Ok::<u64, StateError>(written)
        }
        .await;
        match outcome {
            Ok(written) => c.commit("import").await.map(|_| written),
            Err(err) => {
                c.rollback().await;
                Err(err)
            }
        }
    }

    /// Healthy on a primary, and on a standby the backend was opened on (read-only);
    /// unhealthy when the server it writes to has become a standby. The detail reports
    /// replication: a standby's lag behind its primary (0 when it has replayed everything
    /// it received), a primary's standbys and their largest `replay_lag`, and with
    /// `read_from=replicas` each replica's lag.
    async fn health_check(&self) -> Result<Health> {
        let started = Instant::now();
        let endpoint = self.inner.conns.endpoint().to_string();
        let standby = self.inner.conns.standby();
        let probe = async {
            let mut c = self.checkout().await?;
            let (in_recovery, lag, standbys) = replication(&mut c).await?;
            drop(c);
            let mut detail = if in_recovery {
                format!(
                    "PostgreSQL standby at {endpoint} (read-only), replication lag {}",
                    seconds(lag)
                )
            } else if standbys > 0 {
                format!(
                    "PostgreSQL primary at {endpoint}, {standbys} streaming standby(s), largest \
                     replay lag {}",
                    seconds(lag)
                )
            } else {
                format!("PostgreSQL primary at {endpoint}")
            };
            for set in &self.inner.replicas {
                let lag = match set.checkout().await {
                    Ok(mut c) => replication(&mut c)
                        .await
                        .map(|(_, lag, _)| seconds(lag))
                        .unwrap_or_else(|e| format!("unreachable ({})", e.message())),
                    Err(e) => format!("unreachable ({})", e.message()),
                };
                detail.push_str(&format!("; replica {} lag {lag}", set.endpoint()));
            }
            Ok::<_, StateError>((in_recovery, detail))
        };
        let outcome = tokio::time::timeout(self.inner.attempt_timeout, probe).await;
        let latency = started.elapsed();
        Ok(match outcome {
            Ok(Ok((in_recovery, detail))) if in_recovery && !standby => Health::unhealthy(
                latency,
                format!("{detail}: the server this backend writes to is a standby"),
            ),
            Ok(Ok((_, detail))) => Health::healthy(latency, detail),
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

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    async fn stats(&self) -> Stats {
        let conns = &self.inner.conns;
        conns
            .counters
            .snapshot(conns.open_connections(), conns.max_connections())
    }

    /// `postgres_table_bytes` (`pg_total_relation_size` of the state table),
    /// `postgres_dead_tuples` (its `n_dead_tup`) and `postgres_connections_in_use`.
    async fn gauges(&self) -> Result<Vec<Gauge>> {
        self.server_gauges().await
    }
}

/// `(in recovery, lag in seconds, streaming standbys)`: on a standby its replay lag (0
/// when it has replayed all it received; `None` before it replayed anything), on a
/// primary the largest `replay_lag` of its standbys.
async fn replication(c: &mut crate::conn::Checkout<'_>) -> Result<(bool, Option<f64>, i64)> {
    let what = "health check";
    let query = sqlx::query(
        "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN \
           CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0::float8 \
           ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 END \
         ELSE (SELECT max(extract(epoch FROM replay_lag))::float8 FROM pg_stat_replication) END, \
         (SELECT count(*) FROM pg_stat_replication)::int8",
    );
    let row = c.fetch_one(what, query).await?;
    Ok((
        decode::<bool>(&row, 0, what)?,
        decode::<Option<f64>>(&row, 1, what)?,
        decode::<i64>(&row, 2, what)?,
    ))
}

fn seconds(lag: Option<f64>) -> String {
    match lag {
        Some(s) => format!("{s:.3}s"),
        None => "unknown (nothing replayed yet)".to_string(),
    }
}
