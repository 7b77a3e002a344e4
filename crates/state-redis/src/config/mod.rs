//! [`RedisConfig`]: where the servers are and how to talk to them, validated in `build()`.
//!
//! The type and what it tells are here; the builder and its validation in `builder`, the
//! URL parameters in `url`.

use std::fmt;
use std::time::Duration;

use state_core::{HostPort, Limits, RetryPolicy, Secret};

pub(crate) mod builder;
pub(crate) mod scheme;
pub(crate) mod url;

#[cfg(test)]
mod tests;

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

/// Which servers answer the point reads `get`, `batch_get` and `ttl`
/// (`read_from=primary|replicas`, [`RedisConfigBuilder::read_from`](crate::RedisConfigBuilder::read_from)).
///
/// Replica reads spread the read load over the replicas, at the price of staleness: Redis
/// replicates asynchronously, so a read from a replica may not see the caller's own last
/// write (nor anyone else's), and two reads in a row may go to different replicas and see
/// the data go back in time. Writes, scans (`scan`, `count`, `export`, `checkpoint`,
/// `clear`) and every conditional operation always go to the primary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReadFrom {
    /// Every command goes to the primary (the default): reads see every acknowledged write.
    #[default]
    Primary,
    /// Point reads go to a replica: for Sentinel, one the Sentinels list as healthy (chosen
    /// at random per connection; the primary when they list none); for Cluster, a random
    /// replica of the key's slot (its master when the slot has no replica).
    Replicas,
}

/// Replication acknowledgement required before a write is reported as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitReplicas {
    /// How many replicas must have the write (`WAIT numreplicas`).
    pub replicas: u32,
    /// How long to wait for them (`WAIT … timeout`).
    pub timeout: Duration,
}

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
    pub(crate) tcp_nodelay: Option<bool>,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) wait: Option<WaitReplicas>,
    pub(crate) read_from: ReadFrom,
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
            .field("tcp_nodelay", &self.tcp_nodelay)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("wait", &self.wait)
            .field("read_from", &self.read_from)
            .field("limits", &self.limits)
            .finish()
    }
}

impl RedisConfig {
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

    /// Which servers answer point reads.
    pub fn read_from(&self) -> ReadFrom {
        self.read_from
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
