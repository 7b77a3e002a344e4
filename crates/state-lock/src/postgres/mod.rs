//! [`PostgresDistributedLock`]: locks kept by PostgreSQL, in [`LockMode::Session`] or
//! [`LockMode::Lease`]; the two are compared side by side on the type.

mod key;
mod lease;
mod session;
pub(crate) mod statements;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use state_core::{
    DistributedLock, ErrorKind, LockGuard, Result, StateError, StateUrl, check_lock_name,
    ttl_millis,
};
use state_postgres::PostgresConfig;
use state_postgres::errors::{breaks_connection, client_timeout};

pub use key::advisory_key;

/// Query parameters a lock URL accepts besides those of [`PostgresConfig`].
pub(crate) const LOCK_URL_PARAMS: [&str; 4] =
    ["lock_mode", "wait_timeout", "pgbouncer", "durable_leases"];

/// How long [`acquire`](DistributedLock::acquire) waits by default.
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `application_name` lock connections report by default.
pub(crate) const DEFAULT_APPLICATION_NAME: &str = "state-lock";

/// The longest owner token accepted (they are 32 hex digits by default).
const MAX_OWNER_LEN: usize = 256;

/// The custom setting that carries the pooler probe in the startup `options`: PostgreSQL
/// applies it to the backend it starts for the connection, a pooler cannot.
const PROBE_SETTING: &str = "state_lock.session_probe";

/// The message of the refusal to run Session mode behind a pooler.
const POOLER_REFUSAL: &str = "session advisory locks are unsafe behind a transaction pooler; \
     use lock_mode=lease";

/// Where a [`PostgresDistributedLock`] keeps its locks; the type compares the
/// two side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LockMode {
    /// A session advisory lock on one dedicated connection per held lock. No server-side
    /// TTL. Refused behind a transaction pooler.
    #[default]
    Session,
    /// A row in a lock table with an expiry set by the database clock. Safe behind a
    /// transaction pooler.
    Lease,
}

impl LockMode {
    /// `session` or `lease`, as URLs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Session => "session",
            LockMode::Lease => "lease",
        }
    }
}

impl fmt::Display for LockMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LockMode {
    type Err = StateError;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "session" => Ok(LockMode::Session),
            "lease" => Ok(LockMode::Lease),
            _ => Err(StateError::config(format!(
                "lock_mode `{}` is not one of session, lease",
                s.chars().take(40).collect::<String>()
            ))),
        }
    }
}

/// How to open a [`PostgresDistributedLock`]: the server (parsed, with TLS and timeouts,
/// exactly as [`PostgresConfig`] does), the [`LockMode`], the schema of the lock table and
/// token sequence, and how long `acquire` waits.
///
/// [`new`](Self::new) never fails, so the builder chains; problems are reported by
/// [`validate`](Self::validate) and when the lock is opened, as `Config` errors.
///
/// ```
/// use state_lock::{LockMode, PostgresLockConfig};
/// use std::time::Duration;
///
/// let config = PostgresLockConfig::new("postgres://app:secret@db:5432/app")
///     .with_mode(LockMode::Lease)
///     .with_schema("locks")
///     .with_wait_timeout(Duration::from_secs(5))
///     .with_ssl_mode("require");
/// config.validate()?;
/// assert!(!format!("{config:?}").contains("secret"));
///
/// let config = PostgresLockConfig::from_url("postgres://db/app?lock_mode=lease&wait_timeout=2s")?;
/// assert_eq!(config.mode(), LockMode::Lease);
/// assert!(!config.durable_leases());
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Clone)]
pub struct PostgresLockConfig {
    pg: PostgresConfig,
    mode: Option<LockMode>,
    behind_pooler: bool,
    durable_leases: bool,
    wait_timeout: Duration,
    application_name: String,
    problem: Option<String>,
}

impl fmt::Debug for PostgresLockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLockConfig")
            .field("url", &self.pg.redacted_url())
            .field("mode", &self.mode())
            .field("schema", &self.pg.schema())
            .field("ssl_mode", &self.pg.ssl_mode())
            .field("behind_pooler", &self.behind_pooler)
            .field("durable_leases", &self.durable_leases)
            .field("wait_timeout", &self.wait_timeout)
            .field("pool_max", &self.pg.pool_size().1)
            .field("application_name", &self.application_name)
            .field("problem", &self.problem)
            .finish()
    }
}

impl PostgresLockConfig {
    /// A config from a `postgres://` URL (see [`from_url`](Self::from_url) for the
    /// parameters). Never fails: a bad URL is reported by [`validate`](Self::validate) and
    /// when the lock is opened.
    pub fn new(url: &str) -> Self {
        match PostgresLockConfig::from_url(url) {
            Ok(config) => config,
            Err(e) => {
                let mut config =
                    PostgresLockConfig::from_postgres_config(PostgresConfig::default());
                config.problem = Some(e.message().to_string());
                config
            }
        }
    }

    /// A config from a URL, failing with a `Config` error on anything wrong in it. Accepts
    /// every parameter of [`PostgresConfig`] plus `lock_mode=session|lease`,
    /// `wait_timeout=DURATION`, `pgbouncer=true|false` and `durable_leases=true|false`.
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = StateUrl::parse(url)?;
        let mode = parsed
            .param("lock_mode")
            .map(LockMode::from_str)
            .transpose()?;
        let wait_timeout = parsed
            .param("wait_timeout")
            .map(|raw| {
                state_core::parse_duration(raw).map_err(|e| {
                    StateError::config(format!("parameter `wait_timeout`: {}", e.message()))
                })
            })
            .transpose()?;
        let behind_pooler = bool_param(&parsed, "pgbouncer")?;
        let durable_leases = bool_param(&parsed, "durable_leases")?;
        let pg = PostgresConfig::from_url(&strip_lock_params(url))?;
        let mut config = PostgresLockConfig::from_postgres_config(pg);
        config.mode = mode;
        config.behind_pooler = behind_pooler;
        config.durable_leases = durable_leases;
        if let Some(wait) = wait_timeout {
            config.wait_timeout = wait;
        }
        config.validate()?;
        Ok(config)
    }

    /// A config from a parsed URL (what [`crate::connect`] and tools that parse URLs
    /// first use), with the same parameters as [`from_url`](Self::from_url).
    pub fn from_state_url(url: &StateUrl) -> Result<Self> {
        PostgresLockConfig::from_url(&url.expose(true))
    }

    /// A config for the server (and TLS, timeouts, schema, pool size) of `postgres`, in
    /// Session mode with the default wait timeout.
    pub fn from_postgres_config(postgres: PostgresConfig) -> Self {
        PostgresLockConfig {
            pg: postgres,
            mode: None,
            behind_pooler: false,
            durable_leases: false,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            application_name: DEFAULT_APPLICATION_NAME.to_string(),
            problem: None,
        }
    }

    /// The lock mode (default [`LockMode::Session`], or [`LockMode::Lease`] with
    /// `pgbouncer=true`).
    pub fn with_mode(mut self, mode: LockMode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// Declares that the URL points at a transaction-mode pooler (PgBouncer): the default
    /// mode becomes Lease and Session is refused without connecting.
    pub fn with_transaction_pooler(mut self, behind_pooler: bool) -> Self {
        self.behind_pooler = behind_pooler;
        self
    }

    /// Lease mode only: keep the lock table as a normal, WAL-logged table (`true`) instead
    /// of an `UNLOGGED` one (`false`, the default; URL `durable_leases=true|false`).
    ///
    /// Durable leases survive a crash and a failover to a standby, at the price of a
    /// commit that waits for the WAL flush (fsync) on every acquire and release. With the
    /// default, a crash or failover loses the held leases, as it loses Session mode's
    /// advisory locks; the fencing tokens stay increasing either way (see
    /// [`PostgresDistributedLock`], "Lease mode in detail"). Opening a lock switches an
    /// existing table to the persistence asked for (`ALTER TABLE … SET LOGGED|UNLOGGED`),
    /// so every process sharing a schema should use the same setting.
    pub fn with_durable_leases(mut self, durable: bool) -> Self {
        self.durable_leases = durable;
        self
    }

    /// The schema holding the lock table and the token sequence (default `public`; created
    /// if absent). A plain lower-case SQL identifier.
    pub fn with_schema(mut self, schema: &str) -> Self {
        self.pg = self.pg.with_schema(schema);
        self
    }

    /// How long [`acquire`](DistributedLock::acquire) waits for a busy lock (default 30 s).
    pub fn with_wait_timeout(mut self, wait: Duration) -> Self {
        self.wait_timeout = wait;
        self
    }

    /// libpq's `sslmode`: `disable`, `allow`, `prefer` (the default), `require`,
    /// `verify-ca` or `verify-full`.
    pub fn with_ssl_mode(mut self, mode: &str) -> Self {
        self.pg = self.pg.with_ssl_mode(mode);
        self
    }

    /// The CA certificate (PEM file) that `verify-ca` and `verify-full` check the server
    /// against.
    pub fn with_ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.pg = self.pg.with_ssl_root_cert(path);
        self
    }

    /// How long opening one connection may take (default 10 s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.pg = self.pg.with_connect_timeout(timeout);
        self
    }

    /// The server-side `statement_timeout` of lock connections (default 30 s); the client
    /// gives up on a statement 5 s after it and drops the connection.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.pg = self.pg.with_statement_timeout(timeout);
        self
    }

    /// The most connections a lock handle has open (default 10). Lease mode shares them
    /// among all operations; Session mode needs one per held lock (plus up to 4 idle), so it
    /// holds at most `pool_max` locks at once. An operation that finds them all in use waits
    /// up to `acquire_timeout` (URL parameter, default 10 s) and then fails with `Timeout`.
    pub fn with_pool_max(mut self, max: u32) -> Self {
        let (min, _) = self.pg.pool_size();
        self.pg = self.pg.with_pool_size(min.min(max), max);
        self
    }

    /// How long an operation waits for a connection while `pool_max` are in use (default
    /// 10 s; URL `acquire_timeout`) before failing with `Timeout`.
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.pg = self.pg.with_acquire_timeout(timeout);
        self
    }

    /// The `application_name` the connections report in `pg_stat_activity` (default
    /// `state-lock`).
    pub fn with_application_name(mut self, name: &str) -> Self {
        self.application_name = name.to_string();
        self
    }

    /// The lock mode in effect.
    pub fn mode(&self) -> LockMode {
        match (self.mode, self.behind_pooler) {
            (Some(mode), _) => mode,
            (None, true) => LockMode::Lease,
            (None, false) => LockMode::Session,
        }
    }

    /// The schema of the lock table and the token sequence.
    pub fn schema(&self) -> &str {
        self.pg.schema()
    }

    /// Whether Lease mode's lock table is a logged (durable) table; see
    /// [`with_durable_leases`](Self::with_durable_leases).
    pub fn durable_leases(&self) -> bool {
        self.durable_leases
    }

    /// How long `acquire` waits.
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }

    /// The server settings (URL, TLS, timeouts, pool size).
    pub fn postgres_config(&self) -> &PostgresConfig {
        &self.pg
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if let Some(problem) = &self.problem {
            return Err(StateError::config(problem.clone()));
        }
        self.pg.validate()?;
        if self.behind_pooler && self.mode == Some(LockMode::Session) {
            return Err(StateError::config(format!(
                "lock_mode=session with pgbouncer=true: {POOLER_REFUSAL}"
            )));
        }
        if self.application_name.is_empty()
            || self.application_name.len() > 63
            || !self
                .application_name
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(StateError::config(
                "application_name must be 1 to 63 printable ASCII characters",
            ));
        }
        Ok(())
    }

    /// How long the client waits for one statement before dropping its connection.
    fn op_timeout(&self) -> Duration {
        self.pg.statement_timeout() + Duration::from_secs(5)
    }
}

/// A `true|false` (or `1|0`) URL parameter, `false` when absent.
fn bool_param(url: &StateUrl, name: &str) -> Result<bool> {
    match url.param(name) {
        None => Ok(false),
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(true),
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(false),
        Some(v) => Err(StateError::config(format!(
            "parameter `{name}`: `{}` is not true or false",
            v.chars().take(40).collect::<String>()
        ))),
    }
}

/// `url` without the lock's own query parameters, for [`PostgresConfig::from_url`] (which
/// rejects parameters it does not know).
fn strip_lock_params(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !LOCK_URL_PARAMS.contains(&key)
        })
        .collect();
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// A distributed lock kept by PostgreSQL, in [`LockMode::Session`] or [`LockMode::Lease`].
///
/// | | [`LockMode::Session`] (the default) | [`LockMode::Lease`] |
/// |---|---|---|
/// | where the lock lives | a session advisory lock (`pg_try_advisory_lock(key)`) on ONE dedicated connection that the guard owns | a row of `<schema>.state_locks(name, owner, token, expires_at)` |
/// | the key | [`advisory_key`]: a stable, documented 64-bit hash of the name | the name itself (primary key) |
/// | TTL | none on the server: held as long as the connection lives; the guard's TTL is a local deadline only | `expires_at = now() + ttl` by the **database** clock; a lease that runs out can be taken over |
/// | `extend` | checks in `pg_locks` that the connection still holds the lock, then moves the local deadline | moves `expires_at` if the lease is still ours and unexpired |
/// | holder dies / connection cut | the server frees the lock as soon as it notices the closed session | the lease runs out after its TTL |
/// | server crash, failover to a standby | the locks are gone (sessions end) | the leases are gone: the table is `UNLOGGED` (unless [`with_durable_leases`](PostgresLockConfig::with_durable_leases)) |
/// | fencing token | `nextval('<schema>.state_lock_tokens')`, taken in the same statement as the lock | the same sequence, taken under a per-name transaction lock |
/// | behind PgBouncer (transaction pooling) | **refused**: the server connection changes between transactions, so the lock would not be on "our" backend | safe: every operation is one self-contained statement (through a pooler: simple query protocol, no prepared statement) |
/// | statements | named prepared statements, parsed and planned once per connection | the same on a direct connection; through a pooler, simple query protocol, parsed and planned on every call |
/// | connections | one per held lock, plus up to 4 idle ones reused by later acquires; at most `pool_max` (default 10) in all, so at most `pool_max` locks held per handle (an acquire beyond that waits up to `acquire_timeout`, then fails with `Timeout`) | up to `pool_max` (default 10), reused without a check round trip (a broken one fails its statement, which is retried on another) |
/// | uncontended acquire + release | 2 round trips | 2 round trips |
/// | WAL flushes (fsync) | 1 acquire in 32 (the token sequence logs 32 values ahead) | the same; with durable leases, every acquire and release |
///
/// Pick **Session** when clients reach PostgreSQL directly and a crashed holder should free
/// its locks at once. Pick **Lease** behind a transaction-mode pooler (PgBouncer), when the
/// number of held locks is large (no connection each), or when a lock must outlive a
/// connection hiccup. Every process contending for a name must use the same mode and the
/// same schema: the two modes do not see each other's locks.
///
/// Both modes hand out fencing tokens from one sequence, so tokens increase strictly across
/// holders of a name (and across names). Pass them to
/// [`StateBackend::put_fenced`](state_core::StateBackend::put_fenced): a holder whose
/// connection was killed or whose lease ran out is rejected by the storage.
///
/// ## Session mode in detail
///
/// - Acquire is one statement on a connection taken from the idle list (or newly opened):
///   `SELECT CASE … WHEN pg_try_advisory_lock($2) THEN nextval(…) END`. The in-flight
///   acquire owns that connection: if the future is dropped (a timeout, a cancelled task) or
///   the statement fails, the connection is dropped and the server releases whatever it
///   took. A connection goes back to the idle list only when it provably holds nothing.
/// - Release is `pg_advisory_unlock(key)` on the guard's own connection. An unlock that
///   returns false is an error ([`NotOwner`](state_core::ErrorKind::NotOwner)) and that
///   connection is closed, never reused.
/// - Acquire, release and extend are named prepared statements with bound parameters
///   (sqlx's statement cache, extended query protocol): each is parsed and planned once per
///   connection, and every later call is one Bind/Execute/Sync round trip. Only safe
///   because Session mode never runs behind a pooler (below), which could hand a prepared
///   statement's next execution to a server connection that never saw it.
/// - Two acquirers never share a connection, so PostgreSQL's re-entrant session locks can
///   never grant one lock twice inside a process.
/// - A killed backend (`pg_terminate_backend`) or a cut connection frees the lock on the
///   server; the old guard's `extend`/`release` then fail with `NotOwner`, and the next
///   holder's higher token fences the old holder's writes.
/// - Pooler detection: every connection is opened with a random value in the startup
///   `options` (`-c state_lock.session_probe=…`) and reads it back. PostgreSQL applies
///   startup options to the backend it forks for this client; PgBouncer cannot (its server
///   connections are shared) and either refuses the parameter or drops it, so the value
///   does not come back and the lock refuses to start: "session advisory locks are unsafe
///   behind a transaction pooler; use lock_mode=lease". PgBouncer in session pooling mode
///   cannot be told apart and is refused too: connect Session mode directly to PostgreSQL.
///   (sqlx keeps the backend pid of the
///   `BackendKeyData` message private, so comparing it with `pg_backend_pid()` is not
///   possible.) In addition every statement checks `pg_backend_pid()` against the pid seen
///   when the connection opened and refuses to lock, unlock or extend on another backend.
/// - A session lock lives as long as its server session: set `tcp_keepalives_idle` on the
///   server so a vanished client's locks are freed in bounded time, and do not set
///   `idle_session_timeout` below the longest hold.
///
/// ## Lease mode in detail
///
/// - Acquire is one `INSERT … ON CONFLICT (name) DO UPDATE … WHERE expires_at <= now() OR
///   owner = EXCLUDED.owner RETURNING token`: it takes a free or expired lock, or renews the
///   caller's own (same owner token: an acquire whose reply was lost is retried and keeps
///   its token), and is serialised per name with a transaction-level advisory lock so that
///   tokens are drawn in the order the lock changes hands.
/// - `extend` updates `expires_at` only while the lease is ours and unexpired; `release`
///   deletes our row and reports `NotOwner` if it was gone or had expired.
/// - The lock table is `UNLOGGED` by default. A transaction that writes only unlogged
///   tables writes no WAL for its rows (only a commit record, which is not flushed at once),
///   so its commit does not wait for a WAL flush (fsync): acquire and release do not wait
///   for the disk. (They are still a write transaction each, about 1.5-2.5 times a
///   `SELECT 1`; Session mode is the faster one.) The fencing tokens stay
///   crash-safe: `nextval` WAL-logs 32 values ahead of what it hands out, and the
///   transaction that writes that record flushes it at commit (before the client gets the
///   token), so after a crash the sequence resumes above every token handed out and
///   tokens never go backwards. What a crash or a failover to a standby loses is the leases
///   themselves (unlogged tables are truncated by crash recovery and are not replicated):
///   exactly what a session advisory lock loses too, and then as there the still-increasing
///   fencing token is what protects the storage from a holder that does not know it lost
///   its lock. [`PostgresLockConfig::with_durable_leases`] (URL `durable_leases=true`)
///   keeps a normal logged table instead: leases survive crashes and failovers, and every
///   acquire and release waits for a WAL flush. Opening a lock creates the table with the
///   persistence asked for, or switches an existing one (`ALTER TABLE … SET LOGGED` /
///   `SET UNLOGGED`, under the same setup lock as the creation).
/// - Each connection is opened with the same probe in its startup `options` as Session
///   mode's, and reads it back once. One that gets it back reaches PostgreSQL directly (its
///   backend is its own), and runs the statements as named prepared statements: parsed and
///   planned once per connection, then one Bind/Execute/Sync round trip each. Through a
///   pooler the probe does not come back, and every statement is sent with the simple query
///   protocol and its values as literals (text as hex, decoded by the server), so no
///   prepared statement, named or unnamed, has to survive between two messages: a
///   transaction pooler may move us to another server connection after every statement.
///   (sqlx's unnamed statements are prepared and executed in two separate round trips,
///   which PgBouncer may route to different servers.) The texts are in
///   [`postgres_statements`](crate::postgres_statements).
/// - Dropping a guard inside a Tokio runtime deletes the row in a spawned task; outside one
///   it does nothing and the lease runs out.
///
/// ## URLs
///
/// Everything [`PostgresConfig`] accepts (`sslmode`, `sslrootcert`, `schema`, `pool_max`,
/// `statement_timeout`, `connect_timeout`, …) plus `lock_mode=session|lease`,
/// `wait_timeout=30s` (how long [`acquire`](DistributedLock::acquire) waits),
/// `pgbouncer=true` (the URL points at a transaction pooler: the default mode becomes
/// Lease and Session is refused) and `durable_leases=true` (Lease mode's table is logged).
///
/// ```no_run
/// use state_lock::{DistributedLock, PostgresDistributedLock};
/// use std::time::Duration;
/// # async fn demo() -> state_lock::Result<()> {
/// let lock = PostgresDistributedLock::new("postgresql://localhost/optimizer").await?;
/// let guard = lock.acquire("migration", Duration::from_secs(300)).await?;
/// // run the migration, passing guard.fencing_token() to put_fenced
/// lock.release(guard).await?;
/// # Ok(()) }
/// ```
pub struct PostgresDistributedLock {
    inner: Inner,
    mode: LockMode,
    wait_timeout: Duration,
    shown_url: String,
    schema: String,
}

enum Inner {
    Session(session::SessionLock),
    Lease(lease::LeaseLock),
}

impl fmt::Debug for PostgresDistributedLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDistributedLock")
            .field("url", &self.shown_url)
            .field("mode", &self.mode)
            .field("schema", &self.schema)
            .field("wait_timeout", &self.wait_timeout)
            .finish()
    }
}

impl PostgresDistributedLock {
    /// The guide's constructor: Session mode (unless the URL says `lock_mode=lease` or
    /// `pgbouncer=true`), connecting to check the server and create the token sequence.
    pub async fn new(url: &str) -> Result<Self> {
        PostgresDistributedLock::with_config(PostgresLockConfig::from_url(url)?).await
    }

    /// Opens the lock: validates the config, connects (failing fast on a bad URL, a refused
    /// password or certificate, or, in Session mode, a pooler), and creates the schema, the
    /// token sequence and, in Lease mode, the lock table if absent.
    pub async fn with_config(config: PostgresLockConfig) -> Result<Self> {
        config.validate()?;
        let mode = config.mode();
        let inner = match mode {
            LockMode::Session => Inner::Session(session::SessionLock::open(&config).await?),
            LockMode::Lease => Inner::Lease(lease::LeaseLock::open(&config).await?),
        };
        Ok(PostgresDistributedLock {
            inner,
            mode,
            wait_timeout: config.wait_timeout,
            shown_url: config.pg.redacted_url(),
            schema: config.pg.schema().to_string(),
        })
    }

    /// The mode this lock runs in.
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// The schema of the lock table and the token sequence.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

#[async_trait]
impl DistributedLock for PostgresDistributedLock {
    async fn try_acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: &str,
    ) -> Result<Option<LockGuard>> {
        check_lock_name(name)?;
        let millis = ttl_millis(ttl)?;
        check_owner(owner)?;
        match &self.inner {
            Inner::Session(lock) => lock.try_acquire(name, ttl, owner).await,
            Inner::Lease(lock) => lock.try_acquire(name, ttl, millis, owner).await,
        }
    }

    async fn acquire(&self, name: &str, ttl: Duration) -> Result<LockGuard> {
        crate::wait::acquire_waiting(self, name, ttl, self.wait_timeout).await
    }

    async fn extend(&self, guard: &mut LockGuard, ttl: Duration) -> Result<()> {
        let millis = ttl_millis(ttl)?;
        match &self.inner {
            Inner::Session(lock) => lock.extend(guard, ttl).await,
            Inner::Lease(lock) => lock.extend(guard, ttl, millis).await,
        }
    }

    async fn release(&self, guard: LockGuard) -> Result<()> {
        match &self.inner {
            Inner::Session(lock) => lock.release(guard).await,
            Inner::Lease(lock) => lock.release(guard).await,
        }
    }

    async fn is_locked(&self, name: &str) -> Result<bool> {
        check_lock_name(name)?;
        match &self.inner {
            Inner::Session(lock) => lock.is_locked(name).await,
            Inner::Lease(lock) => lock.is_locked(name).await,
        }
    }
}

fn check_owner(owner: &str) -> Result<()> {
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
        return Err(StateError::invalid_input(format!(
            "the owner token is {} bytes; use 1 to {MAX_OWNER_LEN} (new_owner_token() makes one)",
            owner.len()
        )));
    }
    Ok(())
}

/// The error for a guard this lock did not issue (another implementation's or mode's).
fn foreign_guard(guard: &LockGuard) -> StateError {
    StateError::invalid_input(format!(
        "the guard of lock `{}` was not issued by this PostgreSQL lock (another lock type or \
         mode); release it with the lock that issued it",
        guard.name()
    ))
}

/// `started + ttl`, saturating far in the future instead of overflowing.
fn deadline_after(started: Instant, ttl: Duration) -> Instant {
    started
        .checked_add(ttl)
        .unwrap_or_else(|| started + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// A text value as an SQL expression that cannot break out of its quotes: its UTF-8 bytes
/// in hex, decoded by the server. Independent of `standard_conforming_strings`.
fn text_literal(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(text.len() * 2 + 40);
    out.push_str("convert_from(decode('");
    for &byte in text.as_bytes() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out.push_str("', 'hex'), 'UTF8')");
    out
}

/// What lock table a mode needs: none (Session), or Lease mode's, logged (`durable`) or
/// `UNLOGGED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LockTable {
    None,
    Lease { durable: bool },
}

/// The statements that create what a mode needs, in one implicit transaction (one simple
/// query message, so a transaction pooler keeps it on one server connection), serialised
/// across processes by a transaction-level advisory lock so `IF NOT EXISTS` and the
/// persistence switch cannot race.
fn setup_sql(schema: &str, table: LockTable) -> String {
    let (high, low) = key::pg_locks_ids(advisory_key(&format!("state-lock setup {schema}")));
    let quoted = format!("\"{schema}\"");
    let mut sql = format!(
        "SELECT pg_advisory_xact_lock({}, {}); \
         CREATE SCHEMA IF NOT EXISTS {quoted}; \
         CREATE SEQUENCE IF NOT EXISTS {quoted}.state_lock_tokens;",
        i32::from_ne_bytes(high.to_ne_bytes()),
        i32::from_ne_bytes(low.to_ne_bytes()),
    );
    if let LockTable::Lease { durable } = table {
        // relpersistence: 'p' permanent (logged), 'u' unlogged.
        let (create, persistence, switch) = if durable {
            ("CREATE TABLE", 'p', "LOGGED")
        } else {
            ("CREATE UNLOGGED TABLE", 'u', "UNLOGGED")
        };
        sql.push_str(&format!(
            " {create} IF NOT EXISTS {quoted}.state_locks (\
               name TEXT PRIMARY KEY, \
               owner TEXT NOT NULL, \
               token BIGINT NOT NULL, \
               expires_at TIMESTAMPTZ NOT NULL); \
             DO $state_lock$ BEGIN \
               IF (SELECT relpersistence FROM pg_class \
                   WHERE oid = '{quoted}.state_locks'::regclass) <> '{persistence}' THEN \
                 ALTER TABLE {quoted}.state_locks SET {switch}; \
               END IF; \
             END $state_lock$;"
        ));
    }
    sql
}

/// Whether a setup error is a lost race on a concurrent `CREATE … IF NOT EXISTS` by
/// someone not taking our setup lock (state-postgres creating the same schema).
fn is_creation_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| matches!(&*c, "23505" | "42P06" | "42P07" | "42710")))
}

/// A driver error from doing `what`, classified like state-postgres does, with the lock's
/// own hints. `sent`: the request may have reached the server, so its outcome is unknown
/// after a lost connection.
fn convert(err: sqlx::Error, what: &str, sent: bool) -> StateError {
    state_postgres::errors::convert_with(err, what, sent, lock_hint)
}

/// What only the lock can say about a server error.
fn lock_hint(code: &str, message: &str) -> Option<(ErrorKind, &'static str)> {
    if message.contains("unsupported startup parameter") {
        // A pooler refusing our startup parameters will refuse them on every retry.
        return Some((
            ErrorKind::Config,
            "; a pooler (PgBouncer) refused the startup `options` parameter: add `options` \
             to its ignore_startup_parameters, and use lock_mode=lease behind it",
        ));
    }
    (code == "42501").then_some((
        ErrorKind::Config,
        "; the user needs CREATE on the database/schema, or create the lock objects \
         beforehand",
    ))
}

/// The direct URL of a PostgreSQL for unit tests: the local one, or the test services'.
#[cfg(test)]
async fn test_url() -> String {
    let local = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect("127.0.0.1:5432"),
    )
    .await;
    if std::env::var(testing::services::POSTGRES_URL_ENV).is_err() && matches!(local, Ok(Ok(_))) {
        return "postgres://postgres@127.0.0.1:5432/test".to_string();
    }
    testing::services::postgres()
        .await
        .expect("a PostgreSQL for the tests")
        .url()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_carry_the_lock_parameters_and_everything_postgres_accepts() -> Result<()> {
        let c = PostgresLockConfig::from_url(
            "postgres://me:pw@db:6543/app?sslmode=require&lock_mode=lease&schema=locks\
             &wait_timeout=2500ms&pool_max=3",
        )?;
        assert_eq!(c.mode(), LockMode::Lease);
        assert_eq!(c.schema(), "locks");
        assert_eq!(c.wait_timeout(), Duration::from_millis(2500));
        assert_eq!(c.postgres_config().ssl_mode(), "require");
        assert_eq!(c.postgres_config().pool_size().1, 3);

        let c = PostgresLockConfig::from_url("postgres://db/app")?;
        assert_eq!((c.mode(), c.schema()), (LockMode::Session, "public"));
        assert_eq!(c.wait_timeout(), DEFAULT_WAIT_TIMEOUT);

        let c = PostgresLockConfig::from_url("postgres://db/app?pgbouncer=true")?;
        assert_eq!(c.mode(), LockMode::Lease);
        assert!(!c.durable_leases());

        let c = PostgresLockConfig::from_url("postgres://db/app?durable_leases=true")?;
        assert!(c.durable_leases());
        let c = PostgresLockConfig::from_url("postgres://db/app?durable_leases=0")?;
        assert!(!c.durable_leases());
        assert!(
            PostgresLockConfig::new("postgres://db/app")
                .with_durable_leases(true)
                .durable_leases()
        );
        Ok(())
    }

    #[test]
    fn bad_values_are_config_errors_naming_the_field() {
        let cases = [
            ("postgres://db/app?lock_mode=advisory", "lock_mode"),
            ("postgres://db/app?wait_timeout=soon", "wait_timeout"),
            ("postgres://db/app?pgbouncer=maybe", "pgbouncer"),
            ("postgres://db/app?durable_leases=yes", "durable_leases"),
            ("postgres://db/app?colour=red", "colour"),
            ("postgres://db/app?schema=Bad-Name", "schema"),
            (
                "postgres://db/app?pgbouncer=true&lock_mode=session",
                "lock_mode=lease",
            ),
        ];
        for (url, field) in cases {
            match PostgresLockConfig::from_url(url) {
                Ok(c) => panic!("{url} was accepted: {c:?}"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Config, "{url}: {e}");
                    assert!(e.to_string().contains(field), "{url}: {e}");
                }
            }
        }
        let c = PostgresLockConfig::new("postgres://db/app").with_schema("x;drop");
        assert!(c.validate().is_err_and(|e| e.message().contains("schema")));
        let c = PostgresLockConfig::new("not a url");
        assert!(c.validate().is_err_and(|e| e.kind() == ErrorKind::Config));
        let c = PostgresLockConfig::new("postgres://db/app").with_application_name("");
        assert!(c.validate().is_err());
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = PostgresLockConfig::new("postgres://admin:hunter2@h:5432/db?lock_mode=lease");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("admin:***@h:5432/db"), "{shown}");
        let c = PostgresLockConfig::new("postgres://admin:hunter2@h:5432/db?lock_mode=nope");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(
            c.validate()
                .is_err_and(|e| !e.to_string().contains("hunter2"))
        );
    }

    #[test]
    fn lock_parameters_are_stripped_before_postgres_parses() {
        assert_eq!(
            strip_lock_params("postgres://h/d?lock_mode=lease&schema=s&wait_timeout=1s"),
            "postgres://h/d?schema=s"
        );
        assert_eq!(
            strip_lock_params("postgres://h/d?pgbouncer=true&durable_leases=false"),
            "postgres://h/d"
        );
        assert_eq!(strip_lock_params("postgres://h/d"), "postgres://h/d");
    }

    #[test]
    fn a_parsed_url_reads_back_with_its_password() -> Result<()> {
        let raw = "postgres://me%40corp:p%40ss%3Aw%2Frd@db:6543/my%20db?lock_mode=lease\
                   &schema=locks&sslmode=require";
        let parsed = StateUrl::parse(raw)?;
        let c = PostgresLockConfig::from_state_url(&parsed)?;
        assert_eq!((c.mode(), c.schema()), (LockMode::Lease, "locks"));
        let options = c.postgres_config().connect_options();
        assert_eq!(options.get_username(), "me@corp");
        assert_eq!(options.get_database(), Some("my db"));
        assert_eq!((options.get_host(), options.get_port()), ("db", 6543));
        assert_eq!(
            StateUrl::parse(&parsed.expose(true))?.expose(true),
            parsed.expose(true)
        );
        assert!(parsed.expose(true).contains("p%40ss%3Aw%2Frd"));
        Ok(())
    }

    #[test]
    fn the_lease_table_is_unlogged_unless_durable() {
        let unlogged = setup_sql("locks", LockTable::Lease { durable: false });
        assert!(unlogged.contains("CREATE UNLOGGED TABLE IF NOT EXISTS \"locks\".state_locks"));
        assert!(unlogged.contains("<> 'u' THEN ALTER TABLE \"locks\".state_locks SET UNLOGGED;"));
        let durable = setup_sql("locks", LockTable::Lease { durable: true });
        assert!(durable.contains(" CREATE TABLE IF NOT EXISTS \"locks\".state_locks"));
        assert!(durable.contains("<> 'p' THEN ALTER TABLE \"locks\".state_locks SET LOGGED;"));
        assert!(!setup_sql("locks", LockTable::None).contains("state_locks"));
    }

    #[test]
    fn text_literals_are_hex() {
        assert_eq!(
            text_literal("a'b"),
            "convert_from(decode('612762', 'hex'), 'UTF8')"
        );
        assert_eq!(text_literal(""), "convert_from(decode('', 'hex'), 'UTF8')");
        assert_eq!(
            text_literal("é\u{1}\u{ff}"),
            "convert_from(decode('c3a901c3bf', 'hex'), 'UTF8')"
        );
    }
}
