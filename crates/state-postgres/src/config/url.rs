//! [`PostgresConfig`] from a `postgres://` URL.

use std::path::PathBuf;

use sqlx::postgres::PgSslMode;
use state_core::{Result, Scheme, StateError, StateUrl, UrlShape};

use super::PostgresConfig;

/// `postgres://user[:pass]@host:port[,host:port…]/db`, also written `postgresql://`.
pub const POSTGRES: Scheme =
    Scheme::new("postgres", UrlShape::hosts(5432, true)).with_aliases(&["postgresql"]);

/// Query parameters a `postgres://` URL accepts besides the common `prefix=` and `ttl=`.
pub const URL_PARAMS: [&str; 18] = [
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
    "pgbouncer",
    "target_session_attrs",
    "host",
    "replicas",
    "read_from",
];

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
        PostgresConfig::from_state_url(&StateUrl::parse(url, &[POSTGRES])?)
    }

    /// A config from a parsed URL (what [`register`](crate::register) uses).
    pub fn from_state_url(url: &StateUrl) -> Result<Self> {
        if url.scheme() != POSTGRES {
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
        config.more_hosts = url
            .hosts()
            .iter()
            .skip(1)
            .map(|h| (h.host.clone(), h.port))
            .collect();
        config.read_deploy_params(url)?;
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
}

pub(super) fn parse_ssl_mode(mode: &str) -> Result<PgSslMode> {
    mode.parse::<PgSslMode>().map_err(|_| {
        StateError::config(format!(
            "sslmode `{mode}` is not one of disable, allow, prefer, require, verify-ca, \
             verify-full"
        ))
    })
}

pub(super) fn parse_synchronous_commit(mode: &str) -> Result<&'static str> {
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
