//! Redis URLs: the parameters they may carry, and how they set a [`RedisConfigBuilder`].

use std::time::Duration;

use state_core::{Result, StateError, StateUrl};

use super::builder::RedisConfigBuilder;
use super::scheme::SCHEMES;
use super::{ReadFrom, RedisConfig, WaitReplicas};

/// The parameters a Redis URL may carry besides `prefix` and `ttl`.
pub const URL_PARAMS: [&str; 15] = [
    "pool_min",
    "pool_max",
    "pipeline_batch_size",
    "connect_timeout",
    "timeout",
    "retries",
    "retry_base_delay",
    "retry_max_delay",
    "failover_timeout",
    "tls",
    "tls_ca",
    "read_from",
    "wait_replicas",
    "wait_timeout",
    "tcp_nodelay",
];

impl RedisConfig {
    /// Parses `redis://`, `rediss://`, `redis+sentinel://` and `redis+cluster://` URLs.
    ///
    /// Parameters: `prefix`, `ttl` (humantime), `pool_min`, `pool_max`,
    /// `pipeline_batch_size`, `connect_timeout`, `timeout` (reply timeout), `retries`,
    /// `retry_base_delay`, `retry_max_delay`, `failover_timeout` (how long an operation waits
    /// for a server that is away, 30 s by default; `0s` turns it off), `tls` (`true` or
    /// `false`: TLS to every server of a `redis+sentinel://` or `redis+cluster://` URL),
    /// `tls_ca` (path of a PEM CA file), `read_from` (`primary` or `replicas`, see
    /// [`ReadFrom`]), `wait_replicas`, `wait_timeout`, `tcp_nodelay` (unset by default,
    /// see [`RedisConfigBuilder::tcp_nodelay`]). Any other parameter is a `Config` error.
    pub fn from_url(url: &str) -> Result<RedisConfig> {
        Self::from_state_url(&StateUrl::parse(url, &SCHEMES)?)
    }

    /// Like [`from_url`](Self::from_url), from an already parsed URL.
    pub fn from_state_url(url: &StateUrl) -> Result<RedisConfig> {
        let mut builder = RedisConfigBuilder::default();
        builder.apply_params(url)?;
        // Without its query (already applied), password included: kept inside the
        // builder only, for `build()` to parse the hosts and credentials again.
        builder.urls = vec![url.expose(false)];
        builder.build()
    }
}

impl RedisConfigBuilder {
    /// Sets the options named by the URL's query parameters, as the builder methods of the
    /// same names would at this point.
    pub(super) fn apply_params(&mut self, url: &StateUrl) -> Result<()> {
        url.check_params(&URL_PARAMS)?;
        if let Some(prefix) = url.key_prefix() {
            self.key_prefix = prefix.as_bytes().to_vec();
        }
        if let Some(ttl) = url.default_ttl()? {
            self.default_ttl = Some(ttl);
        }
        let (pool_min, pool_max) = (
            url.parse_param::<u32>("pool_min")?,
            url.parse_param::<u32>("pool_max")?,
        );
        if let Some(max) = pool_max {
            self.pool.1 = max as usize;
            if pool_min.is_none() {
                self.pool.0 = self.pool.0.min(max as usize);
            }
        }
        if let Some(min) = pool_min {
            self.pool.0 = min as usize;
            if pool_max.is_none() {
                self.pool.1 = self.pool.1.max(min as usize);
            }
        }
        if let Some(size) = url.parse_param::<usize>("pipeline_batch_size")? {
            self.pipeline_batch_size = size;
        }
        if let Some(d) = duration_param(url, "connect_timeout")? {
            self.connect_timeout = d;
        }
        if let Some(d) = duration_param(url, "timeout")? {
            self.response_timeout = d;
        }
        if let Some(retries) = url.parse_param::<u32>("retries")? {
            self.retry.max_attempts = retries.saturating_add(1);
        }
        if let Some(d) = duration_param(url, "retry_base_delay")? {
            self.retry.base_delay = d;
        }
        if let Some(d) = duration_param(url, "retry_max_delay")? {
            self.retry.max_delay = d;
        }
        if let Some(d) = duration_param(url, "failover_timeout")? {
            self.retry.failover_timeout = d;
        }
        if let Some(nodelay) = url.param("tcp_nodelay") {
            self.tcp_nodelay = match nodelay {
                "true" => Some(true),
                "false" => Some(false),
                other => {
                    return Err(StateError::config(format!(
                        "parameter `tcp_nodelay`: `{other}` is not `true` or `false`"
                    )));
                }
            };
        }
        if let Some(tls) = url.param("tls") {
            self.tls = Some(match tls {
                "true" => true,
                "false" => false,
                other => {
                    return Err(StateError::config(format!(
                        "parameter `tls`: `{other}` is not `true` or `false`"
                    )));
                }
            });
        }
        if let Some(read_from) = url.param("read_from") {
            self.read_from = match read_from {
                "primary" => ReadFrom::Primary,
                "replicas" => ReadFrom::Replicas,
                other => {
                    return Err(StateError::config(format!(
                        "parameter `read_from`: `{other}` is not `primary` or `replicas`"
                    )));
                }
            };
        }
        if let Some(path) = url.param("tls_ca") {
            let pem = std::fs::read(path).map_err(|e| {
                StateError::config(format!(
                    "parameter `tls_ca`: cannot read the CA file `{path}` ({e})"
                ))
            })?;
            self.tls_root_ca = Some(pem);
        }
        match (
            url.parse_param::<u32>("wait_replicas")?,
            duration_param(url, "wait_timeout")?,
        ) {
            (Some(replicas), timeout) => {
                self.wait = Some(WaitReplicas {
                    replicas,
                    timeout: timeout.unwrap_or(Duration::from_secs(1)),
                });
            }
            (None, Some(_)) => {
                return Err(StateError::config(
                    "parameter `wait_timeout` needs `wait_replicas` too",
                ));
            }
            (None, None) => {}
        }
        Ok(())
    }
}

fn duration_param(url: &StateUrl, name: &str) -> Result<Option<Duration>> {
    url.param(name)
        .map(|raw| {
            state_core::parse_duration(raw)
                .map_err(|e| StateError::config(format!("parameter `{name}`: {}", e.message())))
        })
        .transpose()
}
