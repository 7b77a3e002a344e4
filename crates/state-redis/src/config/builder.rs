//! [`RedisConfigBuilder`]: the options one by one, then `build()`, which checks them
//! together and names the bad field.

use std::fmt;
use std::time::Duration;

use state_core::{Limits, Result, RetryPolicy, Secret, StateError, StateUrl};

use super::scheme::{REDIS, REDIS_CLUSTER, REDIS_SENTINEL, REDISS, SCHEMES};

use super::{ReadFrom, RedisConfig, Topology, WaitReplicas};

impl RedisConfig {
    /// A builder with the defaults: one multiplexed connection, 3 attempts per operation,
    /// batches of 100 commands, 5 s to connect and 5 s per reply.
    pub fn builder() -> RedisConfigBuilder {
        RedisConfigBuilder::default()
    }
}

/// Builds a [`RedisConfig`]; see [`RedisConfig::builder`].
#[derive(Clone)]
pub struct RedisConfigBuilder {
    pub(super) urls: Vec<String>,
    pub(super) cluster_mode: Option<bool>,
    pub(super) sentinel_master: Option<String>,
    pub(super) tls: Option<bool>,
    pub(super) tls_root_ca: Option<Vec<u8>>,
    pub(super) username: Option<String>,
    pub(super) password: Option<Secret>,
    pub(super) db: Option<i64>,
    pub(super) key_prefix: Vec<u8>,
    pub(super) default_ttl: Option<Duration>,
    pub(super) pool: (usize, usize),
    pub(super) retry: RetryPolicy,
    pub(super) pipeline_batch_size: usize,
    pub(super) tcp_nodelay: Option<bool>,
    pub(super) connect_timeout: Duration,
    pub(super) response_timeout: Duration,
    pub(super) wait: Option<WaitReplicas>,
    pub(super) read_from: ReadFrom,
    pub(super) limits: Limits,
    /// The first error in the query parameters of a URL given to `urls`, for `build()`.
    pub(super) url_error: Option<String>,
    // A URL given with its scheme (sentinel/cluster) fixes the topology.
}

impl Default for RedisConfigBuilder {
    fn default() -> Self {
        RedisConfigBuilder {
            urls: Vec::new(),
            cluster_mode: None,
            sentinel_master: None,
            tls: None,
            tls_root_ca: None,
            username: None,
            password: None,
            db: None,
            key_prefix: Vec::new(),
            default_ttl: None,
            pool: (1, 1),
            retry: RetryPolicy::default(),
            pipeline_batch_size: 100,
            tcp_nodelay: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            wait: None,
            read_from: ReadFrom::Primary,
            limits: Limits::DEFAULT,
            url_error: None,
        }
    }
}

impl fmt::Debug for RedisConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry a password: show them parsed and redacted.
        let urls: Vec<String> = self
            .urls
            .iter()
            .map(|u| {
                StateUrl::parse(u, &SCHEMES)
                    .map(|p| p.redacted())
                    .unwrap_or_else(|_| "<unparsable url>".to_string())
            })
            .collect();
        f.debug_struct("RedisConfigBuilder")
            .field("urls", &urls)
            .field("cluster_mode", &self.cluster_mode)
            .field("sentinel_master", &self.sentinel_master)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field(
                "key_prefix",
                &String::from_utf8_lossy(&self.key_prefix).into_owned(),
            )
            .field("default_ttl", &self.default_ttl)
            .field("pool_size", &self.pool)
            .field("retry", &self.retry)
            .field("pipeline_batch_size", &self.pipeline_batch_size)
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("read_from", &self.read_from)
            .finish_non_exhaustive()
    }
}

impl RedisConfigBuilder {
    /// The server, Sentinel or seed-node URLs (`redis://` or `rediss://`, one host each).
    /// Several URLs need [`cluster_mode`](Self::cluster_mode) or
    /// [`sentinel_master`](Self::sentinel_master). Replaces earlier URLs.
    ///
    /// A URL's query parameters (those of [`RedisConfig::from_url`]) set their options
    /// here, as the builder methods would: methods called later override them. A bad
    /// parameter is reported by [`build`](Self::build).
    pub fn urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls = Vec::new();
        for raw in urls.into_iter().map(Into::into) {
            // An unparsable URL is kept as it is, for `build()` to report.
            match StateUrl::parse(&raw, &SCHEMES) {
                Ok(parsed) if !parsed.params().is_empty() => {
                    if let Err(e) = self.apply_params(&parsed)
                        && self.url_error.is_none()
                    {
                        self.url_error = Some(format!("urls: {}", e.message()));
                    }
                    self.urls.push(parsed.expose(false));
                }
                _ => self.urls.push(raw),
            }
        }
        self
    }

    /// One URL of any of the four schemes; a `redis+sentinel://` or `redis+cluster://` URL
    /// also selects the topology. Replaces earlier URLs.
    pub fn url(self, url: impl Into<String>) -> Self {
        self.urls([url.into()])
    }

    /// Treats the URLs as seed nodes of a Redis Cluster.
    pub fn cluster_mode(mut self, enabled: bool) -> Self {
        self.cluster_mode = Some(enabled);
        self
    }

    /// Treats the URLs as Sentinels and connects to the primary they know as `name`.
    pub fn sentinel_master(mut self, name: impl Into<String>) -> Self {
        self.sentinel_master = Some(name.into());
        self
    }

    /// Requires (`true`) or forbids (`false`) TLS. It must agree with the URLs' scheme
    /// (`rediss://` is TLS); unset, the scheme decides. For `redis+sentinel://` and
    /// `redis+cluster://` URLs (URL parameter `tls=true`), it means TLS to every server:
    /// the Sentinels and the data nodes they name, or every Cluster node.
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = Some(enabled);
        self
    }

    /// Trusts only this PEM-encoded CA for TLS, instead of the system's roots.
    pub fn tls_root_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_ca = Some(pem.into());
        self
    }

    /// The ACL user name (Redis 6+); needs a password.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// The password (`AUTH`). Never shown by `Debug`, errors or logs.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(Secret::new(password));
        self
    }

    /// The database index (standalone and Sentinel only; Cluster has only database 0).
    pub fn db(mut self, db: i64) -> Self {
        self.db = Some(db);
        self
    }

    /// Namespaces every key under `prefix` (end it with a separator such as `:`).
    pub fn key_prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.key_prefix = prefix.as_ref().to_vec();
        self
    }

    /// A TTL applied by `put` and the other writes without their own TTL.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The number of multiplexed connections: `min` are opened (and must succeed) in
    /// [`RedisStateBackend::new`](crate::RedisStateBackend::new); up to `max` are used,
    /// round-robin, the others opened on first use.
    ///
    /// One multiplexed connection already pipelines every concurrent request, so this is
    /// not a pool of exclusive connections: more connections spread the work of encoding
    /// and decoding over more tasks and more server threads of I/O.
    pub fn pool_size(mut self, min: u32, max: u32) -> Self {
        self.pool = (min as usize, max as usize);
        self
    }

    /// Retries of retryable errors (connection, timeout, unavailable): `max_retries` after
    /// the first attempt, with exponential backoff from `base_delay` capped at `max_delay`,
    /// with jitter.
    pub fn retries(mut self, max_retries: u32, base_delay: Duration, max_delay: Duration) -> Self {
        self.retry = RetryPolicy {
            failover_timeout: self.retry.failover_timeout,
            ..RetryPolicy::new(max_retries, base_delay, max_delay)
        };
        self
    }

    /// The full retry policy, for control over the total time too.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// How long an operation waits for a server that is away (a Sentinel or Cluster failover
    /// in progress, a restart) before it reports the error: 30 s by default, zero to report
    /// at once. Only what may be sent again waits (see [`RetryPolicy`]).
    pub fn failover_timeout(mut self, timeout: Duration) -> Self {
        self.retry.failover_timeout = timeout;
        self
    }

    /// How many commands one pipeline round trip carries in batch operations, scans and
    /// restores.
    pub fn pipeline_batch_size(mut self, size: usize) -> Self {
        self.pipeline_batch_size = size;
        self
    }

    /// `TCP_NODELAY` on every write (`true`, as fred, Lettuce and Jedis do) or on none
    /// (`false`, Nagle's algorithm merges small writes, as the `redis` crate does). Unset,
    /// the default, standalone and Sentinel connections over plain TCP on Linux decide by
    /// load and by trial: with 12 or more requests waiting for replies on a connection
    /// (until fewer than 8 wait), it writes in turns merged and at once, and keeps the way
    /// whose requests wait less (on some machines merging pays, on others it idles both
    /// sides); with fewer, each write goes at once. The rest of a write the kernel took
    /// only in part always goes at once, so no request waits out the server's delayed ACK (`conn/nagle.rs` says why).
    /// TLS, Unix-socket and Cluster connections, opened by the driver, and every connection
    /// on other systems, then use `TCP_NODELAY`.
    pub fn tcp_nodelay(mut self, on: bool) -> Self {
        self.tcp_nodelay = Some(on);
        self
    }

    /// How long establishing a connection may take.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one reply may take; a timeout leaves the outcome of a write unknown.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// After every write, waits until `replicas` replicas acknowledge it (`WAIT`), up to
    /// `timeout`; fewer acknowledgements make the write fail with an `Unavailable` error
    /// whose outcome is unknown. Survives a primary's crash at the cost of a round trip to
    /// the replicas per write.
    pub fn wait_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = Some(WaitReplicas { replicas, timeout });
        self
    }

    /// Which servers answer `get`, `batch_get` and `ttl`: the primary (default) or the
    /// replicas (Sentinel and Cluster only). See [`ReadFrom`] for the staleness this buys.
    pub fn read_from(mut self, read_from: ReadFrom) -> Self {
        self.read_from = read_from;
        self
    }

    /// Key and value size limits, checked before anything is sent.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Checks the options and builds the configuration; the error names the bad field.
    pub fn build(self) -> Result<RedisConfig> {
        if let Some(message) = self.url_error {
            return Err(StateError::config(message));
        }
        if self.urls.is_empty() {
            return Err(StateError::config(
                "urls: no server given; call .url(\"redis://host:6379\") or .urls([...])",
            ));
        }
        let mut hosts = Vec::new();
        let mut schemes = Vec::new();
        let mut username = self.username.clone();
        let mut password = self.password.clone();
        let mut db = self.db;
        let mut url_master = None;
        let mut url_topology = None;
        for raw in &self.urls {
            let url = StateUrl::parse(raw, &SCHEMES)
                .map_err(|e| StateError::config(format!("urls: {}", e.message())))?;
            let scheme = url.scheme();
            if scheme == REDIS_SENTINEL || scheme == REDIS_CLUSTER {
                if self.urls.len() > 1 {
                    return Err(StateError::config(format!(
                        "urls: `{}` is a {scheme} URL; give redis:// or rediss:// URLs, or a \
                         single redis+sentinel:// or redis+cluster:// URL",
                        url.redacted()
                    )));
                }
                url_topology = Some(scheme);
                if scheme == REDIS_SENTINEL {
                    url_master = url.path().map(str::to_string);
                } else if let Some(path) = url.path() {
                    return Err(StateError::config(format!(
                        "urls: a redis+cluster URL has no path (got `/{path}`); Cluster \
                         has only database 0"
                    )));
                }
            }
            schemes.push(url.scheme());
            if let Some(user) = url.username() {
                merge_field(&mut username, user.to_string(), "username")?;
            }
            if let Some(pass) = url.password() {
                if password.as_ref().is_some_and(|p| p != pass) {
                    return Err(StateError::config(
                        "password: the URLs carry different passwords; give one",
                    ));
                }
                password = Some(pass.clone());
            }
            if (scheme == REDIS || scheme == REDISS)
                && let Some(path) = url.path()
            {
                let index = path.parse::<i64>().map_err(|_| {
                    StateError::config(format!(
                        "db: the URL path `/{path}` is not a database index"
                    ))
                })?;
                if db.is_some_and(|d| d != index) {
                    return Err(StateError::config(format!(
                        "db: the URLs name database {index} and {}; give one",
                        db.unwrap_or_default()
                    )));
                }
                db = Some(index);
            }
            hosts.extend(url.hosts().iter().cloned());
        }
        let scheme_tls = schemes.contains(&REDISS);
        if scheme_tls && schemes.contains(&REDIS) {
            return Err(StateError::config(
                "tls: some URLs are rediss:// and some redis://; use one scheme",
            ));
        }
        let tls = match self.tls {
            Some(true) if !scheme_tls => {
                // Sentinel and Cluster URLs have no TLS scheme of their own.
                if url_topology.is_none() {
                    return Err(StateError::config(
                        "tls: tls(true) contradicts the plain redis:// URL; use rediss:// for TLS",
                    ));
                }
                true
            }
            Some(false) if scheme_tls => {
                return Err(StateError::config(
                    "tls: tls(false) contradicts the rediss:// URL; use redis:// without TLS",
                ));
            }
            Some(t) => t,
            None => scheme_tls,
        };
        if self.tls_root_ca.is_some() && !tls {
            return Err(StateError::config(
                "tls_root_ca: a CA is given but TLS is off; use rediss://, the URL parameter \
                 tls=true (Sentinel, Cluster) or tls(true)",
            ));
        }
        let cluster = match (self.cluster_mode, url_topology) {
            (Some(false), Some(topology)) if topology == REDIS_CLUSTER => {
                return Err(StateError::config(
                    "cluster_mode: cluster_mode(false) contradicts the redis+cluster:// URL",
                ));
            }
            (Some(c), _) => c,
            (None, t) => t == Some(REDIS_CLUSTER),
        };
        let master = match (&self.sentinel_master, url_master) {
            (Some(a), Some(b)) if *a != b => {
                return Err(StateError::config(format!(
                    "sentinel_master: `{a}` contradicts the URL's master name `{b}`"
                )));
            }
            (Some(a), _) => Some(a.clone()),
            (None, b) => b,
        };
        let topology = if url_topology == Some(REDIS_SENTINEL) || master.is_some() {
            if cluster {
                return Err(StateError::config(
                    "cluster_mode: Cluster and Sentinel exclude each other; pick one",
                ));
            }
            match master {
                Some(name) if !name.is_empty() => Topology::Sentinel { master_name: name },
                _ => {
                    return Err(StateError::config(
                        "sentinel_master: Sentinel needs the master name; write \
                         redis+sentinel://host:26379/MASTER_NAME or call .sentinel_master(name)",
                    ));
                }
            }
        } else if cluster {
            Topology::Cluster
        } else {
            Topology::Standalone
        };
        if topology == Topology::Standalone && hosts.len() > 1 {
            return Err(StateError::config(format!(
                "urls: {} servers given for a standalone server; several URLs need \
                 cluster_mode(true) or sentinel_master(name)",
                hosts.len()
            )));
        }
        if topology == Topology::Standalone && self.read_from == ReadFrom::Replicas {
            return Err(StateError::config(
                "read_from: replicas needs a Sentinel or Cluster deployment (a standalone \
                 URL names one server); use redis+sentinel:// or redis+cluster://, or drop it",
            ));
        }
        let db = db.unwrap_or(0);
        if topology == Topology::Cluster && db != 0 {
            return Err(StateError::config(format!(
                "db: Redis Cluster has only database 0, not {db}; remove the db index"
            )));
        }
        if db < 0 {
            return Err(StateError::config(format!(
                "db: {db} is not a database index"
            )));
        }
        if username.is_some() && password.is_none() {
            return Err(StateError::config(
                "username: a user name needs a password; give both or neither",
            ));
        }
        if let Some(ttl) = self.default_ttl {
            state_core::ttl_millis(ttl)
                .map_err(|e| StateError::config(format!("default_ttl: {}", e.message())))?;
        }
        let (pool_min, pool_max) = self.pool;
        if pool_min == 0 || pool_min > pool_max || pool_max > 256 {
            return Err(StateError::config(format!(
                "pool_size: ({pool_min}, {pool_max}) is not valid; use 1 <= min <= max <= 256"
            )));
        }
        if self.pipeline_batch_size == 0 || self.pipeline_batch_size > 100_000 {
            return Err(StateError::config(format!(
                "pipeline_batch_size: {} is not valid; use 1 to 100000",
                self.pipeline_batch_size
            )));
        }
        self.retry
            .validate()
            .map_err(|e| StateError::config(format!("retries: {}", e.message())))?;
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
        ] {
            if value.is_zero() {
                return Err(StateError::config(format!(
                    "{name}: zero; use a positive duration"
                )));
            }
        }
        if let Some(wait) = self.wait
            && (wait.replicas == 0 || wait.timeout.is_zero())
        {
            return Err(StateError::config(
                "wait_replicas: needs at least 1 replica and a positive timeout \
                 (WAIT with timeout 0 would block forever)",
            ));
        }
        if self.limits.max_key_len == 0 || self.limits.max_value_len > 512 * 1024 * 1024 {
            return Err(StateError::config(
                "limits: max_key_len must be at least 1 and max_value_len at most 512 MiB \
                 (Redis' string limit)",
            ));
        }
        Ok(RedisConfig {
            hosts,
            topology,
            tls,
            tls_root_ca: self.tls_root_ca,
            username,
            password,
            db,
            key_prefix: self.key_prefix,
            default_ttl: self.default_ttl,
            pool_min,
            pool_max,
            retry: self.retry,
            pipeline_batch_size: self.pipeline_batch_size,
            tcp_nodelay: self.tcp_nodelay,
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            wait: self.wait,
            read_from: self.read_from,
            limits: self.limits,
        })
    }
}

fn merge_field(slot: &mut Option<String>, value: String, field: &str) -> Result<()> {
    match slot {
        Some(old) if *old != value => Err(StateError::config(format!(
            "{field}: the URLs and options give different values (`{old}` and `{value}`); give one"
        ))),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}
