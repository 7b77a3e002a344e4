//! [`LockMode::Lease`](super::LockMode::Lease): a row per held lock, with an expiry set by
//! the database clock. Every operation is one statement in the simple query protocol, so a
//! transaction pooler may hand each one to a different server connection.
//!
//! The table is `UNLOGGED` unless the config asks for durable leases: its commits then
//! write no WAL for the row and do not wait for a flush, while the token sequence stays
//! crash-safe (the reasoning is on [`super::PostgresDistributedLock`]).

use std::any::Any;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{Connection, PgConnection, Row};
use state_core::{ErrorKind, FencingToken, GuardState, LockGuard, Result, StateError};
use tokio::sync::Semaphore;

use super::key::{advisory_key, pg_locks_ids};
use super::{
    LockTable, PostgresLockConfig, breaks_connection, client_timeout, convert, deadline_after,
    foreign_guard, is_creation_race, setup_sql, text_literal,
};

/// What the lock and its guards share.
struct Shared {
    pool: Connections,
    table: String,
    sequence: String,
    op_timeout: Duration,
    /// How many attempts an idempotent statement gets when connections break: enough to
    /// get past every pooled connection a server restart left dead.
    attempts: u32,
}

/// Lease mode's connections: at most `pool_max` open, the free ones kept for reuse.
///
/// Not sqlx's `PgPool`: that one tests every connection handed back with a round trip
/// (`Sync`/`ReadyForQuery`) before another task may use it, one extra round trip per lock
/// operation. Here a connection goes back to the free list only after its statement
/// succeeded or was refused by the server (the connection is then in a known state); one
/// that broke, timed out or whose statement was abandoned (the future dropped) is closed.
struct Connections {
    options: PgConnectOptions,
    endpoint: String,
    free: StdMutex<Vec<PgConnection>>,
    /// One permit per connection that may be open (`pool_max`).
    slots: Semaphore,
    acquire_timeout: Duration,
    connect_timeout: Duration,
}

/// The Lease-mode implementation behind [`super::PostgresDistributedLock`].
pub(super) struct LeaseLock {
    shared: Arc<Shared>,
}

/// A Lease-mode guard's state: what identifies the row, and the pool to delete it with.
struct LeaseGuard {
    token: i64,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LeaseGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseGuard")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl GuardState for LeaseGuard {
    fn release_on_drop(self: Box<Self>, name: &str, owner: &str) {
        // Outside a runtime nothing can talk to the server: the lease runs out on its own.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let sql = self.shared.release_sql(name, owner, self.token);
            let shared = self.shared;
            handle.spawn(async move {
                let _ = shared.run(&sql, "releasing a dropped lock guard").await;
            });
        }
    }
}

impl LeaseLock {
    /// Creates the (lazy, bounded) connection pool, then the schema, the sequence and the
    /// table (or switches the table's persistence to the config's), which also checks the
    /// server and the credentials.
    pub(super) async fn open(config: &PostgresLockConfig) -> Result<LeaseLock> {
        let pg = config.postgres_config();
        let options = pg
            .connect_options()
            .application_name(&config.application_name)
            // We read no floating-point values; PgBouncer refuses this parameter.
            .extra_float_digits(None);
        let (_, max) = pg.pool_size();
        // No check before a connection is used: a dead one fails its statement instead, is
        // closed, and the (idempotent) statement is retried on another.
        let pool = Connections {
            options,
            endpoint: pg.redacted_url(),
            free: StdMutex::new(Vec::new()),
            slots: Semaphore::new(
                usize::try_from(max)
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .min(Semaphore::MAX_PERMITS),
            ),
            acquire_timeout: pg.acquire_timeout(),
            connect_timeout: pg.connect_timeout(),
        };
        let schema = config.quoted_schema();
        let shared = Arc::new(Shared {
            pool,
            table: format!("{schema}.state_locks"),
            sequence: format!("{schema}.state_lock_tokens"),
            op_timeout: config.op_timeout(),
            attempts: max.saturating_add(1),
        });
        let table = LockTable::Lease {
            durable: config.durable_leases(),
        };
        let sql = setup_sql(config.schema(), table);
        let what = format!("creating the lock table in schema `{}`", config.schema());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match shared.run_once(&sql, &what).await {
                Ok(_) => break,
                Err(Attempt::Refused(e, race)) if race && attempt < 3 => drop(e),
                Err(failure) => return Err(failure.into_error()),
            }
        }
        Ok(LeaseLock { shared })
    }

    pub(super) async fn try_acquire(
        &self,
        name: &str,
        ttl: Duration,
        millis: u64,
        owner: &str,
    ) -> Result<Option<LockGuard>> {
        let (high, low) = pg_locks_ids(advisory_key(name));
        let (name_sql, owner_sql) = (text_literal(name), text_literal(owner));
        let Shared {
            table, sequence, ..
        } = &*self.shared;
        // The transaction-level lock (two-int form: a different lock space from Session
        // mode's bigint keys) serialises acquires of one name, so the token is drawn after
        // any earlier holder's: tokens increase in the order the lock changes hands.
        // The same owner keeps its token while its lease runs (a retried acquire whose
        // reply was lost); a takeover of an expired lease gets a new one.
        let sql = format!(
            "WITH serial AS MATERIALIZED (SELECT pg_advisory_xact_lock({h}, {l})) \
             INSERT INTO {table} AS l (name, owner, token, expires_at) \
             SELECT {name_sql}, {owner_sql}, nextval('{sequence}'), \
                    now() + interval '1 millisecond' * {millis} FROM serial \
             ON CONFLICT (name) DO UPDATE SET \
               owner = EXCLUDED.owner, \
               token = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > now() \
                            THEN l.token ELSE EXCLUDED.token END, \
               expires_at = EXCLUDED.expires_at \
             WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner \
             RETURNING l.token",
            h = i32::from_ne_bytes(high.to_ne_bytes()),
            l = i32::from_ne_bytes(low.to_ne_bytes()),
        );
        let started = Instant::now();
        let what = format!("acquiring lock `{name}`");
        // Idempotent for one owner, so a lost reply is retried with the same statement.
        let (row, _) = self.shared.run(&sql, &what).await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let token = row
            .try_get::<i64, _>(0)
            .map_err(|e| StateError::new(ErrorKind::Backend, format!("{what}: {e}")))?;
        let fencing = u64::try_from(token).map_err(|_| {
            StateError::new(
                ErrorKind::Backend,
                format!("{what}: the token sequence returned {token}; it must be positive"),
            )
        })?;
        let state = LeaseGuard {
            token,
            shared: Arc::clone(&self.shared),
        };
        Ok(Some(LockGuard::new(
            name,
            owner,
            FencingToken(fencing),
            deadline_after(started, ttl),
            Some(Box::new(state)),
        )))
    }

    pub(super) async fn extend(
        &self,
        guard: &mut LockGuard,
        ttl: Duration,
        millis: u64,
    ) -> Result<()> {
        let Some(state) = guard.state() else {
            return Err(StateError::not_owner(guard.name(), "extend"));
        };
        let Some(state) = (state as &dyn Any).downcast_ref::<LeaseGuard>() else {
            return Err(foreign_guard(guard));
        };
        let sql = format!(
            "UPDATE {table} SET expires_at = now() + interval '1 millisecond' * {millis} \
             WHERE name = {name} AND owner = {owner} AND token = {token} AND expires_at > now() \
             RETURNING token",
            table = self.shared.table,
            name = text_literal(guard.name()),
            owner = text_literal(guard.owner()),
            token = state.token,
        );
        let started = Instant::now();
        let what = format!("extending lock `{}`", guard.name());
        match self.shared.run(&sql, &what).await? {
            (Some(_), _) => {
                guard.set_deadline(deadline_after(started, ttl));
                Ok(())
            }
            // Expired or taken over: never re-created.
            (None, _) => Err(StateError::not_owner(guard.name(), "extend")),
        }
    }

    pub(super) async fn release(&self, mut guard: LockGuard) -> Result<()> {
        let name = guard.name().to_string();
        let token = match guard.state() {
            None => return Err(StateError::not_owner(&name, "release")),
            Some(state) => match (state as &dyn Any).downcast_ref::<LeaseGuard>() {
                Some(state) => state.token,
                None => return Err(foreign_guard(&guard)),
            },
        };
        // Taken first, so that Drop does not release a second time.
        drop(guard.take_state());
        let sql = self.shared.release_sql(&name, guard.owner(), token);
        let what = format!("releasing lock `{name}`");
        match self.shared.run(&sql, &what).await? {
            (Some(row), _) => {
                let live = row
                    .try_get::<bool, _>(0)
                    .map_err(|e| StateError::new(ErrorKind::Backend, format!("{what}: {e}")))?;
                if live {
                    Ok(())
                } else {
                    Err(StateError::new(
                        ErrorKind::NotOwner,
                        format!(
                            "release of lock `{name}` refused: its lease had already run out \
                             (nobody else took it; the stale row was removed); the work it \
                             protected ran unprotected at the end"
                        ),
                    ))
                }
            }
            // An earlier attempt whose reply was lost may have deleted the row: either way
            // the lock is not ours now, and we cannot tell a late NotOwner from success.
            (None, true) => Ok(()),
            (None, false) => Err(StateError::not_owner(&name, "release")),
        }
    }

    pub(super) async fn is_locked(&self, name: &str) -> Result<bool> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE name = {name} AND expires_at > now())",
            table = self.shared.table,
            name = text_literal(name),
        );
        let what = format!("checking lock `{name}`");
        match self.shared.run(&sql, &what).await? {
            (Some(row), _) => row
                .try_get::<bool, _>(0)
                .map_err(|e| StateError::new(ErrorKind::Backend, format!("{what}: {e}"))),
            (None, _) => Err(StateError::new(
                ErrorKind::Backend,
                format!("{what}: the server returned no row"),
            )),
        }
    }
}

/// How one attempt failed.
enum Attempt {
    /// The connection broke (it is closed, not returned to the pool): retry on another.
    Broken(StateError),
    /// The server refused the statement (`true`: a lost `IF NOT EXISTS` race).
    Refused(StateError, bool),
    /// No connection, or no answer in time.
    Failed(StateError),
}

impl Attempt {
    fn into_error(self) -> StateError {
        match self {
            Attempt::Broken(e) | Attempt::Refused(e, _) | Attempt::Failed(e) => e,
        }
    }
}

impl Shared {
    fn release_sql(&self, name: &str, owner: &str, token: i64) -> String {
        format!(
            "DELETE FROM {table} WHERE name = {name} AND owner = {owner} AND token = {token} \
             RETURNING expires_at > now()",
            table = self.table,
            name = text_literal(name),
            owner = text_literal(owner),
        )
    }

    /// Runs an idempotent statement, retrying on another connection when one breaks.
    /// Returns its first row (if any) and whether an earlier attempt may have been applied.
    async fn run(&self, sql: &str, what: &str) -> Result<(Option<PgRow>, bool)> {
        let mut maybe_applied = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.run_once(sql, what).await {
                Ok(row) => return Ok((row, maybe_applied)),
                Err(Attempt::Broken(e)) if attempt < self.attempts => {
                    maybe_applied |= e.outcome_unknown();
                }
                Err(failure) => return Err(failure.into_error()),
            }
        }
    }

    async fn run_once(&self, sql: &str, what: &str) -> std::result::Result<Option<PgRow>, Attempt> {
        let attempt = async {
            // The slot is given back after the connection (on every path), so a task woken
            // by it finds the connection free.
            let _slot = self.pool.slot(what).await?;
            let mut conn = match self.pool.take_free() {
                Some(conn) => conn,
                None => self.pool.connect(what).await?,
            };
            match fetch_optional(&mut conn, sql).await {
                Ok(row) => {
                    self.pool.put_free(conn);
                    Ok(row)
                }
                // Dropped, which closes it.
                Err(e) if breaks_connection(&e) => Err(Attempt::Broken(convert(e, what, true))),
                Err(e) => {
                    // The server refused the statement and is ready for the next one.
                    self.pool.put_free(conn);
                    let race = is_creation_race(&e);
                    Err(Attempt::Refused(convert(e, what, true), race))
                }
            }
        };
        // Dropping the attempt (a timeout here, or the caller's future dropped) drops its
        // connection mid-statement, which closes it: its state is unknown.
        match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Attempt::Failed(client_timeout(what, self.op_timeout))),
        }
    }
}

impl Connections {
    /// Waits (up to `acquire_timeout`) until fewer than `pool_max` connections are in use.
    async fn slot(
        &self,
        what: &str,
    ) -> std::result::Result<tokio::sync::SemaphorePermit<'_>, Attempt> {
        match tokio::time::timeout(self.acquire_timeout, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed.
            Ok(Err(_)) | Err(_) => Err(Attempt::Failed(StateError::new(
                ErrorKind::Timeout,
                format!(
                    "{what} failed: no connection was free within acquire_timeout ({:?}); \
                     is pool_max too low for the number of concurrent lock operations?",
                    self.acquire_timeout
                ),
            ))),
        }
    }

    fn take_free(&self) -> Option<PgConnection> {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put_free(&self, conn: PgConnection) {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }

    /// Opens a connection, within `connect_timeout`.
    async fn connect(&self, what: &str) -> std::result::Result<PgConnection, Attempt> {
        let connect = PgConnection::connect_with(&self.options);
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(Attempt::Failed(convert(
                e,
                &format!("{what}: opening a connection to {}", self.endpoint),
                false,
            ))),
            Err(_) => Err(Attempt::Failed(StateError::new(
                ErrorKind::Timeout,
                format!(
                    "{what}: opening a connection to {} took longer than connect_timeout \
                     ({:?}); is the server up?",
                    self.endpoint, self.connect_timeout
                ),
            ))),
        }
    }
}

async fn fetch_optional(
    conn: &mut PgConnection,
    sql: &str,
) -> std::result::Result<Option<PgRow>, sqlx::Error> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_optional(conn)
        .await
}
