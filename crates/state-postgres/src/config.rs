//! [`PostgresConfig`]: where the server is, which schema and table hold the state, and how
//! the connection set behaves.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use state_core::{Limits, Result, RetryPolicy, Scheme, Secret, StateError, StateUrl};

/// Query parameters a `postgres://` URL accepts besides the common `prefix=` and `ttl=`.
pub const URL_PARAMS: [&str; 13] = [
    "sslmode",
    "synchronous_commit",
    "sslrootcert",
    "schema",
    "table",
    "pool_min",
    "pool_max",
    "statement_timeout",
    "acquire_timeout",
    "connect_timeout",
    "coalesce",
    "retries",
    "failover_timeout",
];

/// How many coalesced statements run at once when the config does not say (see
/// [`PostgresConfig::with_coalescing`]); capped at `pool_max`.
pub(crate) const DEFAULT_COALESCE: usize = 2;

/// The longest table name: PostgreSQL names stop at 63 bytes and the derived tables add up
/// to 16 (`_checkpoint_rows`).
pub const MAX_TABLE_NAME_LEN: usize = 47;

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
        }
    }
}

impl PostgresConfig {
    /// A config from a `postgres://` or `postgresql://` URL. Never fails: a bad URL is
    /// reported by [`validate`](Self::validate) and when the backend is opened.
    pub fn new(url: &str) -> Self {
        match PostgresConfig::from_url(url) {
            Ok(config) => config,
            Err(err) => PostgresConfig {
                problem: Some(err.message().to_string()),
                ..PostgresConfig::default()
            },
        }
    }

    /// A config from a URL, failing with a `Config` error on anything wrong in it,
    /// unknown query parameters included.
    pub fn from_url(url: &str) -> Result<Self> {
        PostgresConfig::from_state_url(&StateUrl::parse(url)?)
    }

    /// A config from a parsed URL (what [`register`](crate::register) uses).
    pub fn from_state_url(url: &StateUrl) -> Result<Self> {
        if url.scheme() != Scheme::Postgres {
            return Err(StateError::config(format!(
                "the postgres backend cannot open a {} URL; use postgres://",
                url.scheme()
            )));
        }
        url.check_params(&URL_PARAMS)?;
        let mut config = PostgresConfig::default();
        if let Some(host) = url.hosts().first() {
            config.host = host.host.clone();
            config.port = host.port;
        }
        config.username = url.username().map(str::to_string);
        config.password = url.password().cloned();
        config.database = url.path().map(str::to_string);
        if let Some(mode) = url.param("sslmode") {
            config.ssl_mode = parse_ssl_mode(mode)?;
        }
        if let Some(path) = url.param("sslrootcert") {
            config.ssl_root_cert = Some(PathBuf::from(path));
        }
        if let Some(mode) = url.param("synchronous_commit") {
            config.synchronous_commit = Some(parse_synchronous_commit(mode)?);
        }
        if let Some(schema) = url.param("schema") {
            config.schema = schema.to_string();
        }
        if let Some(table) = url.param("table") {
            config.table = table.to_string();
        }
        if let Some(min) = url.parse_param::<u32>("pool_min")? {
            config.pool_min = min;
        }
        if let Some(max) = url.parse_param::<u32>("pool_max")? {
            config.pool_max = max;
            config.pool_min = config.pool_min.min(max);
        }
        if let Some(n) = url.parse_param::<usize>("coalesce")? {
            config.coalesce = Some(n);
        }
        if let Some(retries) = url.parse_param::<u32>("retries")? {
            config.retry.max_attempts = retries.saturating_add(1);
        }
        for (name, field) in [
            ("statement_timeout", &mut config.statement_timeout),
            ("acquire_timeout", &mut config.acquire_timeout),
            ("connect_timeout", &mut config.connect_timeout),
            ("failover_timeout", &mut config.retry.failover_timeout),
        ] {
            if let Some(raw) = url.param(name) {
                *field = state_core::parse_duration(raw).map_err(|e| {
                    StateError::config(format!("parameter `{name}`: {}", e.message()))
                })?;
            }
        }
        if let Some(prefix) = url.key_prefix() {
            config.key_prefix = prefix.as_bytes().to_vec();
        }
        config.default_ttl = url.default_ttl()?;
        config.validate()?;
        Ok(config)
    }

    fn note(mut self, problem: Result<()>) -> Self {
        if let (None, Err(err)) = (&self.problem, problem) {
            self.problem = Some(err.message().to_string());
        }
        self
    }

    /// The guide's pool size: `min` connections are opened at start, at most `max` are
    /// ever open.
    pub fn with_pool_size(mut self, min: u32, max: u32) -> Self {
        self.pool_min = min;
        self.pool_max = max;
        self
    }

    /// libpq's `sslmode`: `disable`, `allow`, `prefer` (the default), `require`,
    /// `verify-ca` or `verify-full`.
    pub fn with_ssl_mode(mut self, mode: &str) -> Self {
        match parse_ssl_mode(mode) {
            Ok(mode) => {
                self.ssl_mode = mode;
                self
            }
            Err(err) => self.note(Err(err)),
        }
    }

    /// The CA certificate (PEM file) that `verify-ca` and `verify-full` check the server
    /// against (libpq's `sslrootcert`).
    pub fn with_ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// The session's `synchronous_commit` (`on`, `off`, `local`, `remote_write`,
    /// `remote_apply`); the server's setting when not given. `off` acknowledges a write
    /// before its WAL reaches disk: a server crash (not a clean restart) may lose the last
    /// moments of acknowledged writes, never consistency.
    pub fn with_synchronous_commit(mut self, mode: &str) -> Self {
        match parse_synchronous_commit(mode) {
            Ok(mode) => {
                self.synchronous_commit = Some(mode);
                self
            }
            Err(err) => self.note(Err(err)),
        }
    }

    /// The schema holding the tables (default `public`); created if absent.
    pub fn with_schema(mut self, schema: &str) -> Self {
        self.schema = schema.to_string();
        self
    }

    /// The state table (default `state_entries`). Its companions are named after it:
    /// `{table}_fences`, `{table}_checkpoints`, `{table}_checkpoint_rows` and refinery's
    /// history `{table}_migrations`.
    pub fn with_table(mut self, table: &str) -> Self {
        self.table = table.to_string();
        self
    }

    /// The server-side `statement_timeout` of every connection (default 30s). The client
    /// gives up 5s after it, in case the server stops answering altogether.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How long an operation waits for a free connection (default 10s).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long opening one connection may take (default 10s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How retryable errors are retried (default: 3 attempts, see [`RetryPolicy`]).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The guide's `retries(max_retries, base_delay, max_delay)` (the failover timeout is
    /// kept).
    pub fn with_retries(self, max_retries: u32, base_delay: Duration, max_delay: Duration) -> Self {
        let failover_timeout = self.retry.failover_timeout;
        self.with_retry(RetryPolicy {
            failover_timeout,
            ..RetryPolicy::new(max_retries, base_delay, max_delay)
        })
    }

    /// How long an operation waits for a server that is away (restarting, refusing
    /// connections, shutting down) before it reports the error: 30 s by default, zero to
    /// report at once. Only what may be sent again waits (see [`RetryPolicy`]).
    pub fn with_failover_timeout(mut self, timeout: Duration) -> Self {
        self.retry.failover_timeout = timeout;
        self
    }

    /// Namespaces every key under `prefix`.
    pub fn with_key_prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.key_prefix = prefix.as_ref().to_vec();
        self
    }

    /// A TTL applied by writes that do not carry their own.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Key and value size limits (keys are capped at 2,000 bytes with the prefix, below
    /// PostgreSQL's btree entry limit).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether opening the backend applies pending migrations (default true). With false,
    /// run them beforehand with `cargo xtask migrate --url URL` or [`crate::migrate`].
    pub fn with_migrations(mut self, run: bool) -> Self {
        self.run_migrations = run;
        self
    }

    /// Deletes expired rows in the background every `interval` (they are invisible to
    /// reads at once either way; this reclaims their space).
    pub fn with_reaper(mut self, interval: Duration) -> Self {
        self.reaper_interval = Some(interval);
        self
    }

    /// Coalescing of concurrent point operations: at most `max_in_flight` statements
    /// serve `get`, `put` and `put_with_ttl` at once (default 2, capped at `pool_max`; URL
    /// parameter `coalesce=N`; 0 turns it off).
    ///
    /// A call that finds one of those slots free is its own statement, sent at once, as
    /// without coalescing. Calls made while every slot is busy wait in a queue, and a
    /// background task sends all of them together as one set-based statement (the SQL of
    /// `batch_get` and `batch_put`) as soon as a slot frees, like a Redis client's
    /// auto-pipelining: no timer. Each statement runs after all its calls were made and
    /// before any is answered, so reads and writes stay linearizable; a put is
    /// acknowledged once its statement committed, and a statement's error is the error of
    /// every call in it.
    ///
    /// What it buys: fewer statements when many tasks share the backend. On a 2-core
    /// machine with 16 tasks, point gets went from about 0.75x of `pgbench -M prepared -c
    /// 16` to 1.1-1.3x, and puts from 0.95x to 1.3-1.45x. What it costs: a call that has
    /// to queue pays a hop to that task and back, and point operations use at most
    /// `max_in_flight` connections (the others stay free for everything else), so with
    /// few concurrent callers a low value can cost throughput: with 4 tasks, 2 slots were
    /// about 20% slower than none, 4 slots even. Must not exceed `pool_max`.
    pub fn with_coalescing(mut self, max_in_flight: usize) -> Self {
        self.coalesce = Some(max_in_flight);
        self
    }

    /// How many coalesced statements may run at once (0: coalescing is off).
    pub fn coalescing(&self) -> usize {
        self.coalesce
            .unwrap_or_else(|| DEFAULT_COALESCE.min(self.pool_max as usize))
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if let Some(problem) = &self.problem {
            return Err(StateError::config(problem.clone()));
        }
        check_identifier("schema", &self.schema, 63)?;
        check_identifier("table", &self.table, MAX_TABLE_NAME_LEN)?;
        if self.pool_max == 0 {
            return Err(StateError::config(
                "pool_max is 0; the backend needs at least one connection",
            ));
        }
        if self.pool_max > 1000 {
            return Err(StateError::config(format!(
                "pool_max is {}; use at most 1000 connections (PostgreSQL's max_connections is \
                 usually far lower)",
                self.pool_max
            )));
        }
        if self.pool_min > self.pool_max {
            return Err(StateError::config(format!(
                "pool_min ({}) is larger than pool_max ({})",
                self.pool_min, self.pool_max
            )));
        }
        if let Some(n) = self.coalesce
            && n > self.pool_max as usize
        {
            return Err(StateError::config(format!(
                "coalesce ({n}) is larger than pool_max ({}); each coalesced statement needs a \
                 connection of its own: lower coalesce or raise pool_max",
                self.pool_max
            )));
        }
        for (name, value) in [
            ("statement_timeout", self.statement_timeout),
            ("acquire_timeout", self.acquire_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return Err(StateError::config(format!(
                    "{name} is {value:?}; use at least 1ms"
                )));
            }
        }
        self.retry.validate()?;
        if let Some(ttl) = self.default_ttl {
            state_core::ttl_millis(ttl)
                .map_err(|e| StateError::config(format!("default_ttl: {}", e.message())))?;
        }
        if self.limits.max_key_len == 0 {
            return Err(StateError::config("limits.max_key_len must be at least 1"));
        }
        if self.key_prefix.len() + self.limits.max_key_len > MAX_FULL_KEY_LEN {
            return Err(StateError::config(format!(
                "key prefix ({} bytes) plus max_key_len ({}) exceed {MAX_FULL_KEY_LEN} bytes, \
                 the longest key PostgreSQL's primary key index can hold safely",
                self.key_prefix.len(),
                self.limits.max_key_len
            )));
        }
        if self
            .reaper_interval
            .is_some_and(|i| i < Duration::from_millis(10))
        {
            return Err(StateError::config(
                "reaper interval is below 10ms; use a longer interval",
            ));
        }
        Ok(())
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        let mut out = String::from("postgres://");
        if let Some(user) = &self.username {
            out.push_str(user);
            if self.password.is_some() {
                out.push_str(":***");
            }
            out.push('@');
        }
        if self.host.contains(':') {
            out.push_str(&format!("[{}]:{}", self.host, self.port));
        } else {
            out.push_str(&format!("{}:{}", self.host, self.port));
        }
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

    /// The host and port, for messages.
    pub(crate) fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The driver's connection options: host, port, credentials, database, TLS (`sslmode`,
    /// `sslrootcert`) and the session settings (`statement_timeout`, `TimeZone`,
    /// `synchronous_commit`). Built field by field (never from the URL text) so that no
    /// driver error can echo the password. Public so that other crates opening their own
    /// connections to the same server (`state-lock`) parse URLs and set up TLS exactly as
    /// this backend does.
    pub fn connect_options(&self) -> PgConnectOptions {
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
            .host(&self.host)
            .port(self.port)
            .ssl_mode(self.ssl_mode)
            .application_name("state-postgres")
            .options(settings);
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

/// The longest stored key (prefix included): btree entries must stay under ~2.7 KB.
pub const MAX_FULL_KEY_LEN: usize = 2000;

fn parse_ssl_mode(mode: &str) -> Result<PgSslMode> {
    mode.parse::<PgSslMode>().map_err(|_| {
        StateError::config(format!(
            "sslmode `{mode}` is not one of disable, allow, prefer, require, verify-ca, \
             verify-full"
        ))
    })
}

fn parse_synchronous_commit(mode: &str) -> Result<&'static str> {
    const MODES: [&str; 5] = ["on", "off", "local", "remote_write", "remote_apply"];
    MODES
        .iter()
        .find(|m| m.eq_ignore_ascii_case(mode))
        .copied()
        .ok_or_else(|| {
            StateError::config(format!(
                "synchronous_commit `{mode}` is not one of {}",
                MODES.join(", ")
            ))
        })
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

/// Accepts lower-case SQL identifiers only (`[a-z_][a-z0-9_]*`), so that a quoted name means
/// the same as an unquoted one and no name can break out of its quotes.
pub(crate) fn check_identifier(field: &str, name: &str, max_len: usize) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok {
        return Err(StateError::config(format!(
            "{field} name `{}` is not a plain SQL identifier; use lower-case letters, digits \
             and `_`, starting with a letter or `_`",
            name.chars().take(80).collect::<String>()
        )));
    }
    if name.len() > max_len {
        return Err(StateError::config(format!(
            "{field} name `{name}` is {} bytes; the limit is {max_len}",
            name.len()
        )));
    }
    if name.starts_with("pg_") {
        return Err(StateError::config(format!(
            "{field} name `{name}` starts with pg_, which PostgreSQL reserves"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    fn config_err(result: Result<PostgresConfig>) -> String {
        match result {
            Ok(c) => panic!("expected a config error, got {c:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Config, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn url_parameters_are_read() -> Result<()> {
        let c = PostgresConfig::from_url(
            "postgresql://me:pw@db:6543/app?sslmode=verify-full&sslrootcert=/ca.pem&table=ev\
             &schema=st&pool_max=7&pool_min=2&prefix=p:&ttl=30s&statement_timeout=2s",
        )?;
        assert_eq!((c.host.as_str(), c.port), ("db", 6543));
        assert_eq!(c.database.as_deref(), Some("app"));
        assert_eq!(c.ssl_mode(), "verify-full");
        assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/ca.pem")));
        assert_eq!((c.schema(), c.table()), ("st", "ev"));
        assert_eq!(c.pool_size(), (2, 7));
        assert_eq!(c.key_prefix(), b"p:");
        assert_eq!(c.default_ttl, Some(Duration::from_secs(30)));
        assert_eq!(c.statement_timeout, Duration::from_secs(2));
        Ok(())
    }

    #[test]
    fn bad_urls_and_options_name_the_field() {
        assert!(
            config_err(PostgresConfig::from_url("postgres://h/db?colour=red")).contains("colour")
        );
        assert!(
            config_err(PostgresConfig::from_url("postgres://h/db?sslmode=maybe"))
                .contains("sslmode")
        );
        assert!(
            config_err(PostgresConfig::from_url("postgres://h/db?table=Bad-Name"))
                .contains("table")
        );
        assert!(
            config_err(PostgresConfig::from_url("postgres://h/db?schema=x;drop"))
                .contains("schema")
        );
        assert!(
            config_err(PostgresConfig::from_url("postgres://h/db?pool_max=0")).contains("pool_max")
        );
        assert!(
            config_err(PostgresConfig::from_url("postgres://h/db?pool_max=x")).contains("pool_max")
        );
        assert!(
            config_err(PostgresConfig::from_url("postgres://h/db?ttl=0s")).contains("default_ttl")
        );
        assert!(config_err(PostgresConfig::from_url("redis://h")).contains("postgres://"));
        let long = "t".repeat(MAX_TABLE_NAME_LEN + 1);
        assert!(
            config_err(PostgresConfig::from_url(&format!(
                "postgres://h/d?table={long}"
            )))
            .contains("limit")
        );
    }

    #[test]
    fn builder_errors_are_deferred_to_validate() {
        let c = PostgresConfig::new("postgres://h/db").with_ssl_mode("sometimes");
        assert!(c.validate().is_err());
        let c = PostgresConfig::new("postgres://h/db").with_pool_size(5, 2);
        assert!(
            c.validate()
                .is_err_and(|e| e.message().contains("pool_min"))
        );
        let c = PostgresConfig::new("not a url");
        assert!(c.validate().is_err_and(|e| e.kind() == ErrorKind::Config));
        let c = PostgresConfig::new("postgres://h/db").with_table("ok_name");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn coalescing_is_capped_by_pool_max() -> Result<()> {
        let c = PostgresConfig::from_url("postgres://h/db?pool_max=8&coalesce=3")?;
        assert_eq!(c.coalescing(), 3);
        assert_eq!(
            PostgresConfig::from_url("postgres://h/db?coalesce=0")?.coalescing(),
            0
        );
        // The default follows a small pool down instead of failing.
        let c = PostgresConfig::from_url("postgres://h/db?pool_max=1")?;
        assert_eq!(c.coalescing(), 1);
        assert_eq!(PostgresConfig::default().coalescing(), DEFAULT_COALESCE);
        // An explicit value above pool_max is an error naming the field.
        let err = config_err(PostgresConfig::from_url(
            "postgres://h/db?pool_max=2&coalesce=3",
        ));
        assert!(
            err.contains("coalesce (3)") && err.contains("pool_max"),
            "{err}"
        );
        let c = PostgresConfig::new("postgres://h/db")
            .with_pool_size(1, 4)
            .with_coalescing(5);
        assert!(
            c.validate()
                .is_err_and(|e| e.kind() == ErrorKind::Config && e.message().contains("coalesce"))
        );
        assert!(
            config_err(PostgresConfig::from_url("postgres://h/db?coalesce=-1"))
                .contains("coalesce")
        );
        Ok(())
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = PostgresConfig::new("postgres://admin:hunter2@h:5432/db?sslmode=require");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("admin:***@h:5432/db"), "{shown}");
        assert!(!c.redacted_url().contains("hunter2"));
    }
}
