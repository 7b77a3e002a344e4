//! [`LockMode::Session`](super::LockMode::Session): a session advisory lock on one dedicated
//! connection per held lock.
//!
//! The invariant everything here keeps: a connection is in the idle list only when it holds
//! no advisory lock. A connection whose state is unknown (a failed or abandoned statement,
//! a false unlock) is dropped, and closing it makes the server release anything it held.
//!
//! Acquire, release and extend run as named prepared statements (sqlx's per-connection
//! statement cache): parsed and planned once per connection, then one Bind/Execute/Sync
//! round trip per call. That relies on no pooler being in the way, which `connect` checks.

use std::any::Any;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArguments, PgConnectOptions, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, Row};
use state_core::{
    ErrorKind, FencingToken, GuardState, LockGuard, Result, StateError, new_owner_token,
};
use state_postgres::errors::{breaks_connection, client_timeout};
use tokio::sync::{Mutex as AsyncMutex, Notify, OwnedSemaphorePermit, Semaphore};

use super::config::PostgresLockConfig;
use super::errors::convert;
use super::guard::{deadline_after, foreign_guard};
use super::key::{advisory_key, pg_locks_ids};
use super::pooler::{POOLER_REFUSAL, PROBE_SETTING};
use super::sql::{LockTable, is_creation_race, setup_sql};
use super::statements;
use crate::hot_path::Doing;

/// How many lock-free connections are kept for later acquires. Enough that an uncontended
/// acquire + release is two round trips; a burst of holders opens (and closes) more.
pub(super) const IDLE_MAX: usize = 4;

/// A statement of ours with its parameters, run as a named prepared statement.
type Statement = Query<'static, Postgres, PgArguments>;

/// One server session: the connection, the backend pid it had when opened, and its place
/// among the `pool_max` connections the lock may have open (given back when it closes).
struct Session {
    conn: PgConnection,
    pid: i32,
    _slot: OwnedSemaphorePermit,
}

/// What the lock and its guards share.
struct Shared {
    options: PgConnectOptions,
    probe: String,
    /// The acquire statement: it names the schema's token sequence, so it is built once
    /// (the text is the key of each connection's prepared-statement cache).
    acquire_sql: Arc<str>,
    endpoint: String,
    idle: StdMutex<Vec<Session>>,
    /// One permit per connection that may be open (`pool_max`): held locks and idle ones.
    slots: Arc<Semaphore>,
    /// Signalled when a connection is put back idle, for a checkout waiting on a slot.
    put_back: Notify,
    pool_max: u32,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    op_timeout: Duration,
}

/// The Session-mode implementation behind [`super::PostgresDistributedLock`].
pub(super) struct SessionLock {
    shared: Arc<Shared>,
}

/// A Session-mode guard's state: the connection that holds the lock. `None` once the
/// connection was found dead (the server released the lock with it).
struct SessionGuard {
    key: i64,
    conn: AsyncMutex<Option<Session>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SessionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionGuard")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl GuardState for SessionGuard {
    fn release_on_drop(self: Box<Self>, _name: &str, _owner: &str) {
        let SessionGuard { key, conn, shared } = *self;
        let Some(session) = conn.into_inner() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            // Unlocking keeps the connection for reuse; if the task never runs (a runtime
            // shutting down) the connection is dropped with it, which also frees the lock.
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = shared.unlock(session, key, "release on drop").await;
                });
            }
            // No runtime to talk to the server: closing the socket makes the server end
            // the session and release the lock.
            Err(_) => drop(session),
        }
    }
}

impl SessionLock {
    /// Connects once (checking the server, the credentials and that no pooler is in the
    /// way), creates the schema and the token sequence, and keeps that connection idle.
    pub(super) async fn open(config: &PostgresLockConfig) -> Result<SessionLock> {
        let pg = config.postgres_config();
        let options = pg
            .connect_options()
            .application_name(&config.application_name)
            // We read no floating-point values; PgBouncer refuses this parameter.
            .extra_float_digits(None);
        let probe = new_owner_token();
        let options = options.options([(PROBE_SETTING, probe.as_str())]);
        let acquire_sql = statements::session_acquire(config.schema());
        let (_, pool_max) = pg.pool_size();
        let shared = Arc::new(Shared {
            options,
            probe,
            acquire_sql: Arc::from(acquire_sql),
            endpoint: pg.redacted_url(),
            idle: StdMutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(
                usize::try_from(pool_max)
                    .unwrap_or(Semaphore::MAX_PERMITS)
                    .min(Semaphore::MAX_PERMITS),
            )),
            put_back: Notify::new(),
            pool_max,
            acquire_timeout: pg.acquire_timeout(),
            connect_timeout: pg.connect_timeout(),
            op_timeout: config.op_timeout(),
        });
        let mut session = shared.checkout().await?.0;
        let sql = setup_sql(config.schema(), LockTable::None);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let run = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut session.conn);
            match tokio::time::timeout(shared.op_timeout, run).await {
                Ok(Ok(_)) => break,
                Ok(Err(e)) if is_creation_race(&e) && attempt < 3 => continue,
                Ok(Err(e)) => {
                    return Err(convert(
                        e,
                        &format!("creating the lock schema `{}`", config.schema()),
                        true,
                    ));
                }
                Err(_) => {
                    return Err(client_timeout(
                        "creating the lock schema",
                        shared.op_timeout,
                    ));
                }
            }
        }
        shared.put_idle(session);
        Ok(SessionLock { shared })
    }

    pub(super) async fn try_acquire(
        &self,
        name: &str,
        ttl: Duration,
        owner: impl AsRef<str> + Into<String>,
    ) -> Result<Option<LockGuard>> {
        let key = advisory_key(name);
        let what = Doing::new("acquiring", name);
        // A connection that died while idle fails before it could take anything; the next
        // one is tried. Bounded: every idle connection plus one new.
        for attempt in 0..=IDLE_MAX {
            let (mut session, reused) = self.shared.checkout().await?;
            let statement = sqlx::query(AssertSqlSafe(Arc::clone(&self.shared.acquire_sql)))
                .bind(session.pid)
                .bind(key);
            let started = Instant::now();
            // `session` is owned by this future: if it is dropped here (a timeout around
            // acquire, a cancelled task), the connection closes and the server frees the
            // lock if the statement had taken it.
            let row = match self.shared.fetch(&mut session, statement, what).await {
                Ok(row) => row,
                Err(Failure::Broken(_)) if reused && attempt < IDLE_MAX => continue,
                Err(failure) => return Err(failure.into_error()),
            };
            let (token, pid) = match decode_acquire(&row) {
                Ok(values) => values,
                Err(e) => return Err(StateError::new(ErrorKind::Backend, format!("{what}: {e}"))),
            };
            if pid != session.pid {
                return Err(self.shared.moved(pid, session.pid));
            }
            let Some(token) = token else {
                self.shared.put_idle(session);
                return Ok(None);
            };
            let token = u64::try_from(token).map_err(|_| {
                StateError::new(
                    ErrorKind::Backend,
                    format!("{what}: the token sequence returned {token}; it must be positive"),
                )
            })?;
            let state = SessionGuard {
                key,
                conn: AsyncMutex::new(Some(session)),
                shared: Arc::clone(&self.shared),
            };
            return Ok(Some(LockGuard::new(
                name,
                owner,
                FencingToken(token),
                deadline_after(started, ttl),
                Some(Box::new(state)),
            )));
        }
        Err(StateError::new(
            ErrorKind::Connection,
            format!(
                "{what}: every connection to {} broke; is the server restarting?",
                self.shared.endpoint
            ),
        ))
    }

    /// Session locks have no server-side TTL: extend checks that the guard's connection
    /// still holds the lock and moves the local deadline.
    pub(super) async fn extend(&self, guard: &mut LockGuard, ttl: Duration) -> Result<()> {
        let name = guard.name().to_string();
        let Some(state) = guard.state() else {
            return Err(StateError::not_owner(&name, "extend"));
        };
        let Some(state) = (state as &dyn Any).downcast_ref::<SessionGuard>() else {
            return Err(foreign_guard(guard));
        };
        let (high, low) = pg_locks_ids(state.key);
        let mut slot = state.conn.lock().await;
        let Some(session) = slot.as_mut() else {
            return Err(StateError::not_owner(&name, "extend"));
        };
        let statement = sqlx::query(statements::SESSION_HELD)
            .bind(Oid(high))
            .bind(Oid(low));
        let started = Instant::now();
        let what = Doing::new("extending", &name);
        let row = match self.shared.fetch(session, statement, what).await {
            Ok(row) => row,
            Err(Failure::Broken(e)) => {
                // The session is gone, and the server released the lock with it.
                *slot = None;
                return Err(lost(&name, "extend", &e));
            }
            Err(Failure::TimedOut(e)) => {
                // Dropping the connection would free a lock we may still hold while our
                // deadline says otherwise; sqlx resynchronises the connection on next use.
                return Err(e);
            }
            Err(Failure::Other(e)) => return Err(e),
        };
        let (pid, held) = match (row.try_get::<i32, _>(0), row.try_get::<bool, _>(1)) {
            (Ok(pid), Ok(held)) => (pid, held),
            (Err(e), _) | (_, Err(e)) => {
                return Err(StateError::new(ErrorKind::Backend, format!("{what}: {e}")));
            }
        };
        if pid != session.pid {
            let error = self.shared.moved(pid, session.pid);
            *slot = None;
            return Err(error);
        }
        if !held {
            // Nothing else unlocks our session's lock: its state is not what we think, so
            // the connection is not kept.
            *slot = None;
            return Err(StateError::not_owner(&name, "extend"));
        }
        drop(slot);
        guard.set_deadline(deadline_after(started, ttl));
        Ok(())
    }

    pub(super) async fn release(&self, mut guard: LockGuard) -> Result<()> {
        match guard.state() {
            None => return Err(StateError::not_owner(guard.name(), "release")),
            Some(state) if !(state as &dyn Any).is::<SessionGuard>() => {
                return Err(foreign_guard(&guard));
            }
            Some(_) => {}
        }
        // Taken first, so that Drop does not release a second time.
        let Some(state) = guard.take_state() else {
            return Err(StateError::not_owner(guard.name(), "release"));
        };
        let Ok(state) = (state as Box<dyn Any + Send + Sync>).downcast::<SessionGuard>() else {
            return Err(foreign_guard(&guard));
        };
        let name = guard.name();
        let SessionGuard { key, conn, shared } = *state;
        let Some(session) = conn.into_inner() else {
            return Err(StateError::not_owner(name, "release"));
        };
        match shared.unlock(session, key, name).await {
            Unlock::Released => Ok(()),
            Unlock::NotHeld => Err(StateError::new(
                ErrorKind::NotOwner,
                format!(
                    "release of lock `{name}` refused: pg_advisory_unlock returned false, so \
                     the guard's connection did not hold it; the connection was closed"
                ),
            )),
            Unlock::Lost(e) => Err(lost(name, "release", &e)),
            Unlock::Failed(e) => Err(e),
        }
    }

    pub(super) async fn is_locked(&self, name: &str) -> Result<bool> {
        let (high, low) = pg_locks_ids(advisory_key(name));
        let what = Doing::new("checking", name);
        for attempt in 0..=IDLE_MAX {
            let (mut session, reused) = self.shared.checkout().await?;
            let statement = sqlx::query(statements::SESSION_IS_LOCKED)
                .bind(Oid(high))
                .bind(Oid(low));
            let row = match self.shared.fetch(&mut session, statement, what).await {
                Ok(row) => row,
                Err(Failure::Broken(_)) if reused && attempt < IDLE_MAX => continue,
                Err(failure) => return Err(failure.into_error()),
            };
            let held = row
                .try_get::<bool, _>(0)
                .map_err(|e| StateError::new(ErrorKind::Backend, format!("{what}: {e}")))?;
            self.shared.put_idle(session);
            return Ok(held);
        }
        Err(StateError::new(
            ErrorKind::Connection,
            format!("{what}: every connection to {} broke", self.shared.endpoint),
        ))
    }
}

/// How a statement failed.
enum Failure {
    /// The connection is unusable (and was dropped); the server ends the session.
    Broken(StateError),
    /// No answer in time; the connection is kept by whoever owns it.
    TimedOut(StateError),
    /// The server refused the statement; the connection is fine.
    Other(StateError),
}

impl Failure {
    fn into_error(self) -> StateError {
        match self {
            Failure::Broken(e) | Failure::TimedOut(e) | Failure::Other(e) => e,
        }
    }
}

/// The outcome of an unlock.
enum Unlock {
    Released,
    NotHeld,
    Lost(StateError),
    Failed(StateError),
}

impl Shared {
    /// Opens a connection in `slot` and checks that its startup options reached the backend
    /// (they do not through PgBouncer), remembering the backend pid.
    async fn connect(&self, slot: OwnedSemaphorePermit) -> Result<Session> {
        let what = format!("opening a lock connection to {}", self.endpoint);
        let mut conn = match tokio::time::timeout(
            self.connect_timeout,
            PgConnection::connect_with(&self.options),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(convert(e, &what, false)),
            Err(_) => {
                return Err(StateError::new(
                    ErrorKind::Timeout,
                    format!(
                        "{what} took longer than connect_timeout ({:?}); is the server up?",
                        self.connect_timeout
                    ),
                ));
            }
        };
        let sql = format!("SELECT pg_backend_pid(), current_setting('{PROBE_SETTING}', true)");
        let probe = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).fetch_one(&mut conn);
        let row = match tokio::time::timeout(self.op_timeout, probe).await {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => return Err(convert(e, &what, true)),
            Err(_) => return Err(client_timeout(&what, self.op_timeout)),
        };
        let pid = row
            .try_get::<i32, _>(0)
            .map_err(|e| StateError::new(ErrorKind::Backend, format!("{what}: {e}")))?;
        let seen = row
            .try_get::<Option<String>, _>(1)
            .map_err(|e| StateError::new(ErrorKind::Backend, format!("{what}: {e}")))?;
        if seen.as_deref() != Some(self.probe.as_str()) {
            return Err(StateError::config(format!(
                "{POOLER_REFUSAL}: {} did not pass this connection's startup options to the \
                 backend that answers it, so it is a pooler (PgBouncer) and the backend may \
                 change between statements; connect directly to PostgreSQL for Session mode",
                self.endpoint
            )));
        }
        Ok(Session {
            conn,
            pid,
            _slot: slot,
        })
    }

    /// [`connect`](Self::connect) in a future of its own on the heap. Opening a connection
    /// (TLS included) is a future of kilobytes; inline, it made every acquire's future that
    /// large, which each call then allocated and copied (the lock's profile showed it).
    /// Connecting is rare; the cost of a box there is nothing beside the round trips.
    async fn connect_boxed(&self, slot: OwnedSemaphorePermit) -> Result<Session> {
        Box::pin(self.connect(slot)).await
    }

    /// An idle connection (`true`: it was reused) or a new one. While `pool_max`
    /// connections are open, waits up to `acquire_timeout` for one to be put back idle or
    /// closed.
    async fn checkout(&self) -> Result<(Session, bool)> {
        // The common case, an idle connection, needs neither a deadline nor a registration
        // for wake-ups (taking and dropping one showed in the lock's profile).
        if let Some(session) = self.pop_idle() {
            return Ok((session, true));
        }
        let deadline = tokio::time::Instant::now() + self.acquire_timeout;
        loop {
            // Registered before looking, so a connection put back in between still wakes us.
            let put_back = self.put_back.notified();
            tokio::pin!(put_back);
            put_back.as_mut().enable();
            if let Some(session) = self.pop_idle() {
                return Ok((session, true));
            }
            if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
                return Ok((self.connect_boxed(slot).await?, false));
            }
            tokio::select! {
                slot = Arc::clone(&self.slots).acquire_owned() => {
                    // The semaphore is never closed; if it were, the next turn times out.
                    if let Ok(slot) = slot {
                        return Ok((self.connect_boxed(slot).await?, false));
                    }
                }
                () = &mut put_back => {}
                () = tokio::time::sleep_until(deadline) => return Err(self.no_slot()),
            }
        }
    }

    fn pop_idle(&self) -> Option<Session> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
    }

    /// The error when every connection stayed in use for `acquire_timeout`.
    fn no_slot(&self) -> StateError {
        StateError::new(
            ErrorKind::Timeout,
            format!(
                "no connection to {} came free within acquire_timeout ({:?}): Session mode \
                 keeps one connection per held lock, and this handle has pool_max ({}) open; \
                 release locks, raise pool_max, or use lock_mode=lease, which needs no \
                 connection per held lock",
                self.endpoint, self.acquire_timeout, self.pool_max
            ),
        )
    }

    /// Keeps a connection that holds no lock for later, or drops it if enough are idle.
    fn put_idle(&self, session: Session) {
        let surplus = {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() < IDLE_MAX {
                idle.push(session);
                None
            } else {
                Some(session)
            }
        };
        // Closing a surplus connection frees its slot, which wakes a waiter by itself.
        match surplus {
            None => self.put_back.notify_one(),
            Some(session) => drop(session),
        }
    }

    /// Runs one statement that returns one row, as a named prepared statement: prepared
    /// (one more round trip) the first time this connection runs its text, then one round
    /// trip. On a broken connection the caller gets `Broken` and must drop the session (it
    /// does, by not keeping it).
    async fn fetch(
        &self,
        session: &mut Session,
        statement: Statement,
        what: Doing<'_>,
    ) -> std::result::Result<PgRow, Failure> {
        let run = statement.fetch_one(&mut session.conn);
        match tokio::time::timeout(self.op_timeout, run).await {
            Ok(Ok(row)) => Ok(row),
            Ok(Err(e)) if breaks_connection(&e) => {
                Err(Failure::Broken(convert(e, &what.to_string(), true)))
            }
            Ok(Err(e)) => Err(Failure::Other(convert(e, &what.to_string(), true))),
            Err(_) => Err(Failure::TimedOut(client_timeout(
                &what.to_string(),
                self.op_timeout,
            ))),
        }
    }

    /// Unlocks `key` on the session that holds it. The connection is kept only after a
    /// true unlock; anything else closes it (the server then frees whatever it held).
    async fn unlock(&self, mut session: Session, key: i64, name: &str) -> Unlock {
        let statement = sqlx::query(statements::SESSION_RELEASE)
            .bind(session.pid)
            .bind(key);
        let what = Doing::new("releasing", name);
        match self.fetch(&mut session, statement, what).await {
            Ok(row) => match row.try_get::<Option<bool>, _>(0) {
                Ok(Some(true)) => {
                    self.put_idle(session);
                    Unlock::Released
                }
                Ok(Some(false)) => {
                    // Closed politely (the server logs no broken connection), bounded.
                    let _ = tokio::time::timeout(self.connect_timeout, session.conn.close()).await;
                    Unlock::NotHeld
                }
                Ok(None) => Unlock::Failed(StateError::config(format!(
                    "{what}: the connection now reaches another backend; {POOLER_REFUSAL}"
                ))),
                Err(e) => Unlock::Failed(StateError::new(
                    ErrorKind::Backend,
                    format!("{what}: {e}; the connection was dropped, which frees the lock"),
                )),
            },
            Err(Failure::Broken(e)) => Unlock::Lost(e),
            Err(Failure::TimedOut(e)) | Err(Failure::Other(e)) => Unlock::Failed(StateError::new(
                e.kind(),
                format!(
                    "{}; the connection was dropped, so the server releases the lock when it \
                     notices",
                    e.message()
                ),
            )),
        }
    }

    /// The error for a statement that ran on another backend than the connection opened
    /// on: something multiplexes server connections.
    fn moved(&self, now: i32, opened: i32) -> StateError {
        StateError::config(format!(
            "{POOLER_REFUSAL}: a statement on a lock connection to {} ran on backend {now}, \
             but the connection was opened on backend {opened}",
            self.endpoint
        ))
    }
}

fn decode_acquire(row: &PgRow) -> std::result::Result<(Option<i64>, i32), sqlx::Error> {
    Ok((row.try_get::<Option<i64>, _>(0)?, row.try_get::<i32, _>(1)?))
}

/// `NotOwner` because the guard's connection died, quoting why.
fn lost(name: &str, operation: &str, cause: &StateError) -> StateError {
    StateError::new(
        ErrorKind::NotOwner,
        format!(
            "{operation} of lock `{name}` refused: the connection holding it was lost ({}), \
             and the server released the lock with it; stop the work it protected",
            cause.message()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::config::{LockMode, PostgresLockConfig};
    use crate::postgres::test_server::test_url;

    /// RELIABILITY 8: an unlock that returns false is an error, and that connection is not
    /// reused. A guard whose connection never took the lock is the only way to get there
    /// without a bug elsewhere, so it is built here by hand.
    #[tokio::test]
    async fn a_false_unlock_is_not_owner_and_the_connection_is_closed() {
        // A schema of its own, dropped at the end: the test database is shared.
        let schema = format!("t_unit_{}", new_owner_token());
        let config = PostgresLockConfig::new(&test_url().await)
            .with_ssl_mode("disable")
            .with_schema(&schema)
            .with_mode(LockMode::Session);
        let lock = SessionLock::open(&config)
            .await
            .expect("open the session lock");
        let idle_before = lock.shared.idle.lock().expect("idle list").len();
        let (session, _) = lock.shared.checkout().await.expect("a connection");
        let name = format!("never-locked-{}", new_owner_token());
        let state = SessionGuard {
            key: advisory_key(&name),
            conn: AsyncMutex::new(Some(session)),
            shared: Arc::clone(&lock.shared),
        };
        let guard = LockGuard::new(
            name.as_str(),
            "owner",
            FencingToken(1),
            Instant::now() + Duration::from_secs(5),
            Some(Box::new(state)),
        );
        let e = lock.release(guard).await.expect_err("a false unlock fails");
        assert_eq!(e.kind(), ErrorKind::NotOwner, "{e}");
        assert!(e.message().contains("returned false"), "{e}");
        let idle_after = lock.shared.idle.lock().expect("idle list").len();
        let (mut session, _) = lock.shared.checkout().await.expect("a connection");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&mut session.conn)
        .await
        .expect("drop the test schema");
        assert_eq!(
            idle_after,
            idle_before.saturating_sub(1),
            "the connection of a false unlock is not put back"
        );
    }
}
