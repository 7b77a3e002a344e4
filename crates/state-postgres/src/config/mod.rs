//! [`PostgresConfig`]: where the server is, which schema and table hold the state, and how
//! the connection set behaves.
//!
//! The type, its defaults and accessors are here; the `with_*` builders in `build.rs`, URL
//! parsing in `url.rs`, the checks in `validate.rs`.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use state_core::{Limits, RetryPolicy, Secret};

mod build;
pub(crate) mod deploy;
pub(crate) mod url;
pub(crate) mod validate;

#[cfg(test)]
mod tests;

/// How many coalesced statements run at once when the config does not say (see
/// [`PostgresConfig::with_coalescing`]); capped at `pool_max`.
pub(crate) const DEFAULT_COALESCE: usize = 2;

/// How to open and use the PostgreSQL backend.
///
/// Built from a URL (`postgres://user:pass@host:port/db?sslmode=…&schema=…&table=…`) and
/// refined with the `with_*` methods. [`PostgresConfig::new`] never fails, so the guide's
/// chained style works; a bad URL or option is reported by
/// [`validate`](Self::validate) and by
/// [`PostgresStateBackend::new`](crate::PostgresStateBackend::new) as a
/// [`Config`](state_core::ErrorKind::Config) error naming the field.
///
/// ```
/// use state_postgres::PostgresConfig;
/// use std::time::Duration;
///
/// let config = PostgresConfig::new("postgresql://app:secret@db.local/optimizer?table=events")
///     .with_pool_size(2, 16)
///     .with_ssl_mode("require")
///     .with_schema("state")
///     .with_statement_timeout(Duration::from_secs(5));
/// config.validate()?;
/// assert_eq!(config.table(), "events");
/// assert!(!format!("{config:?}").contains("secret"));
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Clone)]
pub struct PostgresConfig {
    /// The first problem found while building; reported by `validate`.
    problem: Option<String>,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<Secret>,
    database: Option<String>,
    ssl_mode: PgSslMode,
    ssl_root_cert: Option<PathBuf>,
    synchronous_commit: Option<&'static str>,
    schema: String,
    table: String,
    pool_min: u32,
    pool_max: u32,
    statement_timeout: Duration,
    acquire_timeout: Duration,
    connect_timeout: Duration,
    retry: RetryPolicy,
    key_prefix: Vec<u8>,
    default_ttl: Option<Duration>,
    limits: Limits,
    run_migrations: bool,
    reaper_interval: Option<Duration>,
    /// `None`: [`DEFAULT_COALESCE`], capped at `pool_max`.
    coalesce: Option<usize>,
    /// `None`: detect a transaction pooler when opening.
    pgbouncer: Option<bool>,
    /// Hosts after the first, tried in order.
    more_hosts: Vec<(String, u16)>,
    target_session_attrs: deploy::TargetSessionAttrs,
    replicas: Vec<(String, u16)>,
    read_from: deploy::ReadFrom,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("ssl_mode", &ssl_mode_name(self.ssl_mode))
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("synchronous_commit", &self.synchronous_commit)
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("pool", &(self.pool_min, self.pool_max))
            .field("statement_timeout", &self.statement_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("key_prefix", &String::from_utf8_lossy(&self.key_prefix))
            .field("default_ttl", &self.default_ttl)
            .field("run_migrations", &self.run_migrations)
            .field("reaper_interval", &self.reaper_interval)
            .field("coalesce", &self.coalescing())
            .field("pgbouncer", &self.pgbouncer)
            .field("target_session_attrs", &self.target_session_attrs)
            .field("replicas", &self.replicas)
            .field("read_from", &self.read_from)
            .field("problem", &self.problem)
            .finish()
    }
}

impl Default for PostgresConfig {
    /// `postgres://127.0.0.1:5432` with the defaults of every option.
    fn default() -> Self {
        PostgresConfig {
            problem: None,
            host: "127.0.0.1".into(),
            port: 5432,
            username: None,
            password: None,
            database: None,
            ssl_mode: PgSslMode::Prefer,
            ssl_root_cert: None,
            synchronous_commit: None,
            schema: "public".into(),
            table: "state_entries".into(),
            pool_min: 1,
            pool_max: 10,
            statement_timeout: Duration::from_secs(30),
            acquire_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            key_prefix: Vec::new(),
            default_ttl: None,
            limits: Limits::DEFAULT,
            run_migrations: true,
            reaper_interval: None,
            coalesce: None,
            pgbouncer: None,
            more_hosts: Vec::new(),
            target_session_attrs: deploy::TargetSessionAttrs::Any,
            replicas: Vec::new(),
            read_from: deploy::ReadFrom::Primary,
        }
    }
}

impl PostgresConfig {
    /// How many coalesced statements may run at once (0: coalescing is off).
    pub fn coalescing(&self) -> usize {
        self.coalesce
            .unwrap_or_else(|| DEFAULT_COALESCE.min(self.pool_max as usize))
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        let mut out = String::from("postgres://");
        // A password without a user name is shown too (as `:***@`): it is sent.
        match (&self.username, &self.password) {
            (Some(user), Some(_)) => out.push_str(&format!("{user}:***@")),
            (Some(user), None) => out.push_str(&format!("{user}@")),
            (None, Some(_)) => out.push_str(":***@"),
            (None, None) => {}
        }
        out.push_str(&self.endpoint());
        if let Some(db) = &self.database {
            out.push('/');
            out.push_str(db);
        }
        out
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The state table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &[u8] {
        &self.key_prefix
    }

    /// `(min, max)` connections.
    pub fn pool_size(&self) -> (u32, u32) {
        (self.pool_min, self.pool_max)
    }

    /// The sslmode as libpq spells it.
    pub fn ssl_mode(&self) -> &'static str {
        ssl_mode_name(self.ssl_mode)
    }

    /// The server-side `statement_timeout` every connection is opened with.
    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// How long an operation waits for a free connection.
    pub fn acquire_timeout(&self) -> Duration {
        self.acquire_timeout
    }

    /// How long opening one connection may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn retry(&self) -> RetryPolicy {
        self.retry
    }

    pub(crate) fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    pub(crate) fn run_migrations(&self) -> bool {
        self.run_migrations
    }

    pub(crate) fn reaper_interval(&self) -> Option<Duration> {
        self.reaper_interval
    }

    /// The hosts and ports (`h1:p1,h2:p2`), for messages.
    pub(crate) fn endpoint(&self) -> String {
        self.hosts()
            .iter()
            .map(|(host, port)| {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The driver's connection options: host, port, credentials, database, TLS (`sslmode`,
    /// `sslrootcert`) and the session settings (`statement_timeout`, `TimeZone`,
    /// `synchronous_commit`). Built field by field (never from the URL text) so that no
    /// driver error can echo the password. Public so that other crates opening their own
    /// connections to the same server (`state-lock`) parse URLs and set up TLS exactly as
    /// this backend does.
    ///
    /// With several hosts these are the first host's options. With
    /// [`with_pgbouncer(true)`](Self::with_pgbouncer) they carry no startup `options` and no
    /// `extra_float_digits` (a transaction pooler cannot pass them on): settings are then
    /// the caller's business.
    pub fn connect_options(&self) -> PgConnectOptions {
        let direct = self.pgbouncer != Some(true);
        let options = self.options_for(&self.host, self.port, direct);
        if direct {
            options
        } else {
            options.extra_float_digits(None)
        }
    }

    /// The options for one host, with the session settings in the startup `options` or
    /// without them.
    pub(crate) fn options_for(
        &self,
        host: &str,
        port: u16,
        settings_in_startup: bool,
    ) -> PgConnectOptions {
        let mut settings = vec![
            (
                "statement_timeout",
                format!("{}", self.statement_timeout.as_millis()),
            ),
            ("TimeZone", "UTC".to_string()),
        ];
        if let Some(mode) = self.synchronous_commit {
            settings.push(("synchronous_commit", mode.to_string()));
        }
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(host)
            .port(port)
            .ssl_mode(self.ssl_mode)
            .application_name("state-postgres");
        if settings_in_startup {
            options = options.options(settings);
        }
        if let Some(user) = &self.username {
            options = options.username(user);
        }
        if let Some(password) = &self.password {
            options = options.password(password.expose());
        }
        if let Some(db) = &self.database {
            options = options.database(db);
        }
        if let Some(cert) = &self.ssl_root_cert {
            options = options.ssl_root_cert(cert);
        }
        options
    }
}

fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}
