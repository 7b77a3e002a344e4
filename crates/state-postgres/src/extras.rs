//! The guide's PostgreSQL extras: server-side checkpoints, metadata queries and
//! maintenance; and the figures of `gauges`.
//!
//! # Two kinds of checkpoints in PostgreSQL
//!
//! - **Server-side** ([`create_checkpoint`](PostgresStateBackend::create_checkpoint) and
//!   the rest here; `statectl checkpoint …` without `--store`): a copy of the namespace's
//!   rows into the backend's own checkpoint tables, by `INSERT … SELECT` inside the
//!   server. No row crosses the network, the copy is one `REPEATABLE READ` snapshot and a
//!   restore is one transaction: the fast path, for this PostgreSQL namespace only (the
//!   copies are rows of this table's schema, numbered, not files another backend reads).
//! - **A checkpoint store in PostgreSQL** (state-checkpoint's `PostgresCheckpointStore`;
//!   `statectl checkpoint … --store postgres://…`): portable checkpoint files (the
//!   checksummed format every backend writes and reads) kept as rows of a table, written
//!   through the checkpoint coordinator like a directory or object store. Any backend
//!   checkpoints into it and is restored from it, this one included, at the price of
//!   streaming every entry out of and back into the server.
//!
//! Both stay: the server-side copy is the cheap one for PostgreSQL alone (state-checkpoint
//! cannot run it without depending on this crate's tables and connection handling), the
//! store is the one that moves state between backends.

use std::time::SystemTime;

use sqlx::Row;
use state_core::{BoxStream, Entry, ErrorKind, Gauge, Idempotency, Result, StateError};

use crate::driver::{PostgresStateBackend, micros_to_time};
use crate::error::convert;
use crate::pager::{Pager, PagerKind};

/// One server-side checkpoint (the guide's `list_checkpoints()` item).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its id, for [`PostgresStateBackend::restore_checkpoint`].
    pub checkpoint_id: i64,
    /// When it was taken (database clock).
    pub created_at: SystemTime,
    /// How many live entries it holds.
    pub row_count: u64,
    /// Key and value bytes it holds.
    pub data_size: u64,
}

fn get<T>(row: &sqlx::postgres::PgRow, index: usize, what: &str) -> Result<T>
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    row.try_get(index).map_err(|e| convert(e, what, true))
}

impl PostgresStateBackend {
    /// Copies every live entry of the namespace into a new checkpoint, inside the server:
    /// one `REPEATABLE READ` transaction running `INSERT … SELECT`, so no row passes through
    /// the client and the copy is one consistent snapshot. Returns the checkpoint id.
    pub async fn create_checkpoint(&self) -> Result<i64> {
        let (lower, upper) = self.namespace_range(b"");
        let (lower, upper) = (&lower, &upper);
        let prefix = &self.inner.prefix[..];
        // Not retried: a lost COMMIT reply could leave a checkpoint behind, and a retry
        // would make a second one.
        self.run(
            "create_checkpoint",
            Idempotency::NotIdempotent,
            move || async move {
                let sql = &self.inner.sql;
                let mut c = self.checkout().await?;
                c.begin("create_checkpoint", "BEGIN ISOLATION LEVEL REPEATABLE READ")
                    .await?;
                let work = async {
                    let row = c
                        .fetch_one(
                            "create_checkpoint",
                            sqlx::query(sql.checkpoint_header.clone()).bind(prefix),
                        )
                        .await?;
                    let id: i64 = get(&row, 0, "create_checkpoint")?;
                    let mut copy = sqlx::query(sql.checkpoint_copy.pick(upper)).bind(lower);
                    if let Some(upper) = upper {
                        copy = copy.bind(upper);
                    }
                    let row = c.fetch_one("create_checkpoint", copy.bind(id)).await?;
                    let rows: i64 = get(&row, 0, "create_checkpoint")?;
                    let size: i64 = get(&row, 1, "create_checkpoint")?;
                    let finish = sqlx::query(sql.checkpoint_finish.clone())
                        .bind(id)
                        .bind(rows)
                        .bind(size);
                    c.execute("create_checkpoint", finish).await?;
                    Ok::<i64, StateError>(id)
                }
                .await;
                match work {
                    Ok(id) => {
                        c.commit("create_checkpoint").await?;
                        Ok(id)
                    }
                    Err(err) => {
                        c.rollback().await;
                        Err(err)
                    }
                }
            },
        )
        .await
    }

    /// The checkpoints of this namespace, oldest first.
    pub async fn list_checkpoints(&self) -> Result<Vec<CheckpointInfo>> {
        let prefix = &self.inner.prefix[..];
        let rows = self
            .run(
                "list_checkpoints",
                Idempotency::Idempotent,
                move || async move {
                    let mut c = self.checkout().await?;
                    let query = sqlx::query(self.inner.sql.checkpoint_list.clone()).bind(prefix);
                    c.fetch_all("list_checkpoints", query).await
                },
            )
            .await?;
        rows.iter()
            .map(|row| {
                Ok(CheckpointInfo {
                    checkpoint_id: get(row, 0, "list_checkpoints")?,
                    created_at: micros_to_time(get(row, 1, "list_checkpoints")?)?,
                    row_count: get::<i64>(row, 2, "list_checkpoints")?.max(0) as u64,
                    data_size: get::<i64>(row, 3, "list_checkpoints")?.max(0) as u64,
                })
            })
            .collect()
    }

    /// Replaces the namespace with checkpoint `id`, in one transaction: readers see the old
    /// state or the restored one, never a mix. Entries keep their absolute expiry; those
    /// expired since the checkpoint stay absent. Fencing marks of the namespace are cleared,
    /// as with `restore`. Returns how many entries were restored.
    pub async fn restore_checkpoint(&self, id: i64) -> Result<u64> {
        // A plain INSERT after the DELETE (the same statements one would run by hand); a
        // writer inserting one of the keys in between makes it fail with a unique
        // violation, and the whole restore, which is idempotent, runs again.
        let mut attempt = 1;
        loop {
            match self.restore_checkpoint_once(id).await {
                Err(err) if attempt < 3 && err.message().contains("SQLSTATE 23505") => {
                    attempt += 1;
                }
                Err(err) if err.message().contains("SQLSTATE 23505") => {
                    return Err(StateError::new(
                        ErrorKind::Conflict,
                        format!(
                            "restoring checkpoint {id} kept colliding with concurrent writes \
                             to the same keys; stop the writers and try again"
                        ),
                    )
                    .with_source(err));
                }
                other => return other,
            }
        }
    }

    async fn restore_checkpoint_once(&self, id: i64) -> Result<u64> {
        let (lower, upper) = self.namespace_range(b"");
        let (lower, upper) = (&lower, &upper);
        let prefix = &self.inner.prefix[..];
        // Not re-sent after a lost COMMIT reply: a second restore would wipe what other
        // clients wrote after the first.
        self.run(
            "restore_checkpoint",
            Idempotency::NotIdempotent,
            move || async move {
                let sql = &self.inner.sql;
                let mut c = self.checkout().await?;
                c.begin("restore_checkpoint", "BEGIN").await?;
                let work = async {
                    // FOR SHARE keeps a concurrent delete_checkpoint out until we commit.
                    let lock = sqlx::query(sql.checkpoint_lock.clone())
                        .bind(id)
                        .bind(prefix);
                    if c.fetch_optional("restore_checkpoint", lock)
                        .await?
                        .is_none()
                    {
                        return Err(checkpoint_not_found(id));
                    }
                    let mut clear = sqlx::query(sql.clear_quiet.pick(upper)).bind(lower);
                    if let Some(upper) = upper {
                        clear = clear.bind(upper);
                    }
                    c.execute("restore_checkpoint", clear).await?;
                    let restore = sqlx::query(sql.checkpoint_restore.clone()).bind(id);
                    Ok(c.execute("restore_checkpoint", restore)
                        .await?
                        .rows_affected())
                }
                .await;
                match work {
                    Ok(rows) => {
                        c.commit("restore_checkpoint").await?;
                        Ok(rows)
                    }
                    Err(err) => {
                        c.rollback().await;
                        Err(err)
                    }
                }
            },
        )
        .await
    }

    /// Deletes checkpoint `id` of this namespace; returns whether it existed.
    pub async fn delete_checkpoint(&self, id: i64) -> Result<bool> {
        let prefix = &self.inner.prefix[..];
        // Not re-sent after a lost reply: the second would report `false` for a
        // checkpoint the first deleted.
        self.run(
            "delete_checkpoint",
            Idempotency::NotIdempotent,
            move || async move {
                let mut c = self.checkout().await?;
                let query = sqlx::query(self.inner.sql.checkpoint_delete.clone())
                    .bind(id)
                    .bind(prefix);
                Ok(c.execute("delete_checkpoint", query).await?.rows_affected() > 0)
            },
        )
        .await
    }

    /// Streams the live entries of the namespace whose metadata contains `filter` (JSONB
    /// `@>`, served by the GIN index), in key order.
    ///
    /// ```no_run
    /// # use state_postgres::PostgresStateBackend;
    /// # async fn demo(backend: PostgresStateBackend) -> state_core::Result<()> {
    /// use state_core::stream;
    /// let from_kafka = backend.query_metadata(serde_json::json!({"source": "kafka"}));
    /// let entries = stream::try_collect(from_kafka).await?;
    /// # Ok(()) }
    /// ```
    pub fn query_metadata(&self, filter: serde_json::Value) -> BoxStream<'_, Result<Entry>> {
        Pager::new(self, b"", PagerKind::Metadata(filter)).into_stream()
    }

    /// Deletes every expired row of the table (all namespaces: expired rows are invisible
    /// to everyone) through the migration's cleanup function; returns how many it deleted.
    pub async fn cleanup_expired(&self) -> Result<u64> {
        // Not re-sent after a lost reply: the second would under-count what was deleted.
        self.run(
            "cleanup_expired",
            Idempotency::NotIdempotent,
            move || async move {
                let mut c = self.checkout().await?;
                let row = c
                    .fetch_one(
                        "cleanup_expired",
                        sqlx::query(self.inner.sql.cleanup.clone()),
                    )
                    .await?;
                Ok(get::<i32>(&row, 0, "cleanup_expired")?.max(0) as u64)
            },
        )
        .await
    }

    /// `VACUUM (ANALYZE)` of the state table.
    pub async fn vacuum(&self) -> Result<()> {
        self.run("vacuum", Idempotency::Idempotent, move || async move {
            let mut c = self.checkout().await?;
            c.simple_owned("vacuum", self.inner.sql.vacuum.clone())
                .await
        })
        .await
    }

    /// `(total_size, table_size)` of the state table in bytes: with indexes and TOAST, and
    /// the main heap alone.
    pub async fn table_stats(&self) -> Result<(u64, u64)> {
        let name = &self.inner.names.entries;
        self.run("table_stats", Idempotency::Idempotent, move || async move {
            let mut c = self.checkout().await?;
            let query = sqlx::query(self.inner.sql.table_stats.clone()).bind(name);
            let row = c.fetch_one("table_stats", query).await?;
            Ok((
                get::<i64>(&row, 0, "table_stats")?.max(0) as u64,
                get::<i64>(&row, 1, "table_stats")?.max(0) as u64,
            ))
        })
        .await
    }

    /// The figures of [`gauges`](state_core::StateBackend::gauges): the state table's
    /// bytes (`pg_total_relation_size`: heap, indexes and TOAST, every key prefix in it),
    /// its dead tuples (`n_dead_tup`: 0 until the server has counted the table), and the
    /// connections operations hold now (taken before this query takes one).
    pub(crate) async fn server_gauges(&self) -> Result<Vec<Gauge>> {
        let in_use = self.inner.conns.in_use();
        let name = &self.inner.names.entries;
        let (bytes, dead) = self
            .run("gauges", Idempotency::Idempotent, move || async move {
                let mut c = self.checkout().await?;
                let query = sqlx::query(self.inner.sql.gauges.clone()).bind(name);
                let row = c.fetch_one("gauges", query).await?;
                Ok((
                    get::<i64>(&row, 0, "gauges")?,
                    get::<i64>(&row, 1, "gauges")?,
                ))
            })
            .await?;
        Ok(vec![
            Gauge::new("postgres_table_bytes", bytes.max(0) as f64),
            Gauge::new("postgres_dead_tuples", dead.max(0) as f64),
            Gauge::new("postgres_connections_in_use", in_use as f64),
        ])
    }
}

/// `NotFound` for a checkpoint id that does not exist in this namespace.
fn checkpoint_not_found(id: i64) -> StateError {
    StateError::new(
        ErrorKind::NotFound,
        format!(
            "checkpoint {id} does not exist for this key prefix; list_checkpoints() shows the ids"
        ),
    )
}
