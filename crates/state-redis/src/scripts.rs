//! The Lua scripts, sent by EVALSHA and loaded by EVAL when the server lacks them.
//!
//! Each touches only the keys it declares, all in one hash slot, so they run in Cluster too.

use std::sync::OnceLock;

use redis::Cmd;

/// A Lua script with its SHA1, computed once, for
/// [`RedisStateBackend::eval_script`](crate::RedisStateBackend::eval_script): sent by
/// `EVALSHA`, and by `EVAL` (which caches it on the server) when the server answers
/// `NOSCRIPT`. Declare it once, as a `static`.
///
/// ```
/// use state_redis::Script;
///
/// static EXISTS: Script = Script::new("return redis.call('EXISTS', KEYS[1])");
/// ```
#[derive(Debug)]
pub struct Script {
    body: &'static str,
    sha: OnceLock<String>,
}

impl Script {
    /// The script with this Lua body.
    pub const fn new(body: &'static str) -> Self {
        Script {
            body,
            sha: OnceLock::new(),
        }
    }

    fn sha(&self) -> &str {
        self.sha
            .get_or_init(|| redis::Script::new(self.body).get_hash().to_string())
    }

    /// `EVALSHA sha numkeys keys… args…`.
    pub(crate) fn evalsha(&self, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        Self::command("EVALSHA", self.sha(), keys, args)
    }

    /// `EVAL body numkeys keys… args…` (which also caches the script on the server).
    pub(crate) fn eval(&self, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        Self::command("EVAL", self.body, keys, args)
    }

    /// `SCRIPT LOAD body`.
    pub(crate) fn load(&self) -> Cmd {
        redis::cmd("SCRIPT").arg("LOAD").arg(self.body).clone()
    }

    /// `name script numkeys keys… args…`, allocated once at its final size (growing the
    /// command buffer argument by argument showed in lock profiles).
    fn command(name: &str, script: &str, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        let data = name.len()
            + script.len()
            + 20
            + keys.iter().chain(args).map(|a| a.len()).sum::<usize>();
        let mut cmd = Cmd::with_capacity(3 + keys.len() + args.len(), data);
        cmd.arg(name).arg(script).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }
}

/// KEYS[1] data key; ARGV: the expected value, the new value. Returns 1 if swapped, else 0.
///
/// A swap with no expected value is `SET … NX`, one plain command, which costs the server
/// less than any script. This one and [`CAS_PX`] take only the arguments they use, where
/// one script once took flags for all three cases (its server time per call, 2.85-2.91 µs
/// at 64 tasks, was within the spread of this one's, 2.93-3.06 µs).
pub(crate) static CAS: Script = Script::new(
    r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1",
);

/// [`CAS`] with the default TTL: ARGV[3] is its PX in milliseconds.
pub(crate) static CAS_PX: Script = Script::new(
    r"if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1",
);

/// KEYS[1] data key, KEYS[2] its fencing key; ARGV: the token as 20 zero-padded digits
/// (so that string order is numeric order, with no float rounding of 64-bit tokens), the
/// value, the PX of the default TTL or "". Returns 0 when written, or the higher token
/// that already wrote the key.
pub(crate) static FENCED_PUT: Script = Script::new(
    r"local cur = redis.call('GET', KEYS[2])
if cur and cur > ARGV[1] then return cur end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
redis.call('SET', KEYS[2], ARGV[1])
return 0",
);

/// KEYS[1]: returns nil if absent, else {value, pttl}, read together.
///
/// The expiry comes as the server's absolute `PEXPIRETIME` (Redis 7.0+; flag 1), so an
/// export carries the exact instant whatever the round trip took; Redis 6.2 has no such
/// command, and its `PTTL` (flag 0) is added to the client's clock on arrival.
pub(crate) static GET_WITH_PTTL: Script = Script::new(
    r"local v = redis.call('GET', KEYS[1])
if not v then return false end
local at = redis.pcall('PEXPIRETIME', KEYS[1])
if type(at) == 'number' then return {v, at, 1} end
return {v, redis.call('PTTL', KEYS[1]), 0}",
);
