//! [`LockMode::Lease`](super::LockMode::Lease): a row per held lock, with an expiry set by
//! the database clock. Every operation is one self-contained statement, so a transaction
//! pooler may hand each one to a different server connection: a named prepared statement
//! on a connection that reaches PostgreSQL directly, the simple query protocol with the
//! values inlined as literals through a pooler.
//!
//! The table is `UNLOGGED` unless the config asks for durable leases: its commits then
//! write no WAL for the row and do not wait for a flush, while the token sequence stays
//! crash-safe (the reasoning is on [`super::PostgresDistributedLock`]).

use std::any::Any;
use std::borrow::Cow;
use std::fmt::Display;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use state_core::{
    ErrorKind, FencingToken, GuardState, LockGuard, Result, StateError, new_owner_token,
};
use state_postgres::errors::{breaks_connection, client_timeout};
use tokio::sync::Semaphore;

use super::config::PostgresLockConfig;
use super::errors::convert;
use super::guard::{deadline_after, foreign_guard};
use super::key::{advisory_key, pg_locks_ids};
use super::pooler::PROBE_SETTING;
use super::sql::{LockTable, is_creation_race, setup_sql, text_literal};
use super::statements;
use crate::hot_path::Doing;

/// What the lock and its guards share.
struct Shared {
    pool: Connections,
    /// The texts of the four statements (they name the schema's table and sequence), with
    /// `$n` placeholders; also the keys of each connection's prepared-statement cache.
    acquire_sql: Arc<str>,
    extend_sql: Arc<str>,
    release_sql: Arc<str>,
    is_locked_sql: Arc<str>,
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
    /// The connect options, with the probe in the startup `options`.
    options: PgConnectOptions,
    probe: String,
    endpoint: String,
    free: StdMutex<Vec<LeaseConn>>,
    /// One permit per connection that may be open (`pool_max`).
    slots: Semaphore,
    acquire_timeout: Duration,
    connect_timeout: Duration,
}

/// A pooled connection, and whether it reaches PostgreSQL directly: the probe in its
/// startup options came back, so the backend is ours alone and prepared statements stay
/// where we left them. Through a pooler it is `false`.
struct LeaseConn {
    conn: PgConnection,
    direct: bool,
}

/// A statement with `$n` placeholders and its values (borrowed from the caller, or owned
/// by a release sent after the guard is gone).
struct Statement<'a> {
    sql: Arc<str>,
    values: Vec<Value<'a>>,
}

/// A value of a [`Statement`]: casts in the SQL give the types both ways.
enum Value<'a> {
    Text(Cow<'a, str>),
    Int(i64),
}

impl<'a> Statement<'a> {
    fn new(sql: &Arc<str>, values: Vec<Value<'a>>) -> Statement<'a> {
        Statement {
            sql: Arc::clone(sql),
            values,
        }
    }

    /// The statement with its values as literals (text hex-encoded), for the simple query
    /// protocol. Our statements hold no `$` but their placeholders.
    fn inlined(&self) -> String {
        let mut out = String::with_capacity(self.sql.len() + 64);
        let mut rest = &*self.sql;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let digits = after.bytes().take_while(u8::is_ascii_digit).count();
            let value = after[..digits]
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| self.values.get(i));
            match value {
                Some(Value::Text(text)) => out.push_str(&text_literal(text)),
                Some(Value::Int(n)) => out.push_str(&format!("({n})")),
                None => out.push_str(&rest[at..at + 1 + digits]),
            }
            rest = &after[digits..];
        }
        out.push_str(rest);
        out
    }

    /// Runs it on `conn`: if `prepare`, as a named prepared statement (parsed and planned
    /// once per connection) on a direct connection; else, or through a pooler, inlined.
    /// Its first row, if any.
    async fn fetch_optional(
        &self,
        conn: &mut LeaseConn,
        prepare: bool,
    ) -> std::result::Result<Option<PgRow>, sqlx::Error> {
        if !(prepare && conn.direct) {
            return sqlx::raw_sql(AssertSqlSafe(self.inlined()))
                .fetch_optional(&mut conn.conn)
                .await;
        }
        let mut query = sqlx::query(AssertSqlSafe(Arc::clone(&self.sql)));
        for value in &self.values {
            query = match value {
                Value::Text(text) => query.bind(&**text),
                Value::Int(n) => query.bind(*n),
            };
        }
        query.fetch_optional(&mut conn.conn).await
    }
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
            let statement = self.shared.release_statement(
                Cow::Owned(name.to_owned()),
                Cow::Owned(owner.to_owned()),
                self.token,
            );
            let shared = self.shared;
            handle.spawn(async move {
                let _ = shared
                    .run(&statement, &"releasing a dropped lock guard")
                    .await;
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
        let probe = new_owner_token();
        let options = pg
            .connect_options()
            .application_name(&config.application_name)
            // We read no floating-point values; PgBouncer refuses this parameter.
            .extra_float_digits(None)
            .options([(PROBE_SETTING, probe.as_str())]);
        let (_, max) = pg.pool_size();
        // No check before a connection is used: a dead one fails its statement instead, is
        // closed, and the (idempotent) statement is retried on another.
        let pool = Connections {
            options,
            probe,
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
        let schema = config.schema();
        let shared = Arc::new(Shared {
            pool,
            acquire_sql: Arc::from(statements::lease_acquire(schema)),
            extend_sql: Arc::from(statements::lease_extend(schema)),
            release_sql: Arc::from(statements::lease_release(schema)),
            is_locked_sql: Arc::from(statements::lease_is_locked(schema)),
            op_timeout: config.op_timeout(),
            attempts: max.saturating_add(1),
        });
        let lock_table = LockTable::Lease {
            durable: config.durable_leases(),
        };
        // Several statements in one simple query: never prepared.
        let setup = Statement::new(
            &Arc::from(setup_sql(config.schema(), lock_table)),
            Vec::new(),
        );
        let what = format!("creating the lock table in schema `{}`", config.schema());
        let mut attempt = 0;
        loop {
            attempt += 1;
            match shared.run_once(&setup, &what, false).await {
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
        owner: impl AsRef<str> + Into<String>,
    ) -> Result<Option<LockGuard>> {
        let (high, low) = pg_locks_ids(advisory_key(name));
        let statement = Statement::new(
            &self.shared.acquire_sql,
            vec![
                Value::Text(Cow::Borrowed(name)),
                Value::Text(Cow::Borrowed(owner.as_ref())),
                Value::Int(i64::try_from(millis).unwrap_or(i64::MAX)),
                // The halves as the signed int4s PostgreSQL shows in pg_locks.
                Value::Int(i64::from(i32::from_ne_bytes(high.to_ne_bytes()))),
                Value::Int(i64::from(i32::from_ne_bytes(low.to_ne_bytes()))),
            ],
        );
        let started = Instant::now();
        let what = Doing::new("acquiring", name);
        // Idempotent for one owner, so a lost reply is retried with the same statement.
        let (row, _) = self.shared.run(&statement, &what).await?;
        // It borrows the owner, which moves into the guard below.
        drop(statement);
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
        let statement = Statement::new(
            &self.shared.extend_sql,
            vec![
                Value::Text(Cow::Borrowed(guard.name())),
                Value::Text(Cow::Borrowed(guard.owner())),
                Value::Int(state.token),
                Value::Int(i64::try_from(millis).unwrap_or(i64::MAX)),
            ],
        );
        let started = Instant::now();
        let what = Doing::new("extending", guard.name());
        let outcome = self.shared.run(&statement, &what).await?;
        // It borrows the guard, whose deadline moves below.
        drop(statement);
        match outcome {
            (Some(_), _) => {
                guard.set_deadline(deadline_after(started, ttl));
                Ok(())
            }
            // Expired or taken over: never re-created.
            (None, _) => Err(StateError::not_owner(guard.name(), "extend")),
        }
    }

    pub(super) async fn release(&self, mut guard: LockGuard) -> Result<()> {
        let token = match guard.state() {
            None => return Err(StateError::not_owner(guard.name(), "release")),
            Some(state) => match (state as &dyn Any).downcast_ref::<LeaseGuard>() {
                Some(state) => state.token,
                None => return Err(foreign_guard(&guard)),
            },
        };
        // Taken first, so that Drop does not release a second time.
        drop(guard.take_state());
        let name = guard.name();
        let statement =
            self.shared
                .release_statement(Cow::Borrowed(name), Cow::Borrowed(guard.owner()), token);
        let what = Doing::new("releasing", name);
        match self.shared.run(&statement, &what).await? {
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
            // An earlier attempt whose reply was lost may have deleted the row, or the lease
            // ran out first: which one is unknown, so neither success nor NotOwner is true.
            (None, true) => Err(StateError::new(
                ErrorKind::Connection,
                format!(
                    "{what}: a reply was lost and the lock is no longer held; this release \
                     or the end of its lease freed it, which one is unknown"
                ),
            )
            .with_outcome_unknown()),
            (None, false) => Err(StateError::not_owner(name, "release")),
        }
    }

    pub(super) async fn is_locked(&self, name: &str) -> Result<bool> {
        let statement = Statement::new(
            &self.shared.is_locked_sql,
            vec![Value::Text(Cow::Borrowed(name))],
        );
        let what = Doing::new("checking", name);
        match self.shared.run(&statement, &what).await? {
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
    fn release_statement<'a>(
        &self,
        name: Cow<'a, str>,
        owner: Cow<'a, str>,
        token: i64,
    ) -> Statement<'a> {
        Statement::new(
            &self.release_sql,
            vec![Value::Text(name), Value::Text(owner), Value::Int(token)],
        )
    }

    /// Runs an idempotent statement, retrying on another connection when one breaks.
    /// Returns its first row (if any) and whether an earlier attempt may have been applied.
    async fn run(
        &self,
        statement: &Statement<'_>,
        what: &(dyn Display + Sync),
    ) -> Result<(Option<PgRow>, bool)> {
        let mut maybe_applied = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.run_once(statement, what, true).await {
                Ok(row) => return Ok((row, maybe_applied)),
                Err(Attempt::Broken(e)) if attempt < self.attempts => {
                    maybe_applied |= e.outcome_unknown();
                }
                Err(failure) => return Err(failure.into_error()),
            }
        }
    }

    /// One attempt of `statement` on one connection; `prepare`: as a prepared statement
    /// where the connection allows it.
    async fn run_once(
        &self,
        statement: &Statement<'_>,
        what: &(dyn Display + Sync),
        prepare: bool,
    ) -> std::result::Result<Option<PgRow>, Attempt> {
        let attempt = async {
            // The slot is given back after the connection (on every path), so a task woken
            // by it finds the connection free.
            let _slot = self.pool.slot(what).await?;
            let mut conn = match self.pool.take_free() {
                Some(conn) => conn,
                // Boxed: opening a connection (TLS included) is a future of kilobytes,
                // which inline would make every statement's future that large, allocated
                // and copied on each call (it showed in the lock's profile).
                None => Box::pin(self.pool.connect(what)).await?,
            };
            match statement.fetch_optional(&mut conn, prepare).await {
                Ok(row) => {
                    self.pool.put_free(conn);
                    Ok(row)
                }
                // Dropped, which closes it.
                Err(e) if breaks_connection(&e) => {
                    Err(Attempt::Broken(convert(e, &what.to_string(), true)))
                }
                Err(e) => {
                    // The server refused the statement and is ready for the next one.
                    self.pool.put_free(conn);
                    let race = is_creation_race(&e);
                    Err(Attempt::Refused(convert(e, &what.to_string(), true), race))
                }
            }
        };
        // Dropping the attempt (a timeout here, or the caller's future dropped) drops its
        // connection mid-statement, which closes it: its state is unknown.
        match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Attempt::Failed(client_timeout(
                &what.to_string(),
                self.op_timeout,
            ))),
        }
    }
}

impl Connections {
    /// Waits (up to `acquire_timeout`) until fewer than `pool_max` connections are in use.
    async fn slot(
        &self,
        what: &(dyn Display + Sync),
    ) -> std::result::Result<tokio::sync::SemaphorePermit<'_>, Attempt> {
        // A free slot needs no timer: arming and cancelling one per statement showed in
        // the lock's profile. (A free permit is never one a queued waiter is owed: the
        // semaphore hands released permits to its waiters first.)
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
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

    fn take_free(&self) -> Option<LeaseConn> {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    fn put_free(&self, conn: LeaseConn) {
        self.free
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(conn);
    }

    /// Opens a connection within `connect_timeout`, and reads the probe back to learn
    /// whether it reaches PostgreSQL directly.
    async fn connect(
        &self,
        what: &(dyn Display + Sync),
    ) -> std::result::Result<LeaseConn, Attempt> {
        let opening = format!("{what}: opening a connection to {}", self.endpoint);
        let connect = PgConnection::connect_with(&self.options);
        let mut conn = match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(Attempt::Failed(convert(e, &opening, false))),
            Err(_) => {
                return Err(Attempt::Failed(StateError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{opening} took longer than connect_timeout ({:?}); is the server up?",
                        self.connect_timeout
                    ),
                )));
            }
        };
        let sql = format!("SELECT current_setting('{PROBE_SETTING}', true)");
        // The caller's timeout bounds this; a failure closes the new connection.
        let row = sqlx::raw_sql(AssertSqlSafe(sql))
            .fetch_one(&mut conn)
            .await
            .map_err(|e| Attempt::Broken(convert(e, &opening, true)))?;
        let seen = row.try_get::<Option<String>, _>(0).map_err(|e| {
            Attempt::Failed(StateError::new(
                ErrorKind::Backend,
                format!("{opening}: {e}"),
            ))
        })?;
        Ok(LeaseConn {
            conn,
            direct: seen.as_deref() == Some(self.probe.as_str()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::config::LockMode;
    use crate::postgres::test_server::test_url;
    use testing::services::{PgBouncer, PgBouncerOptions};

    #[test]
    fn placeholders_become_literals_and_others_stay() {
        let statement = Statement::new(
            &Arc::from("SELECT $1::text, $2::int8, $12, $3, $"),
            vec![Value::Text(Cow::Borrowed("a'b")), Value::Int(-5)],
        );
        assert_eq!(
            statement.inlined(),
            "SELECT convert_from(decode('612762', 'hex'), 'UTF8')::text, (-5)::int8, $12, $3, $"
        );
    }

    /// Opens a Lease lock on `url` in a fresh schema, runs a cycle, and returns whether its
    /// pooled connection is direct and how many statements that backend has prepared.
    async fn cycle_on(url: &str, schema: &str) -> (bool, i64) {
        let config = PostgresLockConfig::new(url)
            .with_ssl_mode("disable")
            .with_schema(schema)
            .with_mode(LockMode::Lease);
        let lock = LeaseLock::open(&config).await.expect("open the lease lock");
        let guard = lock
            .try_acquire("probe", Duration::from_secs(30), 30_000, "owner")
            .await
            .expect("try_acquire")
            .expect("a free lock");
        lock.release(guard).await.expect("release");
        let mut conn = lock.shared.pool.take_free().expect("the pooled connection");
        // By the simple query protocol, so that this count prepares nothing itself.
        let row = sqlx::raw_sql("SELECT count(*) FROM pg_prepared_statements")
            .fetch_one(&mut conn.conn)
            .await
            .expect("count the prepared statements");
        let prepared: i64 = row.try_get(0).expect("a count");
        (conn.direct, prepared)
    }

    /// Directly connected, the lease statements are prepared on the backend; through a
    /// pooler (which drops the probe in the startup options), nothing is prepared.
    #[tokio::test]
    async fn statements_are_prepared_only_on_direct_connections() {
        let url = test_url().await;
        let schema = format!("t_unit_lease_{}", new_owner_token());
        let (direct, prepared) = cycle_on(&url, &schema).await;
        assert!(direct, "a direct connection reads its probe back");
        assert!(
            prepared >= 2,
            "acquire and release are prepared: {prepared}"
        );

        let bouncer = PgBouncer::start_with(PgBouncerOptions::new(url.clone()))
            .await
            .expect("pgbouncer starts");
        let db = url.rsplit('/').next().unwrap_or("test").to_string();
        let (direct, prepared) = cycle_on(&bouncer.url(&db), &schema).await;
        assert!(!direct, "through PgBouncer the probe does not come back");
        assert_eq!(prepared, 0, "nothing is prepared through the pooler");

        let mut admin = PgConnection::connect(&url).await.expect("admin connection");
        sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
            .execute(&mut admin)
            .await
            .expect("drop the test schema");
    }
}
