//! [`RedisDistributedLock`]: a leased lock in Redis with fencing tokens, over a
//! [`RedisStateBackend`] (standalone, Sentinel, Cluster, TLS, ACL users and retries as
//! configured there).
//!
//! The type's documentation says how it works and what a failover can do to a held lock.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use state_core::{
    DistributedLock, ErrorKind, FencingToken, GuardState, Idempotency, LockGuard, Result,
    StateBackend, StateError, StateUrl, Ttl, check_lock_name, new_owner_token, ttl_millis,
};
use state_redis::redis::Value;
use state_redis::{RedisConfig, RedisStateBackend, Script};

use crate::hot_path::name_error;

/// How long `acquire` waits by default.
const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default key prefix of lock keys.
const DEFAULT_KEY_PREFIX: &str = "lock:";
/// The suffix of a lock's counter key.
const FENCE_SUFFIX: &[u8] = b":fence";
/// The longest owner token accepted, in bytes (generated ones are 32).
const MAX_OWNER_LEN: usize = 1024;

/// `KEYS[1]` lock key, `KEYS[2]` counter key; `ARGV[1]` owner, `ARGV[2]` lease in ms.
/// Returns the fencing token (as decimal text) of the lock now held by the owner, or nil if
/// another owner holds it.
///
/// Numbers are Lua doubles: exact below 2^53, and formatted with `%.0f` because `tostring`
/// would print 1.7e+15.
pub const ACQUIRE_LUA: &str = r"local cur = redis.call('GET', KEYS[1])
if cur then
  local token = string.match(cur, ' (%d+)$')
  if token and string.sub(cur, 1, #cur - #token - 1) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return token
  end
  return false
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local t = redis.call('TIME')
local token = tonumber(t[1]) * 1000000 + tonumber(t[2])
if last + 1 > token then token = last + 1 end
local text = string.format('%.0f', token)
redis.call('SET', KEYS[2], text)
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. text, 'PX', ARGV[2])
return text";
static ACQUIRE: Script = Script::new(ACQUIRE_LUA);

/// `KEYS[1]` lock key; `ARGV[1]` `"<owner> <token>"`. Returns 1 if deleted, 0 if not held so.
pub const RELEASE_LUA: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";
static RELEASE: Script = Script::new(RELEASE_LUA);

/// `KEYS[1]` lock key; `ARGV[1]` `"<owner> <token>"`, `ARGV[2]` lease in ms. Returns 1 if the
/// lease was moved, 0 if not held so (an expired lock is not re-created).
pub const EXTEND_LUA: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";
static EXTEND: Script = Script::new(EXTEND_LUA);

/// How to build a [`RedisDistributedLock`]: where Redis is, how long `acquire` waits, and
/// the key prefix of lock keys. `Debug` never shows the password.
///
/// ```
/// use state_lock::RedisLockConfig;
/// use std::time::Duration;
///
/// let config = RedisLockConfig::from_url("redis+sentinel://s1:26379,s2:26379/mymaster")?
///     .with_wait_timeout(Duration::from_secs(5))
///     .with_key_prefix("jobs-lock:");
/// assert_eq!(config.wait_timeout(), Duration::from_secs(5));
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Clone)]
pub struct RedisLockConfig {
    redis: RedisConfig,
    wait_timeout: Duration,
    key_prefix: Vec<u8>,
}

impl RedisLockConfig {
    /// Locks on the Redis `redis` describes, waiting up to 30 s in `acquire`, under the key
    /// prefix `lock:`.
    pub fn new(redis: RedisConfig) -> RedisLockConfig {
        RedisLockConfig {
            redis,
            wait_timeout: DEFAULT_WAIT_TIMEOUT,
            key_prefix: DEFAULT_KEY_PREFIX.as_bytes().to_vec(),
        }
    }

    /// [`new`](Self::new) with the Redis of a `redis://`, `rediss://`, `redis+sentinel://`
    /// or `redis+cluster://` URL (see [`RedisConfig::from_url`]).
    pub fn from_url(url: &str) -> Result<RedisLockConfig> {
        RedisLockConfig::from_state_url(&StateUrl::parse(url, &state_redis::SCHEMES)?)
    }

    /// [`from_url`](Self::from_url) for a parsed URL. The URL's parameters are the Redis
    /// ones (its `wait_timeout=` is `WAIT`'s, for writes); set how long `acquire` waits
    /// with [`with_wait_timeout`](Self::with_wait_timeout) or
    /// [`LockOptions`](state_core::LockOptions).
    pub fn from_state_url(url: &StateUrl) -> Result<RedisLockConfig> {
        Ok(RedisLockConfig::new(RedisConfig::from_state_url(url)?))
    }

    /// How long [`acquire`](DistributedLock::acquire) waits for a busy lock before a
    /// `Timeout` error.
    pub fn with_wait_timeout(mut self, wait_timeout: Duration) -> RedisLockConfig {
        self.wait_timeout = wait_timeout;
        self
    }

    /// The prefix of lock keys, after the Redis configuration's own key prefix.
    pub fn with_key_prefix(mut self, prefix: impl AsRef<[u8]>) -> RedisLockConfig {
        self.key_prefix = prefix.as_ref().to_vec();
        self
    }

    /// The Redis configuration.
    pub fn redis(&self) -> &RedisConfig {
        &self.redis
    }

    /// How long `acquire` waits.
    pub fn wait_timeout(&self) -> Duration {
        self.wait_timeout
    }

    /// The prefix of lock keys.
    pub fn key_prefix(&self) -> &[u8] {
        &self.key_prefix
    }
}

impl fmt::Debug for RedisLockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockConfig")
            .field("redis", &self.redis)
            .field("wait_timeout", &self.wait_timeout)
            .field("key_prefix", &String::from_utf8_lossy(&self.key_prefix))
            .finish()
    }
}

/// A [`DistributedLock`] in Redis: standalone, Sentinel or Cluster, over a
/// [`RedisStateBackend`] (TLS, ACL users and retries as configured there). Cloning is
/// cheap; clones share the connections.
///
/// # How it works
///
/// A lock named `jobs` is one Redis key, `lock:{jobs}`: the lock's key prefix (`lock:` by
/// default, after the backend's own key prefix, if any), then the name inside a hash tag,
/// with `}` and `%` percent-encoded (`%7D`, `%25`) so that no name can end the tag early.
/// Its value is `"<owner> <token>"` and it expires after the lease (`PX`). Beside it,
/// `lock:{jobs}:fence` holds the last fencing token issued for the name; the shared hash
/// tag keeps both keys in one Cluster slot, so every operation is one Lua script on one
/// node:
///
/// - **acquire** (`try_acquire_as`): if the key holds this owner, renew its lease and return
///   its token (this is a retry whose first reply was lost); if it holds another owner,
///   return nothing; otherwise issue `token = max(last token + 1, server time in µs)`, store
///   it in the counter key and set the lock key with `PX ttl`. Because a retry with the same
///   owner is harmless, the backend's retry policy re-sends an acquire whose reply was lost.
/// - **release**: delete the key if it still holds `"<owner> <token>"`, else `NotOwner`.
/// - **extend**: `PEXPIRE` the key if it still holds `"<owner> <token>"`, else `NotOwner`;
///   it never re-creates an expired lock.
/// - **is_locked**: whether the key exists (`PTTL`).
///
/// A guard's deadline is `Instant::now()` taken before the request is sent, plus the TTL:
/// it can only run out before the server's expiry, and stepping the wall clock does not move
/// it. The server, though, expires keys by its wall clock: a server clock that jumps forward
/// ends leases early (fencing, below, covers that too). Dropping a guard inside a Tokio
/// runtime spawns its release; outside one, nothing is sent and the lease expires on the
/// server.
///
/// # Fencing tokens and what can go wrong
///
/// A Redis lock is a lease, not a guarantee: a holder paused past its TTL, a Redis restart
/// without persistence, or a failover can let a second holder in while the first still
/// believes it holds the lock. The fencing token is what keeps the data safe: pass
/// [`LockGuard::fencing_token`] to
/// [`StateBackend::put_fenced`](state_core::StateBackend::put_fenced) and the storage rejects
/// the older holder's writes with `Fenced`.
///
/// Tokens increase strictly across the holders of a name. The counter key alone would not
/// survive a restart of a server without persistence, or a failover to a replica that had
/// not received it; so each token is also at least the server's clock (`TIME`, in
/// microseconds). Tokens therefore keep increasing across such a loss **as long as the
/// server clock (the new primary's, after a failover) does not step back by more than the
/// time the outage took** — keep the servers' clocks synchronised (NTP). Tokens are exact
/// integers until 2^53 (the year 2255 in microseconds). The counter key has no TTL: one
/// small key per lock name stays behind; delete it only when the name is retired.
///
/// **Sentinel.** Replication is asynchronous: a lock set on the primary just before it died
/// may be missing on the promoted replica. After the failover (the backend re-resolves the
/// primary through the Sentinels by itself) a second client can then acquire the same name
/// while the first holder's guard has not run out; the first holder's next `extend` fails
/// with `NotOwner`, and its fenced writes fail with `Fenced` because the new token, seeded
/// from the clock, is higher. A backend configured with `wait_replicas` makes every lock
/// operation wait for that many replicas, which narrows the window (an acquire that was not
/// acknowledged in time is an `Unavailable` error with an unknown outcome; retrying it with
/// the same owner is safe) but does not close it: Redis replication is never synchronous.
///
/// **Cluster.** Each lock lives on the master that owns its slot; MOVED/ASK are followed and
/// a promoted replica is found by the backend. A master failover has the same effect on the
/// locks of its slots as a Sentinel failover. There is no quorum across masters (no
/// Redlock): a lock is as available as its master, and fencing, not a quorum, protects the
/// data.
///
/// **ACL.** The user needs `EVALSHA`, `EVAL` and `PTTL`, with `GET`, `SET`, `PEXPIRE`, `DEL`
/// and `TIME` allowed inside scripts, on the keys that start with the backend's key prefix
/// followed by the lock's (`~lock:*` with the defaults), and `INFO` (the backend checks
/// the server version when it connects; behind Sentinels it is also how the primary's role
/// is checked when `ROLE` is not allowed); in Cluster mode also `CLUSTER|NODES` (the
/// version check visits every master), `CLUSTER|SLOTS` (the driver's slot map) and
/// `ASKING` (while a slot migrates). ACLs are per node: create the user on every data node,
/// replicas included. A key outside the pattern is refused with a `Config` error naming the
/// ACL, not taken for a held lock.
///
/// # Example
///
/// ```no_run
/// use state_lock::{DistributedLock, RedisDistributedLock};
/// use std::time::Duration;
/// # async fn demo() -> state_core::Result<()> {
/// let lock = RedisDistributedLock::new("redis://localhost:6379").await?;
/// if let Some(guard) = lock.try_acquire("resource", Duration::from_secs(30)).await? {
///     println!("holding it with fencing token {}", guard.fencing_token().0);
///     lock.release(guard).await?;
/// }
/// let mut guard = lock.acquire("checkpoint", Duration::from_secs(60)).await?;
/// lock.extend(&mut guard, Duration::from_secs(60)).await?;
/// drop(guard); // released in the background
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisDistributedLock {
    inner: Arc<Inner>,
}

struct Inner {
    backend: RedisStateBackend,
    wait_timeout: Duration,
    key_prefix: Vec<u8>,
}

impl fmt::Debug for RedisDistributedLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDistributedLock")
            .field("backend", &self.inner.backend)
            .field("wait_timeout", &self.inner.wait_timeout)
            .field(
                "key_prefix",
                &String::from_utf8_lossy(&self.inner.key_prefix),
            )
            .finish()
    }
}

impl RedisDistributedLock {
    /// Connects to the Redis of `url` with the defaults of [`RedisLockConfig::new`].
    pub async fn new(url: &str) -> Result<RedisDistributedLock> {
        Self::with_config(RedisLockConfig::from_url(url)?).await
    }

    /// Connects as `config` says.
    pub async fn with_config(config: RedisLockConfig) -> Result<RedisDistributedLock> {
        let RedisLockConfig {
            redis,
            wait_timeout,
            key_prefix,
        } = config;
        check_prefix(redis.key_prefix(), &key_prefix)?;
        let backend = RedisStateBackend::new(redis).await?;
        Self::from_backend(backend, wait_timeout, key_prefix)
    }

    /// Locks over an existing backend's connections (its key prefix, retries and
    /// topology apply), waiting up to `wait_timeout` in `acquire`, with lock keys under
    /// `key_prefix` (after the backend's own prefix).
    pub fn from_backend(
        backend: RedisStateBackend,
        wait_timeout: Duration,
        key_prefix: impl AsRef<[u8]>,
    ) -> Result<RedisDistributedLock> {
        let key_prefix = key_prefix.as_ref().to_vec();
        check_prefix(backend.config().key_prefix(), &key_prefix)?;
        Ok(RedisDistributedLock {
            inner: Arc::new(Inner {
                backend,
                wait_timeout,
                key_prefix,
            }),
        })
    }

    /// The backend the locks live on: for fenced writes over the same connections.
    pub fn backend(&self) -> &RedisStateBackend {
        &self.inner.backend
    }

    /// How long `acquire` waits.
    pub fn wait_timeout(&self) -> Duration {
        self.inner.wait_timeout
    }

    /// The backend key of lock `name`, checked against the backend's key limit, in a
    /// buffer with room for `extra` more bytes (what the caller appends, so that one
    /// allocation serves a whole request).
    fn key(&self, name: &str, extra: usize) -> Result<Vec<u8>> {
        let key = lock_key(&self.inner.key_prefix, name, extra);
        let limit = self.inner.backend.capabilities().max_key_len;
        if key.len() + FENCE_SUFFIX.len() > limit {
            return Err(StateError::invalid_input(format!(
                "lock `{name}` needs Redis keys of {} bytes (the key prefix, the name with \
                 `}}` and `%` percent-encoded, and `{}`), over the backend's max_key_len of \
                 {limit}; use a shorter name or prefix",
                key.len() + FENCE_SUFFIX.len(),
                String::from_utf8_lossy(FENCE_SUFFIX),
            )));
        }
        Ok(key)
    }

    /// Releases `name` if it holds `owner` with `token`: true if it did.
    ///
    /// A release whose reply was lost is sent once more: compare-and-delete changes
    /// nothing the second time, and its answer says whether the lock was still held. If it
    /// was not, this release or the end of the lease freed it, and which one is unknown: the
    /// error says so instead of reporting `NotOwner` for a release that may have worked.
    async fn release_held(&self, name: &str, owner: &str, token: FencingToken) -> Result<bool> {
        // One buffer: the key, then the script's argument `"<owner> <token>"`.
        let mut digits = itoa::Buffer::new();
        let token = digits.format(token.0).as_bytes();
        let mut buf = self.key(name, owner.len() + 1 + token.len())?;
        let key_len = buf.len();
        buf.extend_from_slice(owner.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(token);
        let (key, held) = buf.split_at(key_len);
        let (keys, args): (&[&[u8]], &[&[u8]]) = (&[key], &[held]);
        let send = || {
            self.inner.backend.eval_script(
                "release of a lock",
                Idempotency::NotIdempotent,
                &RELEASE,
                keys,
                args,
            )
        };
        match send().await {
            Ok(reply) => Ok(int_reply("release", name, &reply)? == 1),
            Err(lost) if lost.outcome_unknown() => {
                let reply = send().await.map_err(|e| name_error(e, name))?;
                if int_reply("release", name, &reply)? == 1 {
                    return Ok(true);
                }
                Err(StateError::new(
                    lost.kind(),
                    format!(
                        "release of lock `{name}`: the reply was lost and the lock is no \
                         longer held; this release or the end of its lease freed it, which \
                         one is unknown"
                    ),
                )
                .with_outcome_unknown()
                .with_source(lost))
            }
            Err(e) => Err(name_error(e, name)),
        }
    }

    /// [`DistributedLock::try_acquire_as`] for an owner given as `&str` or as a `String`,
    /// which then moves into the guard.
    async fn acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: impl AsRef<str> + Into<String>,
    ) -> Result<Option<LockGuard>> {
        check_lock_name(name)?;
        let mut px_digits = itoa::Buffer::new();
        let px = px_digits.format(ttl_millis(ttl)?).as_bytes();
        let owner_len = owner.as_ref().len();
        if owner_len > MAX_OWNER_LEN {
            return Err(StateError::invalid_input(format!(
                "the owner token is {owner_len} bytes, over the limit of {MAX_OWNER_LEN}"
            )));
        }
        // One buffer: the lock key, then its counter key.
        let mut keys = self.key(name, FENCE_SUFFIX.len())?;
        let key_len = keys.len();
        keys.extend_from_slice(FENCE_SUFFIX);
        // Before the request: the guard's deadline can only be earlier than the server's.
        let started = Instant::now();
        let reply = self
            .inner
            .backend
            .eval_script(
                "acquire of a lock",
                // The script is idempotent for one owner: a re-send after a lost reply finds
                // the lock held by this owner and returns the same token.
                Idempotency::Idempotent,
                &ACQUIRE,
                &[&keys[..key_len], &keys],
                &[owner.as_ref().as_bytes(), px],
            )
            .await
            .map_err(|e| name_error(e, name))?;
        if reply == Value::Nil {
            return Ok(None);
        }
        let token = token_reply(name, &reply)?;
        let state = RedisGuardState {
            lock: self.clone(),
            token,
        };
        Ok(Some(LockGuard::new(
            name,
            owner,
            token,
            deadline(started, ttl),
            Some(Box::new(state)),
        )))
    }
}

/// `prefix` + `{` + the name with `%` and `}` percent-encoded + `}`.
///
/// Encoding `}` keeps the hash tag from ending inside the name (so it is never empty and
/// always ends at our closing brace, whatever the name holds), and encoding `%` keeps the
/// mapping one-to-one. A `{` inside the tag is harmless: only the first `{` opens it.
fn lock_key(prefix: &[u8], name: &str, extra: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + name.len() + 2 + extra);
    key.extend_from_slice(prefix);
    key.push(b'{');
    for &b in name.as_bytes() {
        match b {
            b'%' => key.extend_from_slice(b"%25"),
            b'}' => key.extend_from_slice(b"%7D"),
            other => key.push(other),
        }
    }
    key.push(b'}');
    key
}

/// The counter key beside a lock key: the same hash tag, so the same slot. (Requests build
/// both keys in one buffer; this is the same layout, for the tests.)
#[cfg(test)]
fn fence_key(lock_key: &[u8]) -> Vec<u8> {
    let mut key = lock_key.to_vec();
    key.extend_from_slice(FENCE_SUFFIX);
    key
}

/// Refuses prefixes that would put a lock key and its counter key in different Cluster
/// slots: the Cluster hashes the part between the first `{` and the next `}`, and an empty
/// tag (`{}`) makes it hash the whole key instead. A non-empty tag inside the prefix is
/// allowed (every lock then shares its slot).
fn check_prefix(backend_prefix: &[u8], lock_prefix: &[u8]) -> Result<()> {
    let combined: Vec<u8> = backend_prefix.iter().chain(lock_prefix).copied().collect();
    let Some(open) = combined.iter().position(|&b| b == b'{') else {
        return Ok(());
    };
    if combined.get(open + 1) == Some(&b'}') {
        return Err(StateError::config(format!(
            "the lock key prefix `{}` (backend prefix then lock prefix) contains an empty \
             hash tag `{{}}`, which would put a lock and its fencing counter in different \
             Cluster slots; remove the braces",
            String::from_utf8_lossy(&combined)
        )));
    }
    Ok(())
}

/// An integer reply of a lock script.
fn int_reply(operation: &str, name: &str, reply: &Value) -> Result<i64> {
    match reply {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(operation, name, other)),
    }
}

fn unexpected(operation: &str, name: &str, reply: &Value) -> StateError {
    StateError::new(
        ErrorKind::Backend,
        format!(
            "{operation} of lock `{name}`: unexpected reply from Redis ({reply:?}); is another \
             program writing the lock's keys?"
        ),
    )
}

/// The fencing token in an acquire reply.
pub(crate) fn token_reply(name: &str, reply: &Value) -> Result<FencingToken> {
    let text = match reply {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s.as_str()),
        _ => None,
    };
    text.and_then(|t| t.parse::<u64>().ok())
        .map(FencingToken)
        .ok_or_else(|| unexpected("acquire", name, reply))
}

/// `start + ttl`, or `start` in the (theoretical) case that overflows: a deadline may only
/// err towards the past.
fn deadline(start: Instant, ttl: Duration) -> Instant {
    start.checked_add(ttl).unwrap_or(start)
}

/// What a Redis guard carries: the lock (a cheap handle on the connections) to release
/// itself on drop, and the token to release.
#[derive(Debug)]
struct RedisGuardState {
    lock: RedisDistributedLock,
    token: FencingToken,
}

impl GuardState for RedisGuardState {
    fn release_on_drop(self: Box<Self>, name: &str, owner: &str) {
        // Outside a runtime nothing can be sent without blocking: the lease expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (name, owner) = (name.to_owned(), owner.to_owned());
        // Best effort: if it fails (or the runtime is shutting down), the lease expires.
        runtime.spawn(async move {
            let _ = self.lock.release_held(&name, &owner, self.token).await;
        });
    }
}

#[async_trait]
impl DistributedLock for RedisDistributedLock {
    async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>> {
        self.acquire_as(name, ttl, new_owner_token()).await
    }

    async fn try_acquire_as(
        &self,
        name: &str,
        ttl: Duration,
        owner: &str,
    ) -> Result<Option<LockGuard>> {
        self.acquire_as(name, ttl, owner).await
    }

    async fn acquire(&self, name: &str, ttl: Duration) -> Result<LockGuard> {
        crate::wait::acquire_waiting(self, name, ttl, self.inner.wait_timeout).await
    }

    async fn extend(&self, guard: &mut LockGuard, ttl: Duration) -> Result<()> {
        let px = ttl_millis(ttl)?.to_string();
        let name = guard.name();
        let key = self.key(name, 0)?;
        let held = format!("{} {}", guard.owner(), guard.fencing_token().0);
        let started = Instant::now();
        let reply = self
            .inner
            .backend
            .eval_script(
                &format!("extend of lock `{name}`"),
                // Compare-and-expire: a re-send sets the same lease again.
                Idempotency::Idempotent,
                &EXTEND,
                &[&key],
                &[held.as_bytes(), px.as_bytes()],
            )
            .await?;
        if int_reply("extend", name, &reply)? != 1 {
            return Err(StateError::not_owner(name, "extend"));
        }
        guard.set_deadline(deadline(started, ttl));
        Ok(())
    }

    async fn release(&self, mut guard: LockGuard) -> Result<()> {
        // Taken first: whatever happens below, Drop sends no second release.
        drop(guard.take_state());
        let (name, owner, token) = (guard.name(), guard.owner(), guard.fencing_token());
        if !self.release_held(name, owner, token).await? {
            return Err(StateError::not_owner(name, "release"));
        }
        Ok(())
    }

    async fn is_locked(&self, name: &str) -> Result<bool> {
        check_lock_name(name)?;
        let key = self.key(name, 0)?;
        Ok(!matches!(self.inner.backend.ttl(&key).await?, Ttl::Missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_redis::redis::cluster_routing::Slot;

    #[test]
    fn lock_and_counter_keys_share_a_slot_whatever_the_name() {
        let names = [
            "jobs",
            "{",
            "}",
            "{}",
            "}{",
            "a}b{c",
            "{user1000}.following",
            "*",
            "[a-z]?*",
            "%7D",
            "100%",
            "ünïcødé ✓ 鍵",
            "\u{0}\u{7f}",
            " ",
        ];
        for prefix in [&b"lock:"[..], b"", b"app{", b"}x", b"{tag}lock:", b"%"] {
            for name in names {
                let key = lock_key(prefix, name, 0);
                assert_eq!(
                    Slot::for_key(&key),
                    Slot::for_key(fence_key(&key)),
                    "prefix {prefix:?}, name {name:?}"
                );
                assert!(check_prefix(b"", prefix).is_ok(), "{prefix:?}");
            }
        }
    }

    #[test]
    fn the_name_is_the_hash_tag_and_the_mapping_is_one_to_one() {
        assert_eq!(lock_key(b"lock:", "jobs", 0), b"lock:{jobs}".to_vec());
        assert_eq!(
            fence_key(&lock_key(b"lock:", "jobs", 0)),
            b"lock:{jobs}:fence".to_vec()
        );
        assert_eq!(lock_key(b"", "a}b%", 0), b"{a%7Db%25}".to_vec());
        // Distinct names, distinct keys, including names that look like escapes.
        let names = ["}", "%7D", "%257D", "%", "%25", "a:fence", "a", "a}:fence"];
        let mut keys: Vec<Vec<u8>> = names.iter().map(|n| lock_key(b"p:", n, 0)).collect();
        keys.extend(keys.clone().iter().map(|k| fence_key(k)));
        let count = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), count, "every lock and counter key is distinct");
        // Different names spread over slots (the name is the tag).
        assert_ne!(
            Slot::for_key(lock_key(b"lock:", "a", 0)),
            Slot::for_key(lock_key(b"lock:", "b", 0))
        );
    }

    #[test]
    fn an_empty_hash_tag_in_the_prefix_is_refused() {
        for (backend, lock) in [(&b"{}"[..], &b"lock:"[..]), (b"app{", b"}:"), (b"", b"x{}")] {
            let e = check_prefix(backend, lock).expect_err("empty tag");
            assert_eq!(e.kind(), ErrorKind::Config);
            assert!(e.to_string().contains("hash tag"), "{e}");
        }
        assert!(check_prefix(b"app:", b"lock:").is_ok());
        assert!(check_prefix(b"{app}", b"lock:").is_ok());
    }

    #[test]
    fn tokens_parse_from_decimal_text_only() {
        let ok = token_reply("n", &Value::BulkString(b"1700000000000001".to_vec()));
        assert_eq!(ok.ok(), Some(FencingToken(1_700_000_000_000_001)));
        for bad in [
            Value::BulkString(b"1.7e+15".to_vec()),
            Value::Int(5),
            Value::BulkString(b"".to_vec()),
        ] {
            let e = token_reply("n", &bad).expect_err("not a decimal token");
            assert_eq!(e.kind(), ErrorKind::Backend);
        }
    }

    #[test]
    fn config_debug_hides_the_password() {
        let config = RedisLockConfig::from_url("redis://:hunter2-secret@127.0.0.1:6379")
            .expect("valid URL")
            .with_key_prefix("locks:");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("locks:"), "{shown}");
        assert_eq!(config.wait_timeout(), DEFAULT_WAIT_TIMEOUT);
    }
}
