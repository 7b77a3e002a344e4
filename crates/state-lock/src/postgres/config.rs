//! [`PostgresLockConfig`] and [`LockMode`]: how to open a lock, from a builder or a URL.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use state_core::{Result, StateError, StateUrl};
use state_postgres::{POSTGRES, PostgresConfig};

use super::pooler::POOLER_REFUSAL;

/// Query parameters a lock URL accepts besides those of [`PostgresConfig`].
pub(crate) const LOCK_URL_PARAMS: [&str; 4] =
    ["lock_mode", "wait_timeout", "pgbouncer", "durable_leases"];

/// How long [`acquire`](state_core::DistributedLock::acquire) waits by default.
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// The `application_name` lock connections report by default.
pub(crate) const DEFAULT_APPLICATION_NAME: &str = "state-lock";

/// Where a [`PostgresDistributedLock`](crate::PostgresDistributedLock) keeps its locks; the
/// type compares the two side by side.
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

/// How to open a [`PostgresDistributedLock`](crate::PostgresDistributedLock): the server
/// (parsed, with TLS and timeouts, exactly as [`PostgresConfig`] does), the [`LockMode`], the
/// schema of the lock table and token sequence, and how long `acquire` waits.
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
    pub(super) pg: PostgresConfig,
    mode: Option<LockMode>,
    behind_pooler: bool,
    durable_leases: bool,
    pub(super) wait_timeout: Duration,
    pub(super) application_name: String,
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
        PostgresLockConfig::from_state_url(&StateUrl::parse(url, &[POSTGRES])?)
    }

    /// A config from a parsed URL (what the registry and tools that parse URLs first use),
    /// with the same parameters as [`from_url`](Self::from_url).
    pub fn from_state_url(parsed: &StateUrl) -> Result<Self> {
        let mode = parsed
            .param("lock_mode")
            .map(LockMode::from_str)
            .transpose()?;
        let wait_timeout = crate::wait_timeout_param(parsed)?;
        let behind_pooler = bool_param(parsed, "pgbouncer")?;
        let durable_leases = bool_param(parsed, "durable_leases")?;
        // The lock's own parameters are handed over: the server's config reads the rest.
        let mut server = parsed.clone();
        server.hand_over(&LOCK_URL_PARAMS);
        let pg = PostgresConfig::from_state_url(&server)?;
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
    /// [`PostgresDistributedLock`](crate::PostgresDistributedLock), "Lease mode in detail").
    /// Opening a lock switches an existing table to the persistence asked for
    /// (`ALTER TABLE … SET LOGGED|UNLOGGED`), so every process sharing a schema should use the
    /// same setting.
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

    /// How long [`acquire`](state_core::DistributedLock::acquire) waits for a busy lock
    /// (default 30 s).
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
    pub(super) fn op_timeout(&self) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

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
    fn lock_parameters_are_handed_over_and_unknown_ones_still_refused() -> Result<()> {
        let c = PostgresLockConfig::from_url(
            "postgres://h/d?lock_mode=lease&schema=s&wait_timeout=1s&pgbouncer=true",
        )?;
        assert_eq!(c.wait_timeout, Duration::from_secs(1));
        assert!(c.behind_pooler);
        assert_eq!(c.pg.schema(), "s");
        let err = PostgresLockConfig::from_url("postgres://h/d?lock_mode=lease&lock_mdoe=x")
            .err()
            .map(|e| (e.kind(), e.to_string()));
        let (kind, msg) = err.unwrap_or_else(|| panic!("a misspelt parameter was accepted"));
        assert_eq!(kind, ErrorKind::Config);
        assert!(
            msg.contains("`lock_mdoe`") && msg.contains("lock_mode"),
            "{msg}"
        );
        Ok(())
    }

    #[test]
    fn a_parsed_url_reads_back_with_its_password() -> Result<()> {
        let raw = "postgres://me%40corp:p%40ss%3Aw%2Frd@db:6543/my%20db?lock_mode=lease\
                   &schema=locks&sslmode=require";
        let parsed = StateUrl::parse(raw, &[POSTGRES])?;
        let c = PostgresLockConfig::from_state_url(&parsed)?;
        assert_eq!((c.mode(), c.schema()), (LockMode::Lease, "locks"));
        let options = c.postgres_config().connect_options();
        assert_eq!(options.get_username(), "me@corp");
        assert_eq!(options.get_database(), Some("my db"));
        assert_eq!((options.get_host(), options.get_port()), ("db", 6543));
        assert_eq!(
            StateUrl::parse(&parsed.expose(true), &[POSTGRES])?.expose(true),
            parsed.expose(true)
        );
        assert!(parsed.expose(true).contains("p%40ss%3Aw%2Frd"));
        Ok(())
    }
}
