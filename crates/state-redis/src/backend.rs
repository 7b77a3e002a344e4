//! [`RedisStateBackend`]'s own API: connecting, what the backend tells about itself and
//! its servers, scripts as a public building block, and how keys are checked and prefixed.
//! The type and the driver core are in `driver`; the
//! [`StateBackend`](state_core::StateBackend) operations in `ops`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::BufMut;
use redis::{Arg, Cmd, RedisWrite, Value};
use state_core::{Gauge, Idempotency, Result, StateError};

use crate::config::RedisConfig;
use crate::conn::Pool;
use crate::driver::{Inner, RedisStateBackend};
use crate::keys;
use crate::reply::{info_field, info_text, info_u64, text_of};
use crate::scripts::Script;

/// What one server reports about itself ([`RedisStateBackend::server_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's address (for standalone and Sentinel: the configured target).
    pub address: String,
    /// `redis_version`.
    pub version: String,
    /// `role`: master or slave.
    pub role: String,
    /// `used_memory`, in bytes.
    pub used_memory: u64,
    /// `connected_clients`.
    pub connected_clients: u64,
    /// `connected_slaves`: replicas attached to this node.
    pub connected_replicas: u64,
}

impl RedisStateBackend {
    /// Connects (opening `pool_min` connections) and checks the server version: Redis 6.2
    /// or later is required (GETDEL, SET PXAT).
    pub async fn new(config: RedisConfig) -> Result<RedisStateBackend> {
        let pool = Pool::connect(&config).await?;
        let backend = RedisStateBackend {
            inner: Arc::new(Inner {
                config,
                pool,
                retries: AtomicU64::new(0),
            }),
        };
        backend.check_version().await?;
        Ok(backend)
    }

    /// Builds from a URL (see [`RedisConfig::from_url`]) and connects.
    pub async fn from_url(url: &str) -> Result<RedisStateBackend> {
        Self::new(RedisConfig::from_url(url)?).await
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Bytes of memory the server(s) use (`INFO memory` `used_memory`, summed over every
    /// Cluster master).
    pub async fn memory_usage(&self) -> Result<u64> {
        let nodes = self.server_info().await?;
        Ok(nodes.iter().map(|n| n.used_memory).sum())
    }

    /// `INFO` of every node that holds data.
    pub async fn server_info(&self) -> Result<Vec<NodeInfo>> {
        self.node_infos().await
    }

    /// Runs `script` atomically on `keys` with `args` and returns its reply: the building
    /// block for atomic operations the [`StateBackend`](state_core::StateBackend) trait
    /// lacks (the Redis lock of `state-lock` is built on it).
    ///
    /// The request is handled like every operation of this backend: `EVALSHA`, with one
    /// `EVAL` when the server answers `NOSCRIPT`; the retry policy; reconnection (a
    /// Sentinel deployment asks the Sentinels for the new primary); Cluster routing by the
    /// keys' slot, following `MOVED`/`ASK`; `WAIT` when `wait_replicas` is configured.
    ///
    /// - `keys` are this backend's keys, as for [`get`](state_core::StateBackend::get): the
    ///   key prefix goes in front and the key limits apply. There must be at least one, and
    ///   all must hash to one Cluster slot (give them a common hash tag, `{…}`) in every
    ///   topology, so that a script that runs on a standalone server also runs on a Cluster;
    ///   otherwise the error is `InvalidInput` and nothing is sent.
    /// - `idempotency` tells the retry policy whether the script may be sent again after a
    ///   lost reply (when the first attempt may have run): pass
    ///   [`Idempotency::Idempotent`] only if running it twice has the effect of running it
    ///   once.
    /// - `what` names the operation in error messages. An error raised by the script is a
    ///   `Backend` error with the server's message.
    ///
    /// ```no_run
    /// use state_redis::{Idempotency, RedisStateBackend, Script, redis::Value};
    ///
    /// static INCR_BY: Script = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    /// # async fn demo(backend: RedisStateBackend) -> state_core::Result<()> {
    /// let reply = backend
    ///     .eval_script("add", Idempotency::NotIdempotent, &INCR_BY, &[&b"{c}:n"[..]], &[&b"2"[..]])
    ///     .await?;
    /// assert!(matches!(reply, Value::Int(_)));
    /// # Ok(()) }
    /// ```
    pub async fn eval_script(
        &self,
        what: &str,
        idempotency: Idempotency,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value> {
        let fulls = keys
            .iter()
            .map(|k| self.full_key(k))
            .collect::<Result<Vec<_>>>()?;
        let Some(slot) = fulls.first().map(|k| keys::slot(k)) else {
            return Err(StateError::invalid_input(format!(
                "{what}: the script declares no key; pass the keys it touches (they \
                     route it to its Cluster node)"
            )));
        };
        if fulls.iter().any(|k| keys::slot(k) != slot) {
            return Err(StateError::invalid_input(format!(
                "{what}: the script's keys hash to different Cluster slots; give them \
                     a common hash tag such as `{{name}}`"
            )));
        }
        let fulls: Vec<&[u8]> = fulls.iter().map(Vec::as_slice).collect();
        self.eval(what, idempotency, script, &fulls, args).await
    }

    async fn node_infos(&self) -> Result<Vec<NodeInfo>> {
        let replies = self.info_replies().await?;
        Ok(replies
            .into_iter()
            .map(|(node, info)| parse_info(node, &text_of(&info)))
            .collect())
    }

    /// `INFO` of every node that holds data (the Cluster masters), with each node's name.
    async fn info_replies(&self) -> Result<Vec<(String, redis::Value)>> {
        let masters = self.masters().await?;
        let info_cmd = redis::cmd("INFO");
        let mut out = Vec::with_capacity(masters.len());
        for node in &masters {
            let info = self
                .retry(Idempotency::Idempotent, "INFO", || {
                    self.inner.pool.query_node(node, &info_cmd)
                })
                .await?;
            out.push((node.describe(&self.inner.pool), info));
        }
        Ok(out)
    }

    /// The figures of [`gauges`](state_core::StateBackend::gauges): `used_memory` and
    /// `connected_clients` of `INFO`, summed over the nodes that hold data (replicas are
    /// not counted). Unlike [`server_info`](Self::server_info), a reply without them is an
    /// error: a gauge must not read 0 for "unknown".
    pub(crate) async fn info_gauges(&self) -> Result<Vec<Gauge>> {
        let (mut memory, mut clients) = (0u64, 0u64);
        for (node, info) in self.info_replies().await? {
            let what = format!("INFO of {node}");
            let text = info_text(&what, &info)?;
            memory = memory.saturating_add(info_u64(&what, text, "used_memory")?);
            clients = clients.saturating_add(info_u64(&what, text, "connected_clients")?);
        }
        Ok(vec![
            Gauge::new("redis_memory_used_bytes", memory as f64),
            Gauge::new("redis_connected_clients", clients as f64),
        ])
    }

    async fn check_version(&self) -> Result<()> {
        let nodes = self.node_infos().await?;
        for node in nodes {
            let mut parts = node
                .version
                .split('.')
                .map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if (major, minor) < (6, 2) {
                return Err(StateError::config(format!(
                    "{} runs Redis {}; this backend needs Redis 6.2 or later (GETDEL, SET PXAT)",
                    node.address, node.version
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn prefix(&self) -> &[u8] {
        &self.inner.config.key_prefix
    }

    /// The Redis key of `key`, after checking it.
    pub(crate) fn full_key(&self, key: &[u8]) -> Result<Vec<u8>> {
        let mut full = Vec::with_capacity(self.prefix().len() + key.len());
        self.full_key_into(key, &mut full)?;
        Ok(full)
    }

    /// [`full_key`](Self::full_key) into `full` (cleared first): a batch reuses one
    /// buffer for all of its keys.
    pub(crate) fn full_key_into(&self, key: &[u8], full: &mut Vec<u8>) -> Result<()> {
        self.inner.config.limits.check_key(key)?;
        full.clear();
        full.extend_from_slice(self.prefix());
        full.extend_from_slice(key);
        if keys::is_internal(full) {
            return Err(internal_form());
        }
        Ok(())
    }

    /// [`full_key`](Self::full_key) written straight into `cmd` as its next argument: a
    /// point operation then allocates no key of its own (one allocation in eight of a get).
    pub(crate) fn push_full_key(&self, cmd: &mut Cmd, key: &[u8]) -> Result<()> {
        self.inner.config.limits.check_key(key)?;
        let prefix = self.prefix();
        {
            let mut arg = cmd.bufmut_for_next_arg(prefix.len() + key.len());
            arg.put_slice(prefix);
            arg.put_slice(key);
        }
        match cmd.args_iter().last() {
            Some(Arg::Simple(full)) if keys::is_internal(full) => Err(internal_form()),
            _ => Ok(()),
        }
    }

    pub(crate) fn full_prefix(&self, prefix: &[u8]) -> Vec<u8> {
        let mut full = self.prefix().to_vec();
        full.extend_from_slice(prefix);
        full
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<()> {
        self.inner.config.limits.check_value(value)
    }

    pub(crate) fn default_px(&self) -> Result<Option<u64>> {
        self.inner
            .config
            .default_ttl
            .map(state_core::ttl_millis)
            .transpose()
    }
}

fn parse_info(address: String, text: &str) -> NodeInfo {
    let field = |name: &str| info_field(text, name).unwrap_or_default().to_string();
    let num = |name: &str| field(name).parse::<u64>().unwrap_or(0);
    NodeInfo {
        address,
        version: field("redis_version"),
        role: field("role"),
        used_memory: num("used_memory"),
        connected_clients: num("connected_clients"),
        connected_replicas: num("connected_slaves"),
    }
}

/// The error of a key whose Redis key would have the form of an internal key.
fn internal_form() -> StateError {
    StateError::invalid_input(
        "the key has the form of this backend's internal keys ({digits} then a \
         NUL-delimited marker); use another key or a key prefix",
    )
}
