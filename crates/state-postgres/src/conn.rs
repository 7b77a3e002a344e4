//! The connection set: a bounded number of long-lived connections, each owned by one
//! operation at a time.
//!
//! Why not `sqlx::PgPool`: on a 2-core machine its acquire/release path (idle queue, waker
//! hand-offs, a background reaper) capped point operations near 21k/s, while 16 dedicated
//! connections reached 55-60k/s. Here a checkout is one semaphore permit plus a `try_lock`
//! scan over the slots, both single atomic steps when a connection is free; a permit always
//! finds an unlocked slot because a slot is unlocked before its permit is returned.
//!
//! Health: a connection that failed at the transport level, or that was dropped mid-query
//! (a timeout or a cancelled future), is discarded and reopened on the next checkout. After
//! any such failure the set's epoch moves on, and every other connection is pinged once
//! before its next use, so a server restart costs one failed operation, not one per slot.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgQueryResult, PgRow};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};
use sqlx::{Connection, PgConnection, Postgres};
use state_core::{ErrorKind, Result, StateError};
use tokio::sync::{Mutex, MutexGuard, Semaphore, SemaphorePermit};

use crate::config::PostgresConfig;
use crate::config::deploy::{PROBE_SETTING, Target};
use crate::error::{breaks_connection, convert};
use crate::stats::Counters;

/// A query with its arguments bound.
pub(crate) type PgQuery = sqlx::query::Query<'static, Postgres, PgArguments>;

/// A connection idle this long is pinged before use: firewalls and poolers drop idle ones.
const IDLE_PING_AFTER: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Slot {
    conn: Option<PgConnection>,
    epoch: u64,
    last_used: Option<Instant>,
}

/// What a probe connection learnt about the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServerInfo {
    /// `pg_is_in_recovery()`: a standby, which serves reads only.
    pub in_recovery: bool,
}

/// The bounded set of connections.
pub(crate) struct ConnSet {
    /// The hosts, tried in order (one unless the URL named several).
    targets: Vec<Target>,
    endpoint: String,
    /// A transaction pooler sits in front: every statement runs in an explicit
    /// transaction, unnamed, with the settings as `SET LOCAL`.
    pooler: AtomicBool,
    /// `SET LOCAL …` of the session settings, sent with each `BEGIN` behind a pooler.
    set_local: String,
    /// Connect only to a primary (`target_session_attrs=read-write`).
    require_primary: bool,
    /// The set was opened on a standby: writes are refused with a `ReadOnly` error.
    standby: AtomicBool,
    slots: Box<[Mutex<Slot>]>,
    permits: Semaphore,
    epoch: AtomicU64,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for ConnSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The options hold the password: only the endpoint is shown.
        f.debug_struct("ConnSet")
            .field("endpoint", &self.endpoint)
            .field("max", &self.slots.len())
            .finish()
    }
}

impl ConnSet {
    /// A set over `targets` (the config's hosts, or one replica) of at most `max`
    /// connections; `require_primary` skips hosts in recovery.
    pub fn new(
        config: &PostgresConfig,
        targets: Vec<Target>,
        max: usize,
        require_primary: bool,
    ) -> Self {
        let endpoint = targets
            .iter()
            .map(|t| t.endpoint.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let acquire_timeout = config.acquire_timeout();
        let connect_timeout = config.connect_timeout();
        ConnSet {
            targets,
            endpoint,
            pooler: AtomicBool::new(config.pgbouncer() == Some(true)),
            set_local: config.set_local(),
            require_primary,
            standby: AtomicBool::new(false),
            slots: (0..max).map(|_| Mutex::new(Slot::default())).collect(),
            permits: Semaphore::new(max),
            epoch: AtomicU64::new(0),
            acquire_timeout,
            connect_timeout,
            counters: Counters::default(),
        }
    }

    /// Whether a transaction pooler sits in front (declared or detected).
    pub fn pooler(&self) -> bool {
        self.pooler.load(Ordering::Relaxed)
    }

    /// Whether the set was opened on a standby and refuses writes.
    pub fn standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    /// Declares a pooler in front (replica sets follow what the primary's probe found).
    pub fn set_pooler(&self, pooler: bool) {
        self.pooler.store(pooler, Ordering::Relaxed);
    }

    /// Marks the set as opened on a standby (or a replica).
    pub fn set_standby(&self, standby: bool) {
        self.standby.store(standby, Ordering::Relaxed);
    }

    /// The hosts, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Opens a connection outside the set (migrations, tests): to the first host that
    /// answers, or that is a primary when one is required.
    pub async fn connect(&self) -> Result<PgConnection> {
        let pooled = self.pooler();
        self.connect_to(|t| {
            if pooled {
                t.pooled.clone()
            } else {
                t.direct.clone()
            }
        })
        .await
    }

    /// Opens the first connection and learns what is at the other end: a pooler (unless
    /// one was declared, or `detect_pooler` is false) and whether the server is a standby.
    ///
    /// A pooler is told from PostgreSQL by a probe setting in the startup `options`:
    /// PostgreSQL applies it to the session, PgBouncer drops it (`ignore_startup_parameters
    /// = options`) or refuses the parameter. Either way the set switches to pooled mode.
    pub async fn probe(&self, detect_pooler: bool) -> Result<(PgConnection, ServerInfo)> {
        let mut conn = if detect_pooler && !self.pooler() {
            let probing = self
                .connect_to(|t| t.direct.clone().options([(PROBE_SETTING, "on")]))
                .await;
            match probing {
                Ok(mut conn) => {
                    let arrived = simple_text(
                        &mut conn,
                        "SELECT coalesce(current_setting('state_postgres.probe', true), '')",
                    )
                    .await
                    .map_err(|e| convert(e, "probing the server", true))?;
                    if arrived == "on" {
                        conn
                    } else {
                        let _ = conn.close().await;
                        self.pooler.store(true, Ordering::Relaxed);
                        self.connect().await?
                    }
                }
                Err(e) if e.message().contains("unsupported startup parameter") => {
                    self.pooler.store(true, Ordering::Relaxed);
                    self.connect().await?
                }
                Err(e) => return Err(e),
            }
        } else {
            self.connect().await?
        };
        let in_recovery = simple_text(&mut conn, "SELECT pg_is_in_recovery()::text")
            .await
            .map_err(|e| convert(e, "asking the server for its role", true))?;
        Ok((
            conn,
            ServerInfo {
                in_recovery: in_recovery == "true",
            },
        ))
    }

    /// Tries the hosts in order with the options `pick` gives for each.
    async fn connect_to(&self, pick: impl Fn(&Target) -> PgConnectOptions) -> Result<PgConnection> {
        let mut failures: Vec<StateError> = Vec::new();
        let mut standbys = Vec::new();
        for target in &self.targets {
            let mut conn = match self.connect_one(&target.endpoint, &pick(target)).await {
                Ok(conn) => conn,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            if !self.require_primary {
                return Ok(conn);
            }
            match simple_text(&mut conn, "SELECT pg_is_in_recovery()::text").await {
                Ok(r) if r == "false" => return Ok(conn),
                Ok(_) => {
                    let _ = conn.close().await;
                    standbys.push(target.endpoint.clone());
                }
                Err(e) => failures.push(convert(e, "asking the server for its role", false)),
            }
        }
        if self.targets.len() == 1
            && standbys.is_empty()
            && let Some(err) = failures.pop()
        {
            return Err(err);
        }
        // A wrong password or certificate is not cured by waiting: report it as it is.
        if let Some(i) = failures.iter().position(|e| !e.is_retryable()) {
            return Err(failures.swap_remove(i));
        }
        let mut reasons: Vec<String> = standbys
            .iter()
            .map(|e| format!("{e} is a standby (in recovery)"))
            .collect();
        reasons.extend(failures.iter().map(|e| e.message().to_string()));
        Err(StateError::new(
            ErrorKind::Unavailable,
            format!(
                "no host of {} is a primary that accepts connections ({}); waiting for a \
                 standby to be promoted, or check the host list",
                self.endpoint,
                reasons.join("; ")
            ),
        ))
    }

    async fn connect_one(
        &self,
        endpoint: &str,
        options: &PgConnectOptions,
    ) -> Result<PgConnection> {
        let what = format!("opening a connection to {endpoint}");
        match tokio::time::timeout(self.connect_timeout, PgConnection::connect_with(options)).await
        {
            Ok(Ok(conn)) => {
                self.counters
                    .shard()
                    .connections_opened
                    .fetch_add(1, Ordering::Relaxed);
                Ok(conn)
            }
            Ok(Err(err)) => Err(convert(err, &what, false)),
            Err(_) => Err(StateError::new(
                ErrorKind::Timeout,
                format!(
                    "{what} took longer than connect_timeout ({:?}); is the server up?",
                    self.connect_timeout
                ),
            )),
        }
    }

    /// Keeps `conn` (the probe connection, which opening the backend used) as the first
    /// connection instead of opening another: a connection costs a TLS handshake, which
    /// is most of a short-lived process's start-up.
    pub async fn adopt(&self, conn: PgConnection) {
        if let Some(slot) = self.slots.first() {
            let mut slot = slot.lock().await;
            if slot.conn.is_none() {
                slot.conn = Some(conn);
                slot.epoch = self.epoch.load(Ordering::Relaxed);
                slot.last_used = Some(Instant::now());
            }
        }
    }

    /// Opens the first `min` connections (those not open yet), so that start-up fails
    /// fast on a bad URL.
    pub async fn warm_up(&self, min: usize) -> Result<()> {
        for slot in self.slots.iter().take(min) {
            if slot.lock().await.conn.is_some() {
                continue;
            }
            let conn = self.connect().await?;
            let mut slot = slot.lock().await;
            slot.conn = Some(conn);
            slot.epoch = self.epoch.load(Ordering::Relaxed);
            slot.last_used = Some(Instant::now());
        }
        Ok(())
    }

    /// Takes a connection for one operation, opening or checking it as needed.
    pub async fn checkout(&self) -> Result<Checkout<'_>> {
        let permit = match self.permits.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                match tokio::time::timeout(self.acquire_timeout, self.permits.acquire()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => {
                        return Err(StateError::new(
                            ErrorKind::Unavailable,
                            "the connection set is closed",
                        ));
                    }
                    Err(_) => {
                        return Err(StateError::new(
                            ErrorKind::Timeout,
                            format!(
                                "no connection to {} was free within acquire_timeout ({:?}); raise \
                             pool_max or lower the concurrency",
                                self.endpoint, self.acquire_timeout
                            ),
                        ));
                    }
                }
            }
        };
        // Low slots first, so that the number of open connections follows peak concurrency.
        // A permit always has a free slot, but `open_connections` and `close_idle` may hold
        // that slot's lock for an instant (they never await while holding it): look again.
        let mut looks = 0;
        let slot = loop {
            if let Some(slot) = self.slots.iter().find_map(|slot| slot.try_lock().ok()) {
                break slot;
            }
            looks += 1;
            if looks > 1000 {
                return Err(StateError::new(
                    ErrorKind::Backend,
                    "internal error: a connection permit found no free slot",
                ));
            }
            tokio::task::yield_now().await;
        };
        let mut checkout = Checkout {
            slot,
            _permit: permit,
            set: self,
            dirty: false,
            in_tx: false,
            discard: false,
        };
        checkout.ensure_open().await?;
        Ok(checkout)
    }

    fn mark_suspect(&self) {
        self.epoch.fetch_add(1, Ordering::Relaxed);
        self.counters
            .shard()
            .broken_connections
            .fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections are open now (those in use are counted as open).
    pub fn open_connections(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.try_lock().map(|s| s.conn.is_some()).unwrap_or(true))
            .count()
    }

    /// Closes every idle connection politely (a Terminate message, so the server logs no
    /// broken connection); ones in use close when returned and dropped later. A later
    /// operation reopens what it needs.
    pub async fn close_idle(&self) {
        for slot in self.slots.iter() {
            let conn = match slot.try_lock() {
                Ok(mut slot) => slot.conn.take(),
                Err(_) => None,
            };
            if let Some(conn) = conn {
                let _ = tokio::time::timeout(self.connect_timeout, conn.close()).await;
            }
        }
    }

    /// How many connections operations hold now.
    pub fn in_use(&self) -> usize {
        self.slots
            .len()
            .saturating_sub(self.permits.available_permits())
    }

    pub fn max_connections(&self) -> usize {
        self.slots.len()
    }
}

/// One connection, owned until dropped. Dropped while a request is in flight (`dirty`), it
/// discards the connection, whose protocol state is then unknown.
// Field order matters: the slot unlocks before the permit is returned.
pub(crate) struct Checkout<'a> {
    slot: MutexGuard<'a, Slot>,
    _permit: SemaphorePermit<'a>,
    set: &'a ConnSet,
    dirty: bool,
    in_tx: bool,
    /// Close the connection on drop even though its protocol state is clean.
    discard: bool,
}

impl Drop for Checkout<'_> {
    fn drop(&mut self) {
        if self.dirty || self.discard {
            self.slot.conn = None;
            self.set.mark_suspect();
        } else if self.in_tx {
            // An abandoned transaction (a dropped export stream): closing the connection
            // is the cheapest rollback; the server itself is fine.
            self.slot.conn = None;
        } else {
            self.slot.last_used = Some(Instant::now());
        }
    }
}

impl Checkout<'_> {
    async fn ensure_open(&mut self) -> Result<()> {
        let epoch = self.set.epoch.load(Ordering::Relaxed);
        if self.slot.conn.is_some() && self.is_fresh(epoch) {
            return Ok(());
        }
        // Boxed: a connect's state is kilobytes, and it would otherwise be carried (and
        // copied on every move) by the future of every operation, which almost never
        // needs it.
        Box::pin(self.check_or_reopen(epoch)).await
    }

    /// Whether the slot's connection was checked since the last failure anywhere in the
    /// set, and used recently enough to need no ping.
    fn is_fresh(&self, epoch: u64) -> bool {
        let idle_too_long = self
            .slot
            .last_used
            .is_none_or(|t| t.elapsed() > IDLE_PING_AFTER);
        self.slot.epoch == epoch && !idle_too_long
    }

    /// Pings a suspect connection, and opens a new one if it is gone or does not answer.
    async fn check_or_reopen(&mut self, epoch: u64) -> Result<()> {
        let slot = &mut *self.slot;
        if let Some(conn) = slot.conn.as_mut() {
            // Suspect: another connection broke since this one was last checked.
            self.dirty = true;
            let alive = matches!(
                tokio::time::timeout(self.set.connect_timeout, conn.ping()).await,
                Ok(Ok(()))
            );
            self.dirty = false;
            if alive {
                slot.epoch = epoch;
                return Ok(());
            }
            slot.conn = None;
        }
        let conn = self.set.connect().await?;
        self.slot.conn = Some(conn);
        self.slot.epoch = epoch;
        Ok(())
    }

    /// Ends a request started with [`begin_query`](Self::begin_query): the connection is
    /// clean again unless the error broke it.
    pub(crate) fn settle<T>(
        &mut self,
        what: &str,
        result: std::result::Result<T, sqlx::Error>,
    ) -> Result<T> {
        match result {
            Ok(value) => {
                self.dirty = false;
                Ok(value)
            }
            Err(err) => {
                // A broken connection stays dirty and is discarded on drop.
                if !breaks_connection(&err) {
                    self.dirty = false;
                }
                self.set
                    .counters
                    .shard()
                    .errors
                    .fetch_add(1, Ordering::Relaxed);
                if is_read_only(&err) {
                    if self.set.standby() {
                        return Err(read_only(what, &self.set.endpoint).with_source(err));
                    }
                    if self.set.require_primary {
                        // This host was a primary when connected and is a standby now:
                        // reconnect (to the hosts in order) before the next statement. The
                        // server refused before executing, so sending again is safe.
                        self.discard = true;
                        return Err(StateError::new(
                            ErrorKind::Unavailable,
                            format!(
                                "{what} reached a server that is read-only now (a standby); \
                                 reconnecting to the primary among {}",
                                self.set.endpoint
                            ),
                        )
                        .with_source(err));
                    }
                }
                Err(convert(err, what, true))
            }
        }
    }

    /// Behind a pooler, a statement outside a transaction gets one of its own: its parse
    /// and execute steps (two round trips, each ending in a Sync) then reach the same
    /// server connection, which a transaction pooler guarantees only within a
    /// transaction. The statement is unnamed, so nothing of it outlives the transaction.
    /// Returns the query to run and whether a transaction was opened for it.
    async fn pin(&mut self, what: &str, query: PgQuery) -> Result<(PgQuery, bool)> {
        if !self.set.pooler() {
            return Ok((query, false));
        }
        let query = query.persistent(false);
        if self.in_tx {
            return Ok((query, false));
        }
        let sql = format!("BEGIN; {}", self.set.set_local);
        self.simple_owned(what, AssertSqlSafe(sql).into_sql_str())
            .await?;
        self.in_tx = true;
        Ok((query, true))
    }

    /// Ends the transaction [`pin`](Self::pin) opened: commits after success (a failed
    /// commit is the statement's error), rolls back after a failure.
    async fn unpin<T>(&mut self, what: &str, pinned: bool, result: Result<T>) -> Result<T> {
        if !pinned {
            return result;
        }
        match result {
            Ok(value) => {
                self.commit(what).await?;
                Ok(value)
            }
            Err(err) => {
                self.rollback().await;
                Err(err)
            }
        }
    }

    /// Counts a query and hands out the open connection, marked as used: until
    /// [`settle`](Self::settle), dropping the checkout discards the connection (COPY uses
    /// it directly this way).
    pub(crate) fn begin_query(&mut self) -> Result<&mut PgConnection> {
        self.set
            .counters
            .shard()
            .queries
            .fetch_add(1, Ordering::Relaxed);
        let conn = self.slot.conn.as_mut().ok_or_else(closed)?;
        self.dirty = true;
        Ok(conn)
    }

    /// Runs a query and returns at most one row.
    pub async fn fetch_optional(&mut self, what: &str, query: PgQuery) -> Result<Option<PgRow>> {
        let (query, pinned) = self.pin(what, query).await?;
        let conn = self.begin_query()?;
        let result = query.fetch_optional(conn).await;
        let result = self.settle(what, result);
        self.unpin(what, pinned, result).await
    }

    /// Runs a query and returns exactly one row.
    pub async fn fetch_one(&mut self, what: &str, query: PgQuery) -> Result<PgRow> {
        let (query, pinned) = self.pin(what, query).await?;
        let conn = self.begin_query()?;
        let result = query.fetch_one(conn).await;
        let result = self.settle(what, result);
        self.unpin(what, pinned, result).await
    }

    /// Runs a query and returns every row (used for bounded pages only).
    pub async fn fetch_all(&mut self, what: &str, query: PgQuery) -> Result<Vec<PgRow>> {
        let (query, pinned) = self.pin(what, query).await?;
        let conn = self.begin_query()?;
        let result = query.fetch_all(conn).await;
        let result = self.settle(what, result);
        self.unpin(what, pinned, result).await
    }

    /// Runs a query and returns the number of rows it affected.
    pub async fn execute(&mut self, what: &str, query: PgQuery) -> Result<PgQueryResult> {
        let (query, pinned) = self.pin(what, query).await?;
        let conn = self.begin_query()?;
        let result = query.execute(conn).await;
        let result = self.settle(what, result);
        self.unpin(what, pinned, result).await
    }

    /// Runs SQL text without parameters or preparation (transaction control, VACUUM).
    pub async fn simple(&mut self, what: &str, sql: &'static str) -> Result<()> {
        let conn = self.begin_query()?;
        let result = sqlx::raw_sql(sql).execute(conn).await.map(|_| ());
        self.settle(what, result)
    }

    /// Runs an unprepared statement built at start-up (VACUUM cannot be prepared).
    pub async fn simple_owned(&mut self, what: &str, sql: sqlx::SqlStr) -> Result<()> {
        let conn = self.begin_query()?;
        let result = sqlx::raw_sql(sql).execute(conn).await.map(|_| ());
        self.settle(what, result)
    }

    /// Starts a transaction. Until [`commit`](Self::commit) or
    /// [`rollback`](Self::rollback) succeeds, dropping the checkout (an error, a dropped
    /// stream) discards the connection, and the server rolls the transaction back.
    pub async fn begin(&mut self, what: &str, sql: &'static str) -> Result<()> {
        if self.set.pooler() {
            // Session settings did not come with the connection: set them for this
            // transaction, in the same round trip.
            let sql = format!("{sql}; {}", self.set.set_local);
            self.simple_owned(what, AssertSqlSafe(sql).into_sql_str())
                .await?;
        } else {
            self.simple(what, sql).await?;
        }
        self.in_tx = true;
        self.set
            .counters
            .shard()
            .transactions
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Commits the open transaction.
    pub async fn commit(&mut self, what: &str) -> Result<()> {
        self.simple(what, "COMMIT").await?;
        self.in_tx = false;
        Ok(())
    }

    /// Rolls back the open transaction; on failure the connection is discarded on drop.
    pub async fn rollback(&mut self) {
        if self.simple("rollback", "ROLLBACK").await.is_ok() {
            self.in_tx = false;
        }
    }
}

/// Runs a one-value query with the simple protocol (nothing prepared, so it is safe behind
/// a pooler) and returns the value as text.
async fn simple_text(
    conn: &mut PgConnection,
    sql: &'static str,
) -> std::result::Result<String, sqlx::Error> {
    let row = sqlx::raw_sql(sql).fetch_one(conn).await?;
    row.try_get::<String, _>(0)
}

/// Whether the server refused a write because it is read-only (SQLSTATE 25006: a standby,
/// or `default_transaction_read_only`).
fn is_read_only(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

/// The error of a write sent to a backend opened on a standby.
pub(crate) fn read_only(what: &str, endpoint: &str) -> StateError {
    StateError::new(
        ErrorKind::ReadOnly,
        format!(
            "{what} writes, but {endpoint} is a standby that serves reads only; send writes to \
             the primary's URL (a primary URL with replicas=… and read_from=replicas reads from \
             standbys and writes to the primary)"
        ),
    )
}

fn closed() -> StateError {
    StateError::new(
        ErrorKind::Connection,
        "the connection was closed before use; try again",
    )
}
