//! [`PostgresDistributedLock`]: the lock type, which checks the arguments and hands each
//! call to its mode ([`session`] or [`lease`]).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use state_core::{
    DistributedLock, LockGuard, Result, StateError, check_lock_name, new_owner_token, ttl_millis,
};

use super::config::{LockMode, PostgresLockConfig};
use super::{lease, session};

/// The longest owner token accepted (they are 32 hex digits by default).
const MAX_OWNER_LEN: usize = 256;

/// A distributed lock kept by PostgreSQL, in [`LockMode::Session`] or [`LockMode::Lease`].
///
/// | | [`LockMode::Session`] (the default) | [`LockMode::Lease`] |
/// |---|---|---|
/// | where the lock lives | a session advisory lock (`pg_try_advisory_lock(key)`) on ONE dedicated connection that the guard owns | a row of `<schema>.state_locks(name, owner, token, expires_at)` |
/// | the key | [`advisory_key`](crate::advisory_key): a stable, documented 64-bit hash of the name | the name itself (primary key) |
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
/// Everything [`PostgresConfig`](state_postgres::PostgresConfig) accepts (`sslmode`,
/// `sslrootcert`, `schema`, `pool_max`, `statement_timeout`, `connect_timeout`, …) plus
/// `lock_mode=session|lease`,
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

impl PostgresDistributedLock {
    /// [`DistributedLock::try_acquire_as`] for an owner given as `&str` or as a `String`,
    /// which then moves into the guard.
    async fn acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: impl AsRef<str> + Into<String>,
    ) -> Result<Option<LockGuard>> {
        check_lock_name(name)?;
        let millis = ttl_millis(ttl)?;
        check_owner(owner.as_ref())?;
        match &self.inner {
            Inner::Session(lock) => lock.try_acquire(name, ttl, owner).await,
            Inner::Lease(lock) => lock.try_acquire(name, ttl, millis, owner).await,
        }
    }
}

#[async_trait]
impl DistributedLock for PostgresDistributedLock {
    async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        self.acquire_as(name, ttl, new_owner_token()).await
    }

    async fn try_acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: &str,
    ) -> Result<Option<LockGuard>> {
        self.acquire_as(name, ttl, owner).await
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
