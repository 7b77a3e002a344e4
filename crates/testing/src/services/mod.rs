//! Service fixtures: how tests find or start Redis and PostgreSQL.
//!
//! [`redis()`] and [`postgres()`] return the standalone service every test of a process
//! shares, found in this order (DESIGN.md, "Services"):
//!
//! 1. a URL in the environment: `STATE_TEST_REDIS_URL` / `STATE_TEST_POSTGRES_URL`;
//! 2. with the `containers` feature and a reachable Docker engine, the official `redis` /
//!    `postgres` images started by testcontainers;
//! 3. local binaries (`redis-server`; PostgreSQL's `initdb`/`pg_ctl` under
//!    `/usr/lib/postgresql/*/bin` or on `PATH`) started on free loopback ports in a
//!    temporary directory;
//! 4. otherwise an error that names which of the three to provide. A missing service fails
//!    the test; it is never a skip.
//!
//! A service this process started lives until the process exits; a small reaper process
//! (see [`process`]) stops it and removes its directory even when the test process is
//! killed, so no server is left behind.
//!
//! Topologies with several servers have their own launchers, each owning its processes and
//! stopping them on drop: [`LocalRedis`], [`RedisCluster`] (3 masters + 3 replicas),
//! [`RedisSentinel`] (primary, replica, 3 sentinels) and [`LocalPostgres`] (with an optional
//! streaming replica). [`TestCerts`] makes a throwaway CA and certificates for TLS tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), testing::services::ServiceError> {
//! let redis = testing::services::redis().await?;
//! let url = testing::services::parse_url(&redis.url()).expect("a valid URL");
//! assert_eq!(url.scheme().as_str(), "redis");
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use state_core::{ErrorKind, Scheme, StateError, StateUrl, UrlShape};
use tokio::sync::OnceCell;

mod certs;
mod cluster;
#[cfg(feature = "containers")]
pub mod containers;
mod pgbouncer;
mod postgres;
pub mod process;
mod prometheus;
mod redis;
mod sentinel;

pub use certs::TestCerts;
pub use cluster::RedisCluster;
pub use pgbouncer::{PgBouncer, PgBouncerOptions, PoolMode};
pub use postgres::{LocalPostgres, LocalPostgresOptions};
pub use prometheus::{LocalPrometheus, promtool};
pub use redis::{LocalRedis, LocalRedisOptions, RedisTls};
pub use sentinel::RedisSentinel;

/// The schemes of the URLs these fixtures hand out, declared as `state_redis::SCHEMES` and
/// `state_postgres::POSTGRES` declare them (this crate depends on neither; their tests
/// check that the two agree).
pub const SCHEMES: [Scheme; 5] = [
    Scheme::new("redis", UrlShape::hosts(6379, false)),
    Scheme::new("rediss", UrlShape::hosts(6379, false)),
    Scheme::new("redis+sentinel", UrlShape::hosts(26379, true)),
    Scheme::new("redis+cluster", UrlShape::hosts(6379, true)),
    Scheme::new("postgres", UrlShape::hosts(5432, true)).with_aliases(&["postgresql"]),
];

/// Parses the URL of a service: one a fixture handed out, or one from the environment.
pub fn parse_url(url: &str) -> Result<StateUrl, StateError> {
    StateUrl::parse(url, &SCHEMES)
}

/// The environment variable that points the tests at an existing Redis.
pub const REDIS_URL_ENV: &str = "STATE_TEST_REDIS_URL";
/// The environment variable that points the tests at an existing PostgreSQL database.
pub const POSTGRES_URL_ENV: &str = "STATE_TEST_POSTGRES_URL";

/// A service could not be found or started, or a launcher operation failed. The message
/// says what was tried and what to do, and quotes the server's log where there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    message: String,
}

impl ServiceError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        ServiceError {
            message: message.into(),
        }
    }

    /// An error with this message (for code built on the fixtures, such as tests).
    pub fn from_message(message: impl Into<String>) -> Self {
        ServiceError::new(message)
    }

    /// The full message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServiceError {}

impl From<ServiceError> for StateError {
    fn from(e: ServiceError) -> Self {
        StateError::new(ErrorKind::Connection, e.message)
    }
}

/// Where a shared service came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceOrigin {
    /// The URL came from `STATE_TEST_REDIS_URL` / `STATE_TEST_POSTGRES_URL`.
    Env,
    /// A testcontainers container started by this process.
    Container,
    /// A local server binary started by this process in a temporary directory.
    Local,
}

/// Keeps whatever this process started (a launcher or a container) alive with the handle.
type KeepAlive = Arc<dyn std::any::Any + Send + Sync>;

/// The shared standalone Redis: see [`redis()`].
#[derive(Clone)]
pub struct RedisService {
    url: String,
    origin: ServiceOrigin,
    _keep: Option<KeepAlive>,
}

impl RedisService {
    /// `redis://host:port` (with credentials if the environment's URL has them): usable by
    /// [`parse_url`] and by the `redis` crate.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Where the service came from.
    pub fn origin(&self) -> ServiceOrigin {
        self.origin
    }
}

impl fmt::Debug for RedisService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisService")
            .field("url", &redact(&self.url))
            .field("origin", &self.origin)
            .finish()
    }
}

/// The shared PostgreSQL database: see [`postgres()`].
#[derive(Clone)]
pub struct PostgresService {
    url: String,
    origin: ServiceOrigin,
    _keep: Option<KeepAlive>,
}

impl PostgresService {
    /// `postgres://user@host:port/db`: a database where tests may create their own schemas
    /// (each test its own, dropped afterwards). Usable by [`parse_url`] and by `sqlx`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Where the service came from.
    pub fn origin(&self) -> ServiceOrigin {
        self.origin
    }
}

impl fmt::Debug for PostgresService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresService")
            .field("url", &redact(&self.url))
            .field("origin", &self.origin)
            .finish()
    }
}

/// The URL with any password removed, for Debug output and messages.
/// Percent-encodes everything but RFC 3986's unreserved characters: for a URL's user info
/// or a query value.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn redact(url: &str) -> String {
    parse_url(url)
        .map(|u| u.redacted())
        .unwrap_or_else(|_| "(unparseable URL)".to_owned())
}

/// The Redis every test of this process shares. Resolved once (see the [module
/// docs](self)); a failure is remembered, so every test reports the same clear error
/// instead of retrying a slow start.
pub async fn redis() -> Result<RedisService, ServiceError> {
    static SHARED: OnceCell<Result<RedisService, ServiceError>> = OnceCell::const_new();
    SHARED.get_or_init(resolve_redis).await.clone()
}

/// The URL of the PostgreSQL database tests use: [`POSTGRES_URL_ENV`] if set, else the
/// machine's server at 127.0.0.1:5432 (database `test`) if it answers, else the one
/// [`postgres()`] finds or starts.
pub async fn postgres_url() -> Result<String, ServiceError> {
    let from_env = std::env::var(POSTGRES_URL_ENV).is_ok_and(|v| !v.trim().is_empty());
    if !from_env {
        let local = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect("127.0.0.1:5432"),
        )
        .await;
        if matches!(local, Ok(Ok(_))) {
            return Ok("postgres://postgres@127.0.0.1:5432/test".to_string());
        }
    }
    Ok(postgres().await?.url())
}

/// The PostgreSQL database every test of this process shares; see [`redis()`].
pub async fn postgres() -> Result<PostgresService, ServiceError> {
    static SHARED: OnceCell<Result<PostgresService, ServiceError>> = OnceCell::const_new();
    SHARED.get_or_init(resolve_postgres).await.clone()
}

async fn resolve_redis() -> Result<RedisService, ServiceError> {
    if let Some(url) = env_url(REDIS_URL_ENV).await? {
        return Ok(RedisService {
            url,
            origin: ServiceOrigin::Env,
            _keep: None,
        });
    }
    let mut tried = Vec::new();
    #[cfg(feature = "containers")]
    match containers::redis().await {
        Ok(Some((url, keep))) => {
            return Ok(RedisService {
                url,
                origin: ServiceOrigin::Container,
                _keep: Some(keep),
            });
        }
        Ok(None) => tried.push("no Docker engine is reachable".to_owned()),
        Err(e) => tried.push(format!("the Redis container did not start: {e}")),
    }
    #[cfg(not(feature = "containers"))]
    tried.push("the `containers` feature of `testing` is off".to_owned());
    if process::on_path("redis-server").is_some() {
        match LocalRedis::start(LocalRedisOptions::default()).await {
            Ok(local) => {
                return Ok(RedisService {
                    url: local.url(),
                    origin: ServiceOrigin::Local,
                    _keep: Some(Arc::new(local)),
                });
            }
            Err(e) => tried.push(format!("the local redis-server did not start: {e}")),
        }
    } else {
        tried.push("redis-server is not on PATH".to_owned());
    }
    Err(ServiceError::new(format!(
        "no Redis for the tests: set {REDIS_URL_ENV}=redis://127.0.0.1:6379 (a running server), \
         or enable the `containers` feature of `testing` with a running Docker engine, \
         or install redis-server (e.g. `apt-get install redis-server`) so the tests can start \
         one; tried: {}",
        tried.join("; ")
    )))
}

async fn resolve_postgres() -> Result<PostgresService, ServiceError> {
    if let Some(url) = env_url(POSTGRES_URL_ENV).await? {
        return Ok(PostgresService {
            url,
            origin: ServiceOrigin::Env,
            _keep: None,
        });
    }
    let mut tried = Vec::new();
    #[cfg(feature = "containers")]
    match containers::postgres().await {
        Ok(Some((url, keep))) => {
            return Ok(PostgresService {
                url,
                origin: ServiceOrigin::Container,
                _keep: Some(keep),
            });
        }
        Ok(None) => tried.push("no Docker engine is reachable".to_owned()),
        Err(e) => tried.push(format!("the PostgreSQL container did not start: {e}")),
    }
    #[cfg(not(feature = "containers"))]
    tried.push("the `containers` feature of `testing` is off".to_owned());
    match postgres::find_bin_dir() {
        Some(_) => match LocalPostgres::start(LocalPostgresOptions::default()).await {
            Ok(local) => {
                return Ok(PostgresService {
                    url: local.url(),
                    origin: ServiceOrigin::Local,
                    _keep: Some(Arc::new(local)),
                });
            }
            Err(e) => tried.push(format!("the local PostgreSQL did not start: {e}")),
        },
        None => {
            tried.push("no initdb/pg_ctl under /usr/lib/postgresql/*/bin or on PATH".to_owned())
        }
    }
    Err(ServiceError::new(format!(
        "no PostgreSQL for the tests: set {POSTGRES_URL_ENV}=postgres://postgres@127.0.0.1:5432/test \
         (a running server and an existing database), or enable the `containers` feature of \
         `testing` with a running Docker engine, or install PostgreSQL (e.g. \
         `apt-get install postgresql`) so the tests can start one; tried: {}",
        tried.join("; ")
    )))
}

/// The URL in `var`, if set and non-empty, after checking that it parses and its first host
/// accepts connections (so a stale variable fails with a clear message, not a hang).
async fn env_url(var: &str) -> Result<Option<String>, ServiceError> {
    let Some(raw) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let raw = raw.trim().to_owned();
    let parsed = parse_url(&raw)
        .map_err(|e| ServiceError::new(format!("{var} does not hold a valid URL: {e}")))?;
    let Some(first) = parsed.hosts().first() else {
        return Err(ServiceError::new(format!(
            "{var}={} names no host; write scheme://host:port/...",
            parsed.redacted()
        )));
    };
    let (host, port) = (first.host.clone(), first.port);
    process::wait_for(
        &format!("{var}={} to accept connections", parsed.redacted()),
        Duration::from_secs(5),
        None,
        || {
            let host = host.clone();
            async move { process::port_answers(&host, port).await.then_some(()) }
        },
    )
    .await
    .map_err(|e| {
        ServiceError::new(format!(
            "{e}: start that server, or unset {var} to let the tests start their own"
        ))
    })?;
    Ok(Some(raw))
}
