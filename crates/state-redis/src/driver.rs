//! The driver core under the operations: the state every clone of the backend shares
//! (configuration, connections, the retry count) and how requests go out: one request
//! under the retry policy, one write, a pipeline of writes (with `WAIT`), a script, keys
//! grouped into pipelines, keys deleted in groups.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures_util::{FutureExt, StreamExt};
use redis::{Cmd, Pipeline, Value};
use state_core::{ErrorKind, Idempotency, Result, StateError};

use crate::config::RedisConfig;
use crate::conn::{Node, Pool};
use crate::error::{Failure, to_state};
use crate::keys;
use crate::reply::{first_error, int_of, lift_reply};
use crate::scripts::Script;

/// How many pipelines of one batch run at once (each on the multiplexed connections).
pub(crate) const BATCH_CONCURRENCY: usize = 16;

/// The Redis [`StateBackend`](state_core::StateBackend): standalone, Sentinel or Cluster,
/// with or without TLS.
///
/// Cloning is cheap and clones share connections and statistics. The guide's
/// `backend.stats()` counts operations when a [`StatsLayer`](state_core::StatsLayer) wraps
/// the backend (as below); the backend itself reports its retries.
///
/// ```no_run
/// use state_redis::{RedisConfig, RedisStateBackend, StateBackend};
/// use state_core::{Stack, StatsLayer};
/// use std::sync::Arc;
/// use std::time::Duration;
/// # async fn demo() -> state_core::Result<()> {
/// let config = RedisConfig::builder()
///     .url("redis://127.0.0.1:6379")
///     .key_prefix("optimizer:")
///     .build()?;
/// let backend = RedisStateBackend::new(config).await?;
/// let backend = Stack::new().layer(StatsLayer::new()).apply(Arc::new(backend));
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
    /// Requests sent again under the retry policy: the one figure only the driver sees.
    pub(crate) retries: AtomicU64,
}

impl std::fmt::Debug for RedisStateBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStateBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RedisStateBackend {
    pub(crate) fn target(&self) -> &str {
        &self.inner.pool.target
    }

    pub(crate) fn batch_size(&self) -> usize {
        self.inner.config.pipeline_batch_size
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.inner.pool.is_cluster()
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
                |_| {
                    self.inner.retries.fetch_add(1, Ordering::Relaxed);
                },
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
            let mut pipe = redis::pipe();
            pipe.add_command(cmd.clone());
            let mut replies = Box::pin(self.write(what, idempotency, &pipe)).await?;
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
        whole: &Pipeline,
    ) -> Result<Vec<Value>> {
        let wait = self.inner.config.wait;
        let cmds: Vec<&Cmd> = whole.cmd_iter().collect();
        if let ([cmd], None) = (cmds.as_slice(), wait) {
            return Ok(vec![self.write_one(what, idempotency, cmd).await?]);
        }
        let progress = Mutex::new(Progress {
            replies: vec![None; cmds.len()],
            acked: i64::MAX,
        });
        let sent = self
            .retry(idempotency, what, || {
                let pending = lock(&progress).pending();
                // The first attempt sends the caller's pipeline as it is (no copy of its
                // commands); a retry, or `WAIT`, needs a pipeline of its own.
                let partial = (pending.len() != cmds.len() || wait.is_some()).then(|| {
                    let mut pipe = redis::pipe();
                    for &i in &pending {
                        if let Some(cmd) = cmds.get(i) {
                            pipe.add_command((*cmd).clone());
                        }
                    }
                    if let Some(w) = wait {
                        pipe.cmd("WAIT")
                            .arg(w.replicas)
                            .arg(u64::try_from(w.timeout.as_millis()).unwrap_or(u64::MAX));
                    }
                    pipe
                });
                let progress = &progress;
                async move {
                    let pipe = partial.as_ref().unwrap_or(whole);
                    let mut replies = self.inner.pool.pipeline(pipe, idempotency).await?;
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

    /// `SET` of `key` to `value` (both checked, in that order), with `PX px` if given.
    pub(crate) fn set_cmd(&self, key: &[u8], value: &[u8], px: Option<u64>) -> Result<Cmd> {
        let mut cmd = set_command(self.prefix().len() + key.len() + value.len());
        self.push_full_key(&mut cmd, key)?;
        self.check_value(value)?;
        Ok(set_rest(cmd, value, px))
    }

    /// The command `name` of the one key `key` (checked).
    pub(crate) fn key_cmd(&self, name: &str, key: &[u8]) -> Result<Cmd> {
        let mut cmd = command(name, 2, self.prefix().len() + key.len());
        self.push_full_key(&mut cmd, key)?;
        Ok(cmd)
    }

    /// `SET` of a Redis key already made (a batch's groups, which deduplicate them).
    pub(crate) fn set_full_cmd(full: &[u8], value: &[u8], px: Option<u64>) -> Cmd {
        let mut cmd = set_command(full.len() + value.len());
        cmd.arg(full);
        set_rest(cmd, value, px)
    }

    /// Deletes the given Redis keys in groups; returns how many existed.
    pub(crate) async fn delete_keys(&self, fulls: &[Vec<u8>]) -> Result<u64> {
        let groups = self.groups(fulls);
        let results = futures_util::stream::iter(groups.into_iter().map(|group| async move {
            let mut pipe = redis::pipe();
            let cmd = pipe.cmd("DEL");
            for &i in &group {
                if let Some(k) = fulls.get(i) {
                    cmd.arg(k);
                }
            }
            let replies = self.write("DEL", Idempotency::NotIdempotent, &pipe).await?;
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

/// A `SET` with room for its key and value (`bytes` together), `PX ms` and a caller's `NX`.
fn set_command(bytes: usize) -> Cmd {
    command("SET", 6, bytes + 26)
}

/// The value and the `PX` of a `SET` whose key is in place.
fn set_rest(mut cmd: Cmd, value: &[u8], px: Option<u64>) -> Cmd {
    cmd.arg(value);
    if let Some(px) = px {
        cmd.arg("PX").arg(px);
    }
    cmd
}

/// A command named `name` with room for `args` arguments (the name included) and
/// `bytes` bytes of them besides the name, so that adding them does not reallocate.
pub(crate) fn command(name: &str, args: usize, bytes: usize) -> Cmd {
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
