//! [`PostgresCheckpointStore`]: checkpoint files and manifests kept in a table of a
//! PostgreSQL database, so that any backend can checkpoint into PostgreSQL and be restored
//! from it.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Connection, Row};
use state_core::{BoxStream, ErrorKind, Result, StateError};
use tokio::sync::OnceCell;

mod url;

use self::url::StoreUrl;
use super::memory::{bad_name, missing_data};
use super::{
    CheckpointId, CheckpointStore, Listing, Manifest, Object, classify, data_name, manifest_name,
    temp_name,
};

/// The bytes of one row of data: what is held in memory while writing or reading.
const CHUNK_LEN: usize = 1024 * 1024;

/// A manifest is a few hundred bytes; a larger object is not one, and is not read whole.
const MAX_MANIFEST_LEN: i64 = 64 * 1024;

/// Checkpoints as rows of one table, `{schema}.{table}` (created with its schema on first
/// use), with the guarantees of [`DirStore`](super::DirStore):
///
/// - **Objects** are named as a directory store names its files (`{id}.data`,
///   `{id}.manifest.json`); each is one or more rows `(name, chunk, bytes, modified)`, the
///   data in rows of at most 1 MiB, so neither writing nor reading holds more than one row
///   in memory.
/// - **Data** is written under a temporary name, one committed row at a time (no
///   transaction stays open while the backend is scanned), then renamed to `{id}.data` in
///   one transaction that also drops leftovers of a failed attempt: there is never a torn
///   `{id}.data`. A writer that dies leaves temporary rows, which
///   [`orphans`](CheckpointStore::orphans) reports for the sweep.
/// - **The manifest** is written last, with `INSERT … ON CONFLICT DO NOTHING`:
///   create-if-absent, so of two writers of one id exactly one commits; the data row is
///   locked `FOR SHARE` meanwhile, so a concurrent delete cannot leave a manifest pointing
///   at nothing.
/// - **Deletes** remove the manifest first, in its own transaction; what is already gone
///   counts as deleted.
/// - **Times** (for the orphan sweep) are the database's clock.
///
/// No statement is re-sent after an error: a failed call returns it, and the caller (the
/// coordinator's next attempt, the sweep) starts over.
#[derive(Clone)]
pub struct PostgresCheckpointStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where to connect (holds the password).
    options: PgConnectOptions,
    /// Made on first use, inside the runtime (making one spawns its upkeep), once the
    /// schema and table exist.
    pool: OnceCell<PgPool>,
    /// `"schema"."table"`, quoted.
    table: String,
    schema: String,
    /// What [`describe`](CheckpointStore::describe) says: the URL without user or password.
    place: String,
}

// By hand: the pool's options hold the password.
impl fmt::Debug for PostgresCheckpointStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresCheckpointStore")
            .field("place", &self.inner.place)
            .finish_non_exhaustive()
    }
}

impl PostgresCheckpointStore {
    /// The schema and table when the URL names none.
    pub const DEFAULT_SCHEMA: &str = "public";
    /// See [`DEFAULT_SCHEMA`](Self::DEFAULT_SCHEMA).
    /// (Not `state_checkpoints`: that is where a state-postgres backend with `table=state`
    /// keeps its server-side checkpoints.)
    pub const DEFAULT_TABLE: &str = "state_checkpoint_files";

    /// The store a `postgres://[user[:password]@]host[:port]/database[?schema=S&table=T]`
    /// URL names (`postgresql://` too). `schema` and `table` default to
    /// [`DEFAULT_SCHEMA`](Self::DEFAULT_SCHEMA) and [`DEFAULT_TABLE`](Self::DEFAULT_TABLE)
    /// and must be plain identifiers (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes); the
    /// driver's own parameters (`sslmode`, `sslrootcert`, `application_name`…) pass
    /// through; any other is refused.
    ///
    /// Connects lazily: the first call that needs the database connects, and creates the
    /// schema and table if they do not exist. `Config` for a URL that is not one of these,
    /// in a message that never repeats the user or password.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = StoreUrl::parse(url)?;
        let options = PgConnectOptions::from_str(&parsed.driver_url).map_err(|e| {
            StateError::config(format!(
                "the checkpoint store {} is not a valid PostgreSQL URL ({e}); it looks like \
                 postgres://user@host:5432/database?schema=S&table=T",
                parsed.place
            ))
        })?;
        Ok(PostgresCheckpointStore {
            inner: Arc::new(Inner {
                options: options.application_name("state-checkpoint"),
                pool: OnceCell::new(),
                table: format!("\"{}\".\"{}\"", parsed.schema, parsed.table),
                schema: parsed.schema,
                place: parsed.place,
            }),
        })
    }

    /// Stores `bytes` as the object `name` (`{id}.manifest.json`…), replacing it: for
    /// tests that damage or plant objects, as they would write a file of a
    /// [`DirStore`](super::DirStore).
    pub async fn put_object(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let pool = self.pool().await?;
        let mut tx = pool
            .begin()
            .await
            .map_err(|e| self.error("begin a transaction", e))?;
        self.sql(format!("DELETE FROM {} WHERE name = $1", self.inner.table))
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("replace an object", e))?;
        self.insert_row(name, 0, bytes)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("write an object", e))?;
        tx.commit().await.map_err(|e| self.error("commit", e))
    }

    /// Closes the connections (each is otherwise closed when the last clone is dropped).
    pub async fn close(&self) {
        if let Some(pool) = self.inner.pool.get() {
            pool.close().await;
        }
    }

    fn sql(&self, sql: String) -> sqlx::query::Query<'static, sqlx::Postgres, PgArgs> {
        sqlx::query(AssertSqlSafe(sql))
    }

    fn insert_row(
        &self,
        name: &str,
        chunk: i32,
        bytes: &[u8],
    ) -> sqlx::query::Query<'static, sqlx::Postgres, PgArgs> {
        self.sql(format!(
            "INSERT INTO {} (name, chunk, bytes, modified) VALUES ($1, $2, $3, clock_timestamp())",
            self.inner.table
        ))
        .bind(name.to_string())
        .bind(chunk)
        .bind(bytes.to_vec())
    }

    /// The pool, once the schema and table exist.
    async fn pool(&self) -> Result<&PgPool> {
        self.inner
            .pool
            .get_or_try_init(|| async {
                // One connection of its own first: an unreachable server or a refused
                // login fails at once with the server's reason (the pool would retry until
                // its timeout and then say only that it timed out).
                let mut conn = PgConnection::connect_with(&self.inner.options)
                    .await
                    .map_err(|e| self.error("connect", e))?;
                let created = self.create_table(&mut conn).await;
                let _ = conn.close().await;
                created?;
                Ok::<PgPool, StateError>(
                    PgPoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(10))
                        .connect_lazy_with(self.inner.options.clone()),
                )
            })
            .await
    }

    async fn create_table(&self, conn: &mut PgConnection) -> Result<()> {
        let inner = &self.inner;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| self.error("begin a transaction", e))?;
        // Two first uses at once would race in CREATE … IF NOT EXISTS (a unique violation
        // in the catalog): one waits for the other here.
        self.sql("SELECT pg_advisory_xact_lock(hashtext($1))".to_string())
            .bind(&inner.table)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("lock the creation of its table", e))?;
        let statements = [
            format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", inner.schema),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (name text NOT NULL, chunk integer NOT NULL, \
                 bytes bytea NOT NULL, modified timestamptz NOT NULL, \
                 PRIMARY KEY (name, chunk))",
                inner.table
            ),
        ];
        for statement in statements {
            self.sql(statement)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error("create its table", e))?;
        }
        // A table of that name made for something else is refused, not written into.
        let columns = format!(
            "SELECT name, chunk, bytes, modified FROM {} LIMIT 0",
            inner.table
        );
        if let Err(e) = self.sql(columns).execute(&mut *tx).await {
            return Err(StateError::config(format!(
                "checkpoint store {}: the table exists but is not a checkpoint store's (it \
                 lacks the columns name, chunk, bytes, modified: {e}); name another with \
                 table=",
                inner.place
            )));
        }
        tx.commit().await.map_err(|e| self.error("commit", e))
    }

    /// Every object: name, bytes, last written (the newest row).
    async fn objects(&self) -> Result<Vec<(String, i64, SystemTime)>> {
        let pool = self.pool().await?;
        let rows = self
            .sql(format!(
                "SELECT name, sum(octet_length(bytes))::int8, \
                 (extract(epoch FROM max(modified)) * 1000000)::int8 \
                 FROM {} GROUP BY name ORDER BY name",
                self.inner.table
            ))
            .fetch_all(pool)
            .await
            .map_err(|e| self.error("list its objects", e))?;
        rows.iter()
            .map(|row| {
                let name: String = row.try_get(0).map_err(|e| self.error("read", e))?;
                let len: i64 = row.try_get(1).map_err(|e| self.error("read", e))?;
                let micros: i64 = row.try_get(2).map_err(|e| self.error("read", e))?;
                let at = UNIX_EPOCH + Duration::from_micros(micros.max(0).unsigned_abs());
                Ok((name, len, at))
            })
            .collect()
    }

    /// Removes the data and temporary objects of `id` and, if `manifest_too` (first, in
    /// its own transaction), its manifest.
    async fn remove_id(&self, id: CheckpointId, manifest_too: bool) -> Result<()> {
        let pool = self.pool().await?;
        let table = &self.inner.table;
        if manifest_too {
            // First: from here on the checkpoint does not exist.
            self.sql(format!("DELETE FROM {table} WHERE name = $1"))
                .bind(manifest_name(id))
                .execute(pool)
                .await
                .map_err(|e| self.error("delete a manifest", e))?;
        }
        // Ids are digits and `-`: nothing in the patterns is a LIKE wildcard.
        self.sql(format!(
            "DELETE FROM {table} WHERE name = $1 OR name LIKE $2 OR name LIKE $3"
        ))
        .bind(data_name(id))
        .bind(format!("{}.tmp-%", data_name(id)))
        .bind(format!("{}.tmp-%", manifest_name(id)))
        .execute(pool)
        .await
        .map_err(|e| self.error("delete the data", e))?;
        Ok(())
    }

    /// Writes the rows of the temporary object `temp` from `chunks`; the bytes written.
    async fn write_rows(
        &self,
        pool: &PgPool,
        temp: &str,
        chunks: &mut BoxStream<'_, Result<Bytes>>,
    ) -> Result<u64> {
        let mut row = BytesMut::with_capacity(CHUNK_LEN);
        let mut index = 0i32;
        let mut written = 0u64;
        let mut finished = false;
        while !finished {
            match state_core::stream::next(chunks).await {
                Some(chunk) => {
                    let chunk = chunk?;
                    written += chunk.len() as u64;
                    row.extend_from_slice(&chunk);
                }
                None => finished = true,
            }
            // Whole rows while there are; the rest (at least one row, even empty) at the end.
            while row.len() >= CHUNK_LEN || (finished && (!row.is_empty() || index == 0)) {
                let take = row.len().min(CHUNK_LEN);
                let bytes = row.split_to(take);
                self.insert_row(temp, index, &bytes)
                    .execute(pool)
                    .await
                    .map_err(|e| self.error("write data", e))?;
                index = index.checked_add(1).ok_or_else(|| {
                    StateError::invalid_input(format!(
                        "a checkpoint file larger than {} rows of {CHUNK_LEN} bytes does not \
                         fit in {}",
                        i32::MAX,
                        self.inner.place
                    ))
                })?;
            }
        }
        Ok(written)
    }

    fn error(&self, action: &str, e: sqlx::Error) -> StateError {
        sql_error(action, &self.inner.place, e)
    }
}

type PgArgs = sqlx::postgres::PgArguments;

/// A driver error as a [`StateError`]: what failed on which store, and the server's word.
fn sql_error(action: &str, place: &str, e: sqlx::Error) -> StateError {
    let kind = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorKind::Connection,
        sqlx::Error::Configuration(_) => ErrorKind::Config,
        _ => ErrorKind::Backend,
    };
    let hint = match kind {
        ErrorKind::Connection => "; check that the server is up and the URL's host and port",
        _ => "",
    };
    StateError::new(
        kind,
        format!("checkpoint store {place}: could not {action}: {e}{hint}"),
    )
    .with_source(e)
}

#[async_trait::async_trait]
impl CheckpointStore for PostgresCheckpointStore {
    async fn write_data(
        &self,
        id: CheckpointId,
        mut chunks: BoxStream<'_, Result<Bytes>>,
    ) -> Result<u64> {
        let pool = self.pool().await?;
        let temp = temp_name(&data_name(id));
        let table = &self.inner.table;
        let written = match self.write_rows(pool, &temp, &mut chunks).await {
            Ok(written) => written,
            Err(e) => {
                // Best effort: what stays behind is an orphan the sweep removes.
                let _ = self
                    .sql(format!("DELETE FROM {table} WHERE name = $1"))
                    .bind(&temp)
                    .execute(pool)
                    .await;
                return Err(e);
            }
        };
        // The rename: the old data of the id (a failed attempt's) and the new appear to
        // swap in one step.
        let mut tx = pool
            .begin()
            .await
            .map_err(|e| self.error("begin a transaction", e))?;
        self.sql(format!("DELETE FROM {table} WHERE name = $1"))
            .bind(data_name(id))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("replace the data", e))?;
        let renamed = self
            .sql(format!(
                "UPDATE {table} SET name = $2, modified = clock_timestamp() WHERE name = $1"
            ))
            .bind(&temp)
            .bind(data_name(id))
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("rename the data", e))?;
        if renamed.rows_affected() == 0 {
            return Err(StateError::new(
                ErrorKind::NotFound,
                format!(
                    "the data of checkpoint {id} was deleted from {} while it was written",
                    self.inner.place
                ),
            ));
        }
        tx.commit().await.map_err(|e| self.error("commit", e))?;
        Ok(written)
    }

    async fn read_data(&self, id: CheckpointId) -> Result<BoxStream<'static, Result<Bytes>>> {
        let pool = self.pool().await?.clone();
        let table = self.inner.table.clone();
        let place = self.inner.place.clone();
        let name = data_name(id);
        let row = self
            .sql(format!("SELECT count(*) FROM {table} WHERE name = $1"))
            .bind(&name)
            .fetch_one(&pool)
            .await
            .map_err(|e| self.error("read", e))?;
        let rows: i64 = row.try_get(0).map_err(|e| self.error("read", e))?;
        if rows == 0 {
            return Err(StateError::new(
                ErrorKind::NotFound,
                format!("checkpoint {id} has no data in {place}"),
            ));
        }
        let sql = format!("SELECT bytes FROM {table} WHERE name = $1 AND chunk = $2");
        // One row per step: memory stays at one row however large the file.
        let state = (0i64, pool, sql, name, place);
        let chunks = futures_util::stream::unfold(state, move |state| async move {
            let (index, pool, sql, name, place) = state;
            if index >= rows {
                return None;
            }
            let row = i32::try_from(index).ok()?;
            let fetched = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(&name)
                .bind(row)
                .fetch_optional(&pool)
                .await;
            let item = match fetched {
                Ok(Some(got)) => got
                    .try_get::<Vec<u8>, _>(0)
                    .map(Bytes::from)
                    .map_err(|e| sql_error("read", &place, e)),
                Ok(None) => Err(StateError::corrupt(format!(
                    "{place}/{name}: row {row} of {rows} is missing (was the checkpoint \
                     deleted while it was read?)"
                ))),
                Err(e) => Err(sql_error("read", &place, e)),
            };
            // After an error the stream ends: the reader has its answer.
            let next = if item.is_ok() { index + 1 } else { rows };
            Some((item, (next, pool, sql, name, place)))
        });
        Ok(Box::pin(chunks))
    }

    async fn commit(&self, manifest: &Manifest) -> Result<bool> {
        let id = manifest.id;
        let json = manifest.to_json()?;
        let pool = self.pool().await?;
        let table = &self.inner.table;
        let mut tx = pool
            .begin()
            .await
            .map_err(|e| self.error("begin a transaction", e))?;
        // FOR SHARE: a delete of the data waits until the manifest is in (and then sees
        // it), so a manifest never points at nothing.
        let data = self
            .sql(format!(
                "SELECT 1 FROM {table} WHERE name = $1 AND chunk = 0 FOR SHARE"
            ))
            .bind(data_name(id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.error("look up the data", e))?;
        if data.is_none() {
            return Err(StateError::new(
                ErrorKind::NotFound,
                format!(
                    "checkpoint {id} has no data in {}: write it before its manifest",
                    self.inner.place
                ),
            ));
        }
        let inserted = self
            .sql(format!(
                "INSERT INTO {table} (name, chunk, bytes, modified) \
                 VALUES ($1, 0, $2, clock_timestamp()) ON CONFLICT (name, chunk) DO NOTHING"
            ))
            .bind(manifest_name(id))
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error("write the manifest", e))?;
        tx.commit().await.map_err(|e| self.error("commit", e))?;
        Ok(inserted.rows_affected() == 1)
    }

    async fn manifests(&self) -> Result<Listing> {
        let objects = self.objects().await?;
        let has_data = |id: CheckpointId| {
            let name = data_name(id);
            objects.iter().any(|(n, _, _)| *n == name)
        };
        let pool = self.pool().await?;
        let mut listing = Listing::default();
        for (name, len, _) in &objects {
            let shown = format!("{}/{name}", self.inner.place);
            match classify(name) {
                Object::Manifest(id) => {
                    let checked = match self.read_manifest(pool, name, *len, &shown, id).await {
                        Ok(None) => continue,
                        Ok(Some(_)) if !has_data(id) => Err(missing_data(&shown, id)),
                        Ok(Some(manifest)) => Ok(manifest),
                        Err(e) => Err(e),
                    };
                    match checked {
                        Ok(manifest) => listing.valid.push(manifest),
                        Err(e) => listing.invalid.push((name.clone(), e)),
                    }
                }
                Object::BadManifest => listing.invalid.push((name.clone(), bad_name(&shown))),
                Object::Data(_) | Object::Temp(_) | Object::Other => {}
            }
        }
        listing.valid.sort_by_key(|m| m.id);
        Ok(listing)
    }

    async fn delete(&self, id: CheckpointId) -> Result<()> {
        self.remove_id(id, true).await
    }

    async fn orphans(&self) -> Result<Vec<(CheckpointId, SystemTime)>> {
        let objects = self.objects().await?;
        let committed: Vec<CheckpointId> = objects
            .iter()
            .filter_map(|(name, _, _)| match classify(name) {
                Object::Manifest(id) => Some(id),
                _ => None,
            })
            .collect();
        let mut orphans: std::collections::BTreeMap<CheckpointId, SystemTime> =
            std::collections::BTreeMap::new();
        for (name, _, modified) in &objects {
            if let Object::Data(id) | Object::Temp(id) = classify(name)
                && !committed.contains(&id)
            {
                let newest = orphans.entry(id).or_insert(*modified);
                *newest = (*newest).max(*modified);
            }
        }
        Ok(orphans.into_iter().collect())
    }

    async fn delete_data(&self, id: CheckpointId) -> Result<()> {
        self.remove_id(id, false).await
    }

    fn describe(&self) -> String {
        self.inner.place.clone()
    }
}

impl PostgresCheckpointStore {
    /// The manifest object `name` (of `len` bytes), parsed and checked; `None` if it was
    /// deleted since it was listed.
    async fn read_manifest(
        &self,
        pool: &PgPool,
        name: &str,
        len: i64,
        shown: &str,
        id: CheckpointId,
    ) -> Result<Option<Manifest>> {
        if len > MAX_MANIFEST_LEN {
            return Err(StateError::corrupt(format!(
                "checkpoint manifest `{shown}` is larger than {MAX_MANIFEST_LEN} bytes: not a \
                 manifest"
            )));
        }
        let row = self
            .sql(format!(
                "SELECT string_agg(bytes, ''::bytea ORDER BY chunk) FROM {} WHERE name = $1",
                self.inner.table
            ))
            .bind(name)
            .fetch_one(pool)
            .await
            .map_err(|e| self.error("read a manifest", e))?;
        let json: Option<Vec<u8>> = row.try_get(0).map_err(|e| self.error("read", e))?;
        match json {
            None => Ok(None),
            Some(json) => Manifest::from_json(shown, Some(id), &json).map(Some),
        }
    }
}
