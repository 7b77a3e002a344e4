//! [`RedisConfig`]: where the servers are and how to talk to them, validated in `build()`.

use std::fmt;
use std::time::Duration;

use state_core::{HostPort, Limits, Result, RetryPolicy, Scheme, Secret, StateError, StateUrl};

/// How the backend finds its server(s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topology {
    /// One server (`redis://` or `rediss://`).
    Standalone,
    /// A primary found through these Sentinels by the master name (`redis+sentinel://`).
    Sentinel {
        /// The name the Sentinels monitor the primary under (`sentinel monitor NAME …`).
        master_name: String,
    },
    /// A Redis Cluster reached through any of the seed nodes (`redis+cluster://`).
    Cluster,
}

/// Replication acknowledgement required before a write is reported as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    /// How many replicas must have the write (`WAIT numreplicas`).
    pub replicas: u32,
    /// How long to wait for them (`WAIT … timeout`).
    pub timeout: Duration,
}

/// The parameters a Redis URL may carry besides `prefix` and `ttl`.
pub const URL_PARAMS: [&str; 12] = [
    "pool_min",
    "pool_max",
    "pipeline_batch_size",
    "connect_timeout",
    "timeout",
    "retries",
    "retry_base_delay",
    "retry_max_delay",
    "failover_timeout",
    "tls_ca",
    "wait_replicas",
    "wait_timeout",
];

/// The validated configuration of a [`RedisStateBackend`](crate::RedisStateBackend).
///
/// Build it with [`RedisConfig::builder`] or [`RedisConfig::from_url`]. Every option
/// changes behaviour; contradictory options are a [`Config`](state_core::ErrorKind::Config)
/// error naming the field. `Debug` never shows the password.
///
/// ```
/// use state_redis::RedisConfig;
/// use std::time::Duration;
///
/// let config = RedisConfig::builder()
///     .url("redis://localhost:6379")
///     .key_prefix("optimizer:")
///     .default_ttl(Duration::from_secs(3600))
///     .pool_size(2, 8)
///     .retries(5, Duration::from_millis(100), Duration::from_secs(5))
///     .pipeline_batch_size(100)
///     .build()?;
/// assert_eq!(config.pool_max(), 8);
///
/// let config = RedisConfig::from_url("redis+sentinel://s1:26379,s2:26379/mymaster?prefix=app:")?;
/// assert_eq!(config.hosts().len(), 2);
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) hosts: Vec<HostPort>,
    pub(crate) topology: Topology,
    pub(crate) tls: bool,
    pub(crate) tls_root_ca: Option<Vec<u8>>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<Secret>,
    pub(crate) db: i64,
    pub(crate) key_prefix: Vec<u8>,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) pool_min: usize,
    pub(crate) pool_max: usize,
    pub(crate) retry: RetryPolicy,
    pub(crate) pipeline_batch_size: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) wait: Option<WaitReplicas>,
    pub(crate) limits: Limits,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hosts: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        f.debug_struct("RedisConfig")
            .field("hosts", &hosts)
            .field("topology", &self.topology)
            .field("tls", &self.tls)
            .field("tls_root_ca", &self.tls_root_ca.as_ref().map(|_| "<pem>"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("db", &self.db)
            .field(
                "key_prefix",
                &String::from_utf8_lossy(&self.key_prefix).into_owned(),
            )
            .field("default_ttl", &self.default_ttl)
            .field("pool_size", &(self.pool_min, self.pool_max))
            .field("retry", &self.retry)
            .field("pipeline_batch_size", &self.pipeline_batch_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("wait", &self.wait)
            .field("limits", &self.limits)
            .finish()
    }
}

impl RedisConfig {
    /// A builder with the defaults: one multiplexed connection, 3 attempts per operation,
    /// batches of 100 commands, 5 s to connect and 5 s per reply.
    pub fn builder() -> RedisConfigBuilder {
        RedisConfigBuilder::default()
    }

    /// Parses `redis://`, `rediss://`, `redis+sentinel://` and `redis+cluster://` URLs.
    ///
    /// Parameters: `prefix`, `ttl` (humantime), `pool_min`, `pool_max`,
    /// `pipeline_batch_size`, `connect_timeout`, `timeout` (reply timeout), `retries`,
    /// `retry_base_delay`, `retry_max_delay`, `failover_timeout` (how long an operation waits
    /// for a server that is away, 30 s by default; `0s` turns it off), `tls_ca` (path of a
    /// PEM CA file), `wait_replicas`, `wait_timeout`. Any other parameter is a `Config` error.
    pub fn from_url(url: &str) -> Result<RedisConfig> {
        Self::from_state_url(&StateUrl::parse(url)?)
    }

    /// Like [`from_url`](Self::from_url), from an already parsed URL.
    pub fn from_state_url(url: &StateUrl) -> Result<RedisConfig> {
        RedisConfigBuilder::default().apply_url(url)?.build()
    }

    /// The server (standalone), Sentinel or seed addresses.
    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    /// Standalone, Sentinel or Cluster.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The key prefix every key is stored under.
    pub fn key_prefix(&self) -> &[u8] {
        &self.key_prefix
    }

    /// How many multiplexed connections are opened at start.
    pub fn pool_min(&self) -> usize {
        self.pool_min
    }

    /// How many multiplexed connections operations are spread over, round-robin.
    pub fn pool_max(&self) -> usize {
        self.pool_max
    }

    /// The retry policy for retryable errors.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Whether connections use TLS.
    pub fn tls(&self) -> bool {
        self.tls
    }

    /// A one-line description of where the backend connects, without any password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        let scheme = match (&self.topology, self.tls) {
            (Topology::Standalone, false) => "redis",
            (Topology::Standalone, true) => "rediss",
            (Topology::Sentinel { .. }, _) => "redis+sentinel",
            (Topology::Cluster, _) => "redis+cluster",
        };
        let mut out = format!("{scheme}://{}", hosts.join(","));
        match &self.topology {
            Topology::Sentinel { master_name } => out.push_str(&format!("/{master_name}")),
            Topology::Standalone if self.db != 0 => out.push_str(&format!("/{}", self.db)),
            _ => {}
        }
        out
    }
}

/// Builds a [`RedisConfig`]; see [`RedisConfig::builder`].
#[derive(Clone)]
pub struct RedisConfigBuilder {
    urls: Vec<String>,
    cluster_mode: Option<bool>,
    sentinel_master: Option<String>,
    tls: Option<bool>,
    tls_root_ca: Option<Vec<u8>>,
    username: Option<String>,
    password: Option<Secret>,
    db: Option<i64>,
    key_prefix: Vec<u8>,
    default_ttl: Option<Duration>,
    pool: (usize, usize),
    retry: RetryPolicy,
    pipeline_batch_size: usize,
    connect_timeout: Duration,
    response_timeout: Duration,
    wait: Option<WaitReplicas>,
    limits: Limits,
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
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            wait: None,
            limits: Limits::DEFAULT,
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
                StateUrl::parse(u)
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
            .finish_non_exhaustive()
    }
}

impl RedisConfigBuilder {
    /// The server, Sentinel or seed-node URLs (`redis://` or `rediss://`, one host each).
    /// Several URLs need [`cluster_mode`](Self::cluster_mode) or
    /// [`sentinel_master`](Self::sentinel_master). Replaces earlier URLs.
    pub fn urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls = urls.into_iter().map(Into::into).collect();
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
    /// (`rediss://` is TLS); unset, the scheme decides.
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

    /// Key and value size limits, checked before anything is sent.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    fn apply_url(mut self, url: &StateUrl) -> Result<Self> {
        url.check_params(&URL_PARAMS)?;
        // The real URL (with password) stays inside the builder, never printed.
        // Without its query (already applied), password included: kept inside the
        // builder only, for `build()` to parse the hosts and credentials again.
        self.urls = vec![url.expose(false)];
        if let Some(prefix) = url.key_prefix() {
            self.key_prefix = prefix.as_bytes().to_vec();
        }
        self.default_ttl = url.default_ttl()?;
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
        Ok(self)
    }

    /// Checks the options and builds the configuration; the error names the bad field.
    pub fn build(self) -> Result<RedisConfig> {
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
            let url = StateUrl::parse(raw)?;
            match url.scheme() {
                Scheme::Redis | Scheme::Rediss => {}
                Scheme::RedisSentinel | Scheme::RedisCluster if self.urls.len() == 1 => {
                    url_topology = Some(url.scheme());
                    if url.scheme() == Scheme::RedisSentinel {
                        url_master = url.path().map(str::to_string);
                    } else if let Some(path) = url.path() {
                        return Err(StateError::config(format!(
                            "urls: a redis+cluster URL has no path (got `/{path}`); Cluster \
                             has only database 0"
                        )));
                    }
                }
                other => {
                    return Err(StateError::config(format!(
                        "urls: `{}` is a {other} URL; give redis:// or rediss:// URLs, or a \
                         single redis+sentinel:// or redis+cluster:// URL",
                        url.redacted()
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
            if matches!(url.scheme(), Scheme::Redis | Scheme::Rediss)
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
        let scheme_tls = schemes.contains(&Scheme::Rediss);
        if scheme_tls && schemes.contains(&Scheme::Redis) {
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
                "tls_root_ca: a CA is given but TLS is off; use rediss:// or tls(true)",
            ));
        }
        let cluster = match (self.cluster_mode, url_topology) {
            (Some(false), Some(Scheme::RedisCluster)) => {
                return Err(StateError::config(
                    "cluster_mode: cluster_mode(false) contradicts the redis+cluster:// URL",
                ));
            }
            (Some(c), _) => c,
            (None, t) => t == Some(Scheme::RedisCluster),
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
        let topology = if url_topology == Some(Scheme::RedisSentinel) || master.is_some() {
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
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
            wait: self.wait,
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

fn duration_param(url: &StateUrl, name: &str) -> Result<Option<Duration>> {
    url.param(name)
        .map(|raw| {
            state_core::parse_duration(raw)
                .map_err(|e| StateError::config(format!("parameter `{name}`: {}", e.message())))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    fn err(builder: RedisConfigBuilder) -> String {
        match builder.build() {
            Ok(c) => panic!("built {c:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Config, "{e}");
                e.to_string()
            }
        }
    }

    fn url_err(url: &str) -> String {
        match RedisConfig::from_url(url) {
            Ok(c) => panic!("{url} built {c:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Config, "{e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn the_guides_builders_build() -> Result<()> {
        let c = RedisConfig::builder()
            .urls([
                "redis://s1:26379".to_string(),
                "redis://s2:26379".to_string(),
                "redis://s3:26379".to_string(),
            ])
            .sentinel_master("mymaster")
            .key_prefix("optimizer:")
            .default_ttl(Duration::from_secs(3600))
            .pool_size(10, 50)
            .retries(5, Duration::from_millis(100), Duration::from_secs(5))
            .build()?;
        assert_eq!(c.hosts().len(), 3);
        assert_eq!(c.retry.max_attempts, 6);
        assert_eq!((c.pool_min, c.pool_max), (10, 50));
        let c = RedisConfig::builder()
            .urls((0..6).map(|i| format!("redis://node{i}:700{i}")))
            .cluster_mode(true)
            .pool_size(20, 100)
            .build()?;
        assert_eq!(c.topology, Topology::Cluster);
        let c = RedisConfig::builder()
            .url("rediss://localhost:6380")
            .tls(true)
            .build()?;
        assert!(c.tls);
        Ok(())
    }

    #[test]
    fn every_scheme_parses_with_its_parameters() -> Result<()> {
        let c = RedisConfig::from_url(
            "redis://u:p%40ss@h:6380/2?prefix=a:&ttl=1500ms&pool_max=4&pipeline_batch_size=7&timeout=2s&connect_timeout=1s&retries=0",
        )?;
        assert_eq!(c.db, 2);
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(c.key_prefix, b"a:");
        assert_eq!(c.default_ttl, Some(Duration::from_millis(1500)));
        assert_eq!((c.pool_min, c.pool_max), (1, 4));
        assert_eq!(c.pipeline_batch_size, 7);
        assert_eq!(c.response_timeout, Duration::from_secs(2));
        assert_eq!(c.retry.max_attempts, 1);
        let c = RedisConfig::from_url("rediss://h")?;
        assert!(c.tls);
        let c = RedisConfig::from_url("redis+sentinel://a,b:26380/mymaster?wait_replicas=1")?;
        assert_eq!(
            c.topology,
            Topology::Sentinel {
                master_name: "mymaster".into()
            }
        );
        assert_eq!(c.hosts[0].port, 26379);
        assert_eq!(c.wait.map(|w| w.replicas), Some(1));
        let c = RedisConfig::from_url("redis+cluster://n1:7000,n2:7001")?;
        assert_eq!(c.topology, Topology::Cluster);
        Ok(())
    }

    #[test]
    fn contradictions_are_config_errors_naming_the_field() {
        assert!(url_err("redis://h?colour=blue").contains("`colour`"));
        assert!(url_err("redis+sentinel://h:26379").contains("sentinel_master"));
        assert!(url_err("redis+cluster://h:7000/3").contains("database 0"));
        assert!(url_err("redis://h?pipeline_batch_size=0").contains("pipeline_batch_size"));
        assert!(url_err("redis://h?pool_min=5&pool_max=2").contains("pool_size"));
        assert!(url_err("redis://h?ttl=0s").contains("default_ttl"));
        assert!(url_err("redis://h/x").contains("db"));
        assert!(url_err("redis://h?wait_timeout=1s").contains("wait_replicas"));
        let b = || RedisConfig::builder().url("redis://h:1");
        assert!(err(b().tls(true)).contains("tls"));
        assert!(err(b().cluster_mode(true).db(2)).contains("db"));
        assert!(err(b().pipeline_batch_size(0)).contains("pipeline_batch_size"));
        assert!(err(b().pool_size(0, 4)).contains("pool_size"));
        assert!(err(b().username("u")).contains("username"));
        assert!(err(b().tls_root_ca_pem(b"x".to_vec())).contains("tls_root_ca"));
        assert!(err(b().cluster_mode(true).sentinel_master("m")).contains("cluster_mode"));
        assert!(err(b().connect_timeout(Duration::ZERO)).contains("connect_timeout"));
        assert!(err(b().wait_replicas(0, Duration::from_secs(1))).contains("wait_replicas"));
        assert!(
            err(b().retries(1, Duration::from_secs(9), Duration::from_secs(1))).contains("retries")
        );
        assert!(err(RedisConfig::builder()).contains("urls"));
        assert!(err(RedisConfig::builder().urls(["redis://a", "redis://b"])).contains("urls"));
        assert!(err(RedisConfig::builder().urls(["redis://a", "rediss://b"])).contains("tls"));
        assert!(err(RedisConfig::builder().url("rediss://a").tls(false)).contains("tls"));
        assert!(err(RedisConfig::builder().url("postgres://a/b")).contains("urls"));
    }

    #[test]
    fn debug_never_shows_the_password() -> Result<()> {
        let c = RedisConfig::from_url("redis://admin:hunter2@h:1/0")?;
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
        let b = RedisConfig::builder()
            .url("redis://admin:hunter2@h:1")
            .password("hunter3");
        let shown = format!("{b:?}");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(!c.describe().contains("hunter"));
        Ok(())
    }
}
