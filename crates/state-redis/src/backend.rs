//! [`RedisStateBackend`]: the [`StateBackend`] over Redis.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use redis::{Cmd, Pipeline, Value};
use state_core::{
    BoxStream, Capabilities, Checkpoint, Entry, ErrorKind, FencingToken, Health, Idempotency,
    ImportMode, Result, StateBackend, StateError, Ttl, stream,
};

use crate::config::{RedisConfig, Topology};
use crate::conn::{Node, Pool};
use crate::error::{Failure, to_state};
use crate::keys;
use crate::scripts::{self, Script};
use crate::stats::{Counters, RedisStats};

/// How many pipelines of one batch run at once (each on the multiplexed connections).
pub(crate) const BATCH_CONCURRENCY: usize = 16;

/// The Redis [`StateBackend`]: standalone, Sentinel or Cluster, with or without TLS.
///
/// Cloning is cheap and clones share connections and statistics.
///
/// ```no_run
/// use state_redis::{RedisConfig, RedisStateBackend, StateBackend};
/// use std::time::Duration;
/// # async fn demo() -> state_core::Result<()> {
/// let config = RedisConfig::builder()
///     .url("redis://127.0.0.1:6379")
///     .key_prefix("optimizer:")
///     .build()?;
/// let backend = RedisStateBackend::new(config).await?;
/// backend.put_with_ttl(b"cache:item:456", b"value", Duration::from_millis(1500)).await?;
/// assert_eq!(backend.get(b"cache:item:456").await?.as_deref(), Some(&b"value"[..]));
/// println!("hit rate {:.2}", backend.stats().await.hit_rate());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStateBackend {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: RedisConfig,
    pub(crate) pool: Pool,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for RedisStateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

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
                counters: Counters::default(),
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

    /// Statistics since this backend was created.
    ///
    /// `async` only to keep the guide's `backend.stats().await`: it reads atomics.
    pub async fn stats(&self) -> RedisStats {
        self.inner.counters.snapshot()
    }

    /// Bytes of memory the server(s) use (`INFO memory` `used_memory`, summed over every
    /// Cluster master).
    pub async fn memory_usage(&self) -> Result<u64> {
        let nodes = self.server_info().await?;
        Ok(nodes.iter().map(|n| n.used_memory).sum())
    }

    /// `INFO` of every node that holds data.
    pub async fn server_info(&self) -> Result<Vec<NodeInfo>> {
        self.op(self.node_infos()).await
    }

    async fn node_infos(&self) -> Result<Vec<NodeInfo>> {
        let masters = self.masters().await?;
        let info_cmd = redis::cmd("INFO");
        let mut out = Vec::with_capacity(masters.len());
        for node in &masters {
            let info = self
                .retry(Idempotency::Idempotent, "INFO", || {
                    self.inner.pool.query_node(node, &info_cmd)
                })
                .await?;
            out.push(parse_info(node.describe(&self.inner.pool), &text_of(&info)));
        }
        Ok(out)
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

    pub(crate) fn target(&self) -> &str {
        &self.inner.pool.target
    }

    pub(crate) fn prefix(&self) -> &[u8] {
        &self.inner.config.key_prefix
    }

    pub(crate) fn batch_size(&self) -> usize {
        self.inner.config.pipeline_batch_size
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.inner.pool.is_cluster()
    }

    /// The Redis key of `key`, after checking it.
    pub(crate) fn full_key(&self, key: &[u8]) -> Result<Vec<u8>> {
        self.inner.config.limits.check_key(key)?;
        let mut full = Vec::with_capacity(self.prefix().len() + key.len());
        full.extend_from_slice(self.prefix());
        full.extend_from_slice(key);
        if keys::is_internal(&full) {
            return Err(StateError::invalid_input(
                "the key has the form of this backend's internal keys ({digits} then a \
                 NUL-delimited marker); use another key or a key prefix",
            ));
        }
        Ok(full)
    }

    pub(crate) fn full_prefix(&self, prefix: &[u8]) -> Vec<u8> {
        let mut full = self.prefix().to_vec();
        full.extend_from_slice(prefix);
        full
    }

    pub(crate) fn check_value(&self, value: &[u8]) -> Result<()> {
        self.inner.config.limits.check_value(value)
    }

    fn default_px(&self) -> Result<Option<u64>> {
        self.inner
            .config
            .default_ttl
            .map(state_core::ttl_millis)
            .transpose()
    }

    /// Runs one public operation: times it and counts it once, whatever its retries.
    ///
    /// A combinator, not an `async fn`: an `async fn` would hold `fut` both as its argument
    /// and as the future it awaits, doubling the size of every operation's future.
    pub(crate) fn op<T>(
        &self,
        fut: impl Future<Output = Result<T>>,
    ) -> impl Future<Output = Result<T>> {
        let started = Instant::now();
        fut.inspect(move |out| self.inner.counters.finished(started.elapsed(), out.is_ok()))
    }

    /// Runs one request under the retry policy, mapping driver failures.
    pub(crate) async fn retry<T, F, Fut>(
        &self,
        idempotency: Idempotency,
        what: &str,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let target = self.target();
        self.inner
            .config
            .retry
            .run(
                idempotency,
                |_| self.inner.counters.retried(),
                // `map`, not an `async` block, for the reason given at `op`.
                || f().map(|out| out.map_err(|e| to_state(what, target, e))),
            )
            .await
    }

    pub(crate) async fn masters(&self) -> Result<Vec<Node>> {
        self.retry(Idempotency::Idempotent, "CLUSTER NODES", || {
            self.inner.pool.masters()
        })
        .await
    }

    /// Sends one write command and returns its reply, an error reply included (for the
    /// caller to lift), except transient ones (READONLY, LOADING…), which are retried by
    /// the policy. With `WAIT` configured it goes through [`write`](Self::write).
    ///
    /// The point operations' path: no pipeline, no copy of the command, no reply vector.
    pub(crate) async fn write_one(
        &self,
        what: &str,
        idempotency: Idempotency,
        cmd: &Cmd,
    ) -> Result<Value> {
        if self.inner.config.wait.is_some() {
            // Rare and large: boxed, so that the common path's future stays small.
            let mut replies =
                Box::pin(self.write(what, idempotency, std::slice::from_ref(cmd))).await?;
            return Ok(replies.pop().unwrap_or(Value::Nil));
        }
        // A lone command goes unpipelined: in Cluster the driver then follows MOVED/ASK.
        self.retry(idempotency, what, || async {
            let reply = self.inner.pool.query_raw(cmd, idempotency).await?;
            match transient_reply(std::slice::from_ref(&reply)) {
                Some(err) => Err(Failure::after_send(err)),
                None => Ok(reply),
            }
        })
        .await
    }

    /// Sends a write (one or more commands, one slot) as one pipeline, then `WAIT` if
    /// configured; returns the writes' replies, error replies included (for the caller to
    /// lift), except transient ones (READONLY, LOADING, MOVED, TRYAGAIN…), which are
    /// retried by the policy.
    ///
    /// A transient reply means that command was not executed, but its neighbours in the
    /// pipeline may have been (a slot migrating key by key answers `ASK` for some keys
    /// only): so only the commands that got one are sent again, never one that was
    /// executed. If the retries run out after part of the pipeline was applied, the error
    /// is marked outcome-unknown.
    pub(crate) async fn write(
        &self,
        what: &str,
        idempotency: Idempotency,
        cmds: &[Cmd],
    ) -> Result<Vec<Value>> {
        let wait = self.inner.config.wait;
        if let ([cmd], None) = (cmds, wait) {
            return Ok(vec![self.write_one(what, idempotency, cmd).await?]);
        }
        let progress = Mutex::new(Progress {
            replies: vec![None; cmds.len()],
            acked: i64::MAX,
        });
        let sent = self
            .retry(idempotency, what, || {
                let pending = lock(&progress).pending();
                let mut pipe = redis::pipe();
                for &i in &pending {
                    if let Some(cmd) = cmds.get(i) {
                        pipe.add_command(cmd.clone());
                    }
                }
                if let Some(w) = wait {
                    pipe.cmd("WAIT")
                        .arg(w.replicas)
                        .arg(u64::try_from(w.timeout.as_millis()).unwrap_or(u64::MAX));
                }
                let progress = &progress;
                async move {
                    let mut replies = self.inner.pool.pipeline(&pipe, idempotency).await?;
                    let mut progress = lock(progress);
                    if wait.is_some() {
                        let acked = match replies.pop() {
                            Some(Value::Int(n)) => n,
                            _ => 0,
                        };
                        progress.acked = progress.acked.min(acked);
                    }
                    let mut transient = None;
                    for (i, reply) in pending.into_iter().zip(replies) {
                        match transient_reply(std::slice::from_ref(&reply)) {
                            Some(err) => transient = Some(err),
                            None => {
                                if let Some(slot) = progress.replies.get_mut(i) {
                                    *slot = Some(reply);
                                }
                            }
                        }
                    }
                    match transient {
                        Some(err) => Err(Failure::after_send(err)),
                        None => Ok(()),
                    }
                }
            })
            .await;
        let progress = progress
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        if let Err(err) = sent {
            let partly_applied = progress.replies.iter().any(Option::is_some);
            return Err(if partly_applied {
                err.with_outcome_unknown()
            } else {
                err
            });
        }
        let replies: Vec<Value> = progress
            .replies
            .into_iter()
            .map(|reply| reply.unwrap_or(Value::Nil))
            .collect();
        if let Some(w) = wait {
            // A failed write needs no acknowledgement: the caller reports its own error.
            if replies.iter().any(|r| matches!(r, Value::ServerError(_))) {
                return Ok(replies);
            }
            let acked = progress.acked;
            if acked < i64::from(w.replicas) {
                return Err(StateError::new(
                    ErrorKind::Unavailable,
                    format!(
                        "{what} on {}: only {acked} of {} replicas acknowledged the write \
                         within {:?}; it is on the primary but may be lost in a failover",
                        self.target(),
                        w.replicas,
                        w.timeout
                    ),
                )
                .with_outcome_unknown());
            }
        }
        Ok(replies)
    }

    /// Runs a Lua script by EVALSHA (with WAIT if configured), falling back to EVAL once
    /// when the server does not have it cached (NOSCRIPT).
    pub(crate) async fn eval(
        &self,
        what: &str,
        idempotency: Idempotency,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value> {
        let sha = script.evalsha(keys, args);
        match self.write_one(what, idempotency, &sha).await? {
            Value::ServerError(e) if e.code() == "NOSCRIPT" => {
                let eval = script.eval(keys, args);
                let reply = Box::pin(self.write_one(what, idempotency, &eval)).await?;
                lift_reply(what, self.target(), reply)
            }
            other => lift_reply(what, self.target(), other),
        }
    }

    /// Runs `script` atomically on `keys` with `args` and returns its reply: the building
    /// block for atomic operations the [`StateBackend`] trait lacks (the Redis lock of
    /// `state-lock` is built on it).
    ///
    /// The request is handled like every operation of this backend: `EVALSHA`, with one
    /// `EVAL` when the server answers `NOSCRIPT`; the retry policy; reconnection (a
    /// Sentinel deployment asks the Sentinels for the new primary); Cluster routing by the
    /// keys' slot, following `MOVED`/`ASK`; `WAIT` when `wait_replicas` is configured.
    ///
    /// - `keys` are this backend's keys, as for [`get`](StateBackend::get): the key prefix
    ///   goes in front and the key limits apply. There must be at least one, and all must
    ///   hash to one Cluster slot (give them a common hash tag, `{…}`) in every topology,
    ///   so that a script that runs on a standalone server also runs on a Cluster;
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
        self.op(async {
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
        })
        .await
    }

    /// Splits indices `0..keys.len()` into groups sent as one pipeline each: chunks of
    /// `pipeline_batch_size`, and in Cluster mode one slot per group.
    pub(crate) fn groups(&self, keys: &[Vec<u8>]) -> Vec<Vec<usize>> {
        let size = self.batch_size();
        if !self.is_cluster() {
            let all: Vec<usize> = (0..keys.len()).collect();
            return all.chunks(size).map(<[usize]>::to_vec).collect();
        }
        let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
        let mut order = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let slot = keys::slot(key);
            by_slot
                .entry(slot)
                .or_insert_with(|| {
                    order.push(slot);
                    Vec::new()
                })
                .push(i);
        }
        let mut out = Vec::new();
        for slot in order {
            if let Some(indices) = by_slot.remove(&slot) {
                out.extend(indices.chunks(size).map(<[usize]>::to_vec));
            }
        }
        out
    }

    fn set_cmd(full: &[u8], value: &[u8], px: Option<u64>) -> Cmd {
        let mut cmd = command("SET", 5, full.len() + value.len() + 24);
        cmd.arg(full).arg(value);
        if let Some(px) = px {
            cmd.arg("PX").arg(px);
        }
        cmd
    }
}

/// What a pipelined write has achieved so far, across the retries of [`RedisStateBackend::write`].
struct Progress {
    /// Each command's reply, once it got one that is not transient.
    replies: Vec<Option<Value>>,
    /// The fewest replicas any round's `WAIT` reported.
    acked: i64,
}

impl Progress {
    /// The commands still to send.
    fn pending(&self) -> Vec<usize> {
        (0..self.replies.len())
            .filter(|&i| self.replies.get(i).is_some_and(Option::is_none))
            .collect()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A command named `name` with room for `args` arguments (the name included) and
/// `bytes` bytes of them besides the name, so that adding them does not reallocate.
fn command(name: &str, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(args, name.len() + bytes);
    cmd.arg(name);
    cmd
}

/// The first error reply that a retry may cure (failover, loading, resharding).
fn transient_reply(replies: &[Value]) -> Option<redis::RedisError> {
    replies.iter().find_map(|v| match v {
        Value::ServerError(e) => {
            let err = redis::RedisError::from(e.clone());
            (crate::error::kind_of(&err) == ErrorKind::Unavailable).then_some(err)
        }
        _ => None,
    })
}

/// The first error reply of a pipeline, as a `StateError`.
pub(crate) fn first_error(what: &str, target: &str, replies: &[Value]) -> Result<()> {
    for reply in replies {
        if let Value::ServerError(e) = reply {
            return Err(to_state(
                what,
                target,
                Failure::after_send(e.clone().into()),
            ));
        }
    }
    Ok(())
}

pub(crate) fn lift_reply(what: &str, target: &str, value: Value) -> Result<Value> {
    crate::conn::lift(value).map_err(|e| to_state(what, target, Failure::after_send(e)))
}

pub(crate) fn unexpected(what: &str, value: &Value) -> StateError {
    StateError::new(
        ErrorKind::Backend,
        format!("{what}: unexpected reply from Redis ({})", kind_name(value)),
    )
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "integer",
        Value::BulkString(_) => "bulk string",
        Value::Array(_) => "array",
        Value::SimpleString(_) => "simple string",
        Value::Okay => "OK",
        Value::ServerError(_) => "error",
        _ => "other",
    }
}

pub(crate) fn bytes_of(what: &str, value: Value) -> Result<Option<Bytes>> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(Bytes::from(b))),
        Value::SimpleString(s) => Ok(Some(Bytes::from(s.into_bytes()))),
        Value::Okay => Ok(Some(Bytes::from_static(b"OK"))),
        other => Err(unexpected(what, &other)),
    }
}

pub(crate) fn int_of(what: &str, value: &Value) -> Result<i64> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(what, other)),
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    }
}

fn parse_info(address: String, text: &str) -> NodeInfo {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
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

/// The absolute expiry of a key with `pttl` milliseconds left, seen at `now`.
pub(crate) fn expiry_of(pttl: i64, now: SystemTime) -> Option<Option<SystemTime>> {
    match pttl {
        -1 => Some(None),
        n if n >= 0 => Some(Some(now + Duration::from_millis(n.max(1) as u64))),
        _ => None,
    }
}

#[async_trait]
impl StateBackend for RedisStateBackend {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::new("redis");
        caps.ordered_scan = false;
        // SCAN is fuzzy: keys written during a scan may or may not be seen.
        caps.consistent_snapshot = false;
        // One MULTI/EXEC switches a staged restore in; in Cluster one per slot only.
        caps.atomic_restore = !self.is_cluster();
        caps.metadata = false;
        caps.durable = true;
        caps.shared = true;
        caps.max_key_len = self.inner.config.limits.max_key_len;
        caps.max_value_len = self.inner.config.limits.max_value_len;
        caps
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.op(async {
            let full = self.full_key(key)?;
            let mut cmd = command("GET", 2, full.len());
            cmd.arg(&full);
            let value = self
                .retry(Idempotency::Idempotent, "GET", || {
                    self.inner.pool.query(&cmd)
                })
                .await?;
            let value = bytes_of("GET", value)?;
            let c = &self.inner.counters;
            match &value {
                Some(v) => {
                    c.lookups(1, 0);
                    c.read(v.len());
                }
                None => c.lookups(0, 1),
            }
            Ok(value)
        })
        .await
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.op(async {
            let full = self.full_key(key)?;
            self.check_value(value)?;
            let cmd = Self::set_cmd(&full, value, self.default_px()?);
            let reply = self
                .write_one("SET", Idempotency::NotIdempotent, &cmd)
                .await?;
            lift_reply("SET", self.target(), reply)?;
            self.inner.counters.written(full.len() + value.len());
            Ok(())
        })
        .await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.op(async {
            let full = self.full_key(key)?;
            self.check_value(value)?;
            let px = state_core::ttl_millis(ttl)?;
            let cmd = Self::set_cmd(&full, value, Some(px));
            let reply = self
                .write_one("SET PX", Idempotency::NotIdempotent, &cmd)
                .await?;
            lift_reply("SET PX", self.target(), reply)?;
            self.inner.counters.written(full.len() + value.len());
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.op(async {
            let full = self.full_key(key)?;
            let mut cmd = redis::cmd("DEL");
            cmd.arg(&full);
            let reply = self
                .write_one("DEL", Idempotency::NotIdempotent, &cmd)
                .await?;
            let reply = lift_reply("DEL", self.target(), reply)?;
            Ok(int_of("DEL", &reply)? > 0)
        })
        .await
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        self.op(async {
            let fulls = keys
                .iter()
                .map(|k| self.full_key(k))
                .collect::<Result<Vec<_>>>()?;
            let mut out: Vec<Option<Bytes>> = vec![None; fulls.len()];
            let groups = self.groups(&fulls);
            let results = futures_util::stream::iter(groups.into_iter().map(|group| {
                let fulls = &fulls;
                async move {
                    let mut cmd = redis::cmd("MGET");
                    for &i in &group {
                        if let Some(k) = fulls.get(i) {
                            cmd.arg(k);
                        }
                    }
                    let reply = self
                        .retry(Idempotency::Idempotent, "MGET", || {
                            self.inner.pool.query(&cmd)
                        })
                        .await?;
                    Ok::<_, StateError>((group, reply))
                }
            }))
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
            let (mut hits, mut misses) = (0, 0);
            for result in results {
                let (group, reply) = result?;
                let Value::Array(values) = reply else {
                    return Err(unexpected("MGET", &reply));
                };
                if values.len() != group.len() {
                    return Err(unexpected("MGET", &Value::Array(values)));
                }
                for (i, value) in group.into_iter().zip(values) {
                    let value = bytes_of("MGET", value)?;
                    match &value {
                        Some(v) => {
                            hits += 1;
                            self.inner.counters.read(v.len());
                        }
                        None => misses += 1,
                    }
                    if let Some(slot) = out.get_mut(i) {
                        *slot = value;
                    }
                }
            }
            self.inner.counters.lookups(hits, misses);
            Ok(out)
        })
        .await
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        self.op(async {
            let mut checked = Vec::with_capacity(entries.len());
            for (key, value) in entries {
                let full = self.full_key(key)?;
                self.check_value(value)?;
                checked.push((full, *value));
            }
            // The last write of a repeated key wins, as it would one by one; groups run
            // concurrently, so only that one is sent.
            let mut last: HashMap<&[u8], usize> = HashMap::new();
            for (i, (k, _)) in checked.iter().enumerate() {
                last.insert(k.as_slice(), i);
            }
            let (kept_keys, values): (Vec<Vec<u8>>, Vec<&[u8]>) = checked
                .iter()
                .enumerate()
                .filter(|(i, (k, _))| last.get(k.as_slice()) == Some(i))
                .map(|(_, (k, v))| (k.clone(), *v))
                .unzip();
            let px = self.default_px()?;
            let groups = self.groups(&kept_keys);
            let results = futures_util::stream::iter(groups.into_iter().map(|group| {
                let (kept_keys, values) = (&kept_keys, &values);
                async move {
                    let mut cmds = Vec::with_capacity(group.len());
                    let mut bytes = 0;
                    for &g in &group {
                        let (Some(full), Some(&value)) = (kept_keys.get(g), values.get(g)) else {
                            continue;
                        };
                        bytes += full.len() + value.len();
                        cmds.push(Self::set_cmd(full, value, px));
                    }
                    let replies = self
                        .write("batch SET", Idempotency::NotIdempotent, &cmds)
                        .await?;
                    first_error("batch SET", self.target(), &replies)?;
                    self.inner.counters.written(bytes);
                    Ok::<_, StateError>(())
                }
            }))
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
            results.into_iter().collect::<Result<Vec<()>>>()?;
            Ok(())
        })
        .await
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        self.op(async {
            let mut fulls = keys
                .iter()
                .map(|k| self.full_key(k))
                .collect::<Result<Vec<_>>>()?;
            // DEL of a repeated key counts it once, like deleting one by one.
            fulls.sort();
            fulls.dedup();
            self.delete_keys(&fulls).await
        })
        .await
    }

    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.op(async {
            let full = self.full_key(key)?;
            let mut cmd = redis::cmd("GETDEL");
            cmd.arg(&full);
            let reply = self
                .write_one("GETDEL", Idempotency::NotIdempotent, &cmd)
                .await?;
            let reply = lift_reply("GETDEL", self.target(), reply)?;
            let value = bytes_of("GETDEL", reply)?;
            match &value {
                Some(v) => {
                    self.inner.counters.lookups(1, 0);
                    self.inner.counters.read(v.len());
                }
                None => self.inner.counters.lookups(0, 1),
            }
            Ok(value)
        })
        .await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.op(async {
            let full = self.full_key(key)?;
            self.check_value(value)?;
            let px = match ttl {
                Some(ttl) => Some(state_core::ttl_millis(ttl)?),
                None => self.default_px()?,
            };
            let mut cmd = Self::set_cmd(&full, value, px);
            cmd.arg("NX");
            let reply = self
                .write_one("SET NX", Idempotency::NotIdempotent, &cmd)
                .await?;
            let reply = lift_reply("SET NX", self.target(), reply)?;
            let stored = !matches!(reply, Value::Nil);
            if stored {
                self.inner.counters.written(full.len() + value.len());
            }
            Ok(stored)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        self.op(async {
            let full = self.full_key(key)?;
            self.check_value(new)?;
            if let Some(e) = expected {
                self.check_value(e)?;
            }
            let px = self
                .default_px()?
                .map(|p| p.to_string())
                .unwrap_or_default();
            let (flag, exp): (&[u8], &[u8]) = match expected {
                Some(e) => (b"1", e),
                None => (b"0", b""),
            };
            let reply = self
                .eval(
                    "compare_and_swap",
                    Idempotency::NotIdempotent,
                    &scripts::CAS,
                    &[&full],
                    &[flag, exp, new, px.as_bytes()],
                )
                .await?;
            let swapped = int_of("compare_and_swap", &reply)? == 1;
            if swapped {
                self.inner.counters.written(full.len() + new.len());
            }
            Ok(swapped)
        })
        .await
    }

    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()> {
        self.op(async {
            let full = self.full_key(key)?;
            self.check_value(value)?;
            let fence = keys::fence_key(&full);
            let px = self
                .default_px()?
                .map(|p| p.to_string())
                .unwrap_or_default();
            let padded = format!("{:020}", token.0);
            let reply = self
                .eval(
                    "put_fenced",
                    Idempotency::NotIdempotent,
                    &scripts::FENCED_PUT,
                    &[&full, &fence],
                    &[padded.as_bytes(), value, px.as_bytes()],
                )
                .await?;
            match reply {
                Value::Int(0) => {
                    self.inner.counters.written(full.len() + value.len());
                    Ok(())
                }
                Value::BulkString(current) => {
                    let current = std::str::from_utf8(&current)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(u64::MAX);
                    Err(StateError::fenced(token.0, current))
                }
                other => Err(unexpected("put_fenced", &other)),
            }
        })
        .await
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.op(async {
            let full = self.full_key(key)?;
            let mut cmd = redis::cmd("PTTL");
            cmd.arg(&full);
            let reply = self
                .retry(Idempotency::Idempotent, "PTTL", || {
                    self.inner.pool.query(&cmd)
                })
                .await?;
            Ok(match int_of("PTTL", &reply)? {
                -1 => Ttl::Persistent,
                n if n >= 0 => Ttl::Remaining(Duration::from_millis(n.max(1) as u64)),
                _ => Ttl::Missing,
            })
        })
        .await
    }

    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.entries(prefix, true)
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        self.op(async {
            let pattern = keys::prefix_pattern(&self.full_prefix(prefix));
            let mut keys = self.scan_keys(pattern);
            let mut n = 0u64;
            while let Some(page) = stream::next(&mut keys).await {
                n += page?.len() as u64;
            }
            Ok(n)
        })
        .await
    }

    async fn clear(&self, prefix: &[u8]) -> Result<u64> {
        self.op(async { self.clear_prefix(prefix).await }).await
    }

    async fn checkpoint(&self) -> Result<Checkpoint> {
        let taken_at = SystemTime::now();
        let entries = stream::try_collect(self.entries(b"", false)).await?;
        self.inner.counters.finished(
            SystemTime::now()
                .duration_since(taken_at)
                .unwrap_or_default(),
            true,
        );
        Ok(Checkpoint::new(entries, taken_at, false))
    }

    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        self.import(
            stream::iter(checkpoint.into_entries().into_iter().map(Ok)),
            ImportMode::Replace,
        )
        .await
        .map(|_| ())
    }

    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.entries(prefix, true)
    }

    async fn import(&self, entries: BoxStream<'_, Result<Entry>>, mode: ImportMode) -> Result<u64> {
        self.op(self.import_staged(entries, mode)).await
    }

    async fn health_check(&self) -> Result<Health> {
        let started = Instant::now();
        let outcome: Result<usize> = async {
            let masters = self.masters().await?;
            let ping = redis::cmd("PING");
            for node in &masters {
                let reply = self
                    .retry(Idempotency::Idempotent, "PING", || {
                        self.inner.pool.query_node(node, &ping)
                    })
                    .await?;
                if !matches!(&reply, Value::SimpleString(s) if s == "PONG") {
                    return Err(unexpected("PING", &reply));
                }
            }
            Ok(masters.len())
        }
        .await;
        let latency = started.elapsed();
        Ok(match (outcome, &self.inner.config.topology) {
            (Ok(n), Topology::Cluster) => Health::healthy(
                latency,
                format!("PONG from {n} masters of {}", self.target()),
            ),
            (Ok(_), _) => Health::healthy(latency, format!("PONG from {}", self.target())),
            (Err(e), _) => Health::unhealthy(latency, e.to_string()),
        })
    }
}

impl RedisStateBackend {
    /// Deletes the given Redis keys in groups; returns how many existed.
    pub(crate) async fn delete_keys(&self, fulls: &[Vec<u8>]) -> Result<u64> {
        let groups = self.groups(fulls);
        let results = futures_util::stream::iter(groups.into_iter().map(|group| async move {
            let mut cmd = redis::cmd("DEL");
            for &i in &group {
                if let Some(k) = fulls.get(i) {
                    cmd.arg(k);
                }
            }
            let replies = self
                .write("DEL", Idempotency::NotIdempotent, &[cmd])
                .await?;
            first_error("DEL", self.target(), &replies)?;
            replies
                .first()
                .map(|v| int_of("DEL", v))
                .transpose()
                .map(|n| n.unwrap_or(0))
        }))
        .buffer_unordered(BATCH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut total = 0u64;
        for r in results {
            total += u64::try_from(r?).unwrap_or(0);
        }
        Ok(total)
    }

    async fn clear_prefix(&self, prefix: &[u8]) -> Result<u64> {
        let full_prefix = self.full_prefix(prefix);
        let mut deleted = 0;
        let mut pages = self.scan_keys(keys::prefix_pattern(&full_prefix));
        while let Some(page) = stream::next(&mut pages).await {
            deleted += self.delete_keys(&page?).await?;
        }
        drop(pages);
        // Then the fencing marks of those keys: `clear` forgets them (see put_fenced).
        let mut fences = self.scan_raw(keys::fence_pattern(&full_prefix));
        while let Some(page) = stream::next(&mut fences).await {
            let page: Vec<Vec<u8>> = page?
                .into_iter()
                .filter(|k| keys::fenced_data_key(k).is_some_and(|d| d.starts_with(&full_prefix)))
                .collect();
            self.delete_keys(&page).await?;
        }
        Ok(deleted)
    }

    /// Pipeline of commands with no WAIT, for internal steps (staging).
    pub(crate) async fn pipeline_retry(
        &self,
        what: &str,
        idempotency: Idempotency,
        pipe: &Pipeline,
    ) -> Result<Vec<Value>> {
        self.retry(idempotency, what, || {
            self.inner.pool.pipeline(pipe, idempotency)
        })
        .await
    }
}
