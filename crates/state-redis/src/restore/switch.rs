//! The switch: one script call per staging hash, and how its outcome is settled when the
//! reply does not come.
//!
//! A switch whose reply is lost (a timeout: a long switch outlives `response_timeout`; a
//! dropped connection) may have run, be running, or never run. It is never sent again.
//! Instead [`SETTLE`] runs (safe to repeat): while our switch runs the server answers
//! `BUSY`, which means "not executed" and is waited out; then the ticket tells. `done:N`:
//! the switch ran. `ready`: it has not run, and the settle script sets the ticket to
//! `aborted`, so that the switch, if it arrives later, changes nothing: the restore failed
//! and the namespace is as it was.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::Value;
use state_core::{ErrorKind, Idempotency, ImportMode, Result, StateError};

use super::Restore;
use crate::driver::BATCH_CONCURRENCY;
use crate::keys;
use crate::scripts::Script;

/// How long the client waits out `BUSY` replies (a script running on the server, ours or
/// another client's) before it gives up.
const BUSY_WAIT: Duration = Duration::from_secs(15 * 60);
/// The pause between two tries while the server is busy.
const BUSY_PAUSE: Duration = Duration::from_millis(50);

/// KEYS[1] the ticket, KEYS[2] the staged entries, KEYS[3] the old keys (Cluster Replace).
/// ARGV[1]: `merge`, `scan` (Replace: find the old keys by SCAN) or `list` (Replace: the
/// old keys are KEYS[3]'s fields); ARGV[2] the MATCH pattern of the namespace, ARGV[3]
/// that of the fencing marks, ARGV[4] the key prefix. Returns how many keys were set.
///
/// Everything that could fail (the ticket, the ACL) is checked before the first write: a
/// script that errs after writing keeps its writes, and this one must be all or nothing.
/// The shebang makes the server check memory once, before the script starts, and never
/// in the middle of it.
static SWITCH: Script = Script::new(
    r"#!lua
if redis.call('GET', KEYS[1]) ~= 'ready' then
  return redis.error_reply('ERR restore ticket not ready: the staged state expired or was settled already')
end
for _, cmd in ipairs({{'HSCAN', KEYS[2], '0'}, {'HEXISTS', KEYS[2], 'x'}, {'SET', KEYS[1], 'x'},
    {'DEL', KEYS[1]}, {'UNLINK', KEYS[2]}, {'SCAN', '0'}}) do
  if not redis.acl_check_cmd(unpack(cmd)) then
    return redis.error_reply('NOPERM the restore switch needs ' .. cmd[1] .. ' (see the README ACL)')
  end
end
local entries = KEYS[2]
local function drop(key)
  if redis.call('HEXISTS', entries, key) == 0 then redis.call('DEL', key) end
end
local function each(cmd, key, pattern, visit)
  local cursor = '0'
  repeat
    local page
    if key then
      page = redis.call(cmd, key, cursor, 'COUNT', 1000)
    else
      page = redis.call(cmd, cursor, 'MATCH', pattern, 'COUNT', 1000)
    end
    cursor = page[1]
    visit(page[2])
  until cursor == '0'
end
if ARGV[1] == 'scan' then
  each('SCAN', nil, ARGV[2], function(found)
    for _, key in ipairs(found) do
      if not string.find(key, '^{%d+}%zstate%-') then drop(key) end
    end
  end)
  local prefix = ARGV[4]
  each('SCAN', nil, ARGV[3], function(found)
    for _, key in ipairs(found) do
      local _, last = string.find(key, '^{%d+}%zstate%-fence%z')
      if last and string.sub(key, last + 1, last + #prefix) == prefix then
        redis.call('DEL', key)
      end
    end
  end)
elseif ARGV[1] == 'list' then
  each('HSCAN', KEYS[3], nil, function(kv)
    for i = 1, #kv, 2 do drop(kv[i]) end
  end)
end
local n = 0
each('HSCAN', entries, nil, function(kv)
  for i = 1, #kv, 2 do
    local key, v = kv[i], kv[i + 1]
    local kind = string.byte(v, 1)
    if kind == 80 then
      redis.call('SET', key, string.sub(v, 2))
      n = n + 1
    elseif kind == 88 then
      local colon = string.find(v, ':', 2, true)
      redis.call('SET', key, string.sub(v, colon + 1), 'PXAT', string.sub(v, 2, colon - 1))
      n = n + 1
    else
      redis.call('DEL', key)
    end
  end
end)
redis.call('UNLINK', entries, KEYS[3])
redis.call('SET', KEYS[1], 'done:' .. n, 'KEEPTTL')
return n",
);

/// KEYS[1] the ticket. Returns `done:N` if the switch ran, else makes sure it never will
/// and returns `aborted`; nil if the ticket is gone (expired). Safe to repeat.
static SETTLE: Script = Script::new(
    r"local v = redis.call('GET', KEYS[1])
if v == 'ready' then
  redis.call('SET', KEYS[1], 'aborted', 'KEEPTTL')
  return 'aborted'
end
return v",
);

/// What the ticket said after a lost reply.
pub(super) enum Settled {
    Switched(u64),
    Aborted,
    Unknown,
}

impl Restore<'_> {
    /// Switches every touched bucket in; returns how many keys were set.
    pub(super) async fn switch(&self, mode: ImportMode) -> Result<u64> {
        let how: &[u8] = match (mode, self.backend.is_cluster()) {
            (ImportMode::Merge, _) => b"merge",
            (ImportMode::Replace, false) => b"scan",
            (ImportMode::Replace, true) => b"list",
        };
        let prefix = self.backend.prefix();
        let data = keys::prefix_pattern(prefix);
        let mut fences = b"{*}".to_vec();
        fences.extend_from_slice(&keys::escape_glob(keys::FENCE));
        fences.extend_from_slice(&data);
        let args: [&[u8]; 4] = [how, &data, &fences, prefix];
        let buckets: Vec<u16> = self.touched.iter().collect();
        let results = futures_util::stream::iter(
            buckets
                .into_iter()
                .map(|bucket| self.switch_bucket(bucket, &args)),
        )
        .buffer_unordered(BATCH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        let mut total = 0;
        for result in results {
            total += result?;
        }
        Ok(total)
    }

    async fn switch_bucket(&self, bucket: u16, args: &[&[u8]]) -> Result<u64> {
        let ticket = self.ticket_key(bucket);
        let keys: [&[u8]; 3] = [&ticket, &self.entries_key(bucket), &self.old_key(bucket)];
        let what = "restore switch";
        let reply = match self
            .call(what, Idempotency::NotIdempotent, &SWITCH, &keys, args)
            .await
        {
            Ok(reply) => reply,
            Err(e) if e.outcome_unknown() => {
                return match self.settle(&ticket).await {
                    Ok(Settled::Switched(n)) => Ok(n),
                    Ok(Settled::Aborted) => Err(StateError::new(
                        e.kind(),
                        format!(
                            "restore switch on {}: no reply in time, and it had not run; \
                             it was aborted, so the namespace is unchanged: retry the \
                             restore (with a longer response_timeout if the server is \
                             slow): {}",
                            self.backend.target(),
                            e.message()
                        ),
                    )),
                    Ok(Settled::Unknown) | Err(_) => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        match reply {
            Value::Int(n) => Ok(u64::try_from(n).unwrap_or(0)),
            Value::ServerError(e) => Err(StateError::new(
                if e.code() == "NOPERM" {
                    ErrorKind::Config
                } else {
                    ErrorKind::Backend
                },
                format!(
                    "restore switch on {} refused ({}), before changing anything: {}",
                    self.backend.target(),
                    e.code(),
                    e.details().unwrap_or("see the server's message")
                ),
            )),
            other => Err(crate::reply::unexpected(what, &other)),
        }
    }

    /// Settles the outcome of a switch whose reply was lost (see the module doc).
    pub(super) async fn settle(&self, ticket: &[u8]) -> Result<Settled> {
        let what = "restore switch check";
        // Made safe to repeat by its ticket: a lost reply is simply asked again.
        let reply = self
            .call(what, Idempotency::Idempotent, &SETTLE, &[ticket], &[])
            .await?;
        Ok(match reply {
            Value::BulkString(b) if b == b"aborted" => Settled::Aborted,
            Value::BulkString(b) => match b.strip_prefix(b"done:") {
                Some(n) => Settled::Switched(
                    std::str::from_utf8(n)
                        .ok()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                ),
                None => Settled::Unknown,
            },
            _ => Settled::Unknown,
        })
    }

    /// Runs `script` (EVALSHA, EVAL on NOSCRIPT) and returns its reply, an error reply
    /// included; a `BUSY` server (a script running, ours or another's) did not execute
    /// it, so it is sent again after a pause, for up to [`BUSY_WAIT`].
    async fn call(
        &self,
        what: &str,
        idempotency: Idempotency,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value> {
        let backend = self.backend;
        let started = Instant::now();
        loop {
            let mut reply = backend
                .write_one(what, idempotency, &script.evalsha(keys, args))
                .await?;
            if matches!(&reply, Value::ServerError(e) if e.code() == "NOSCRIPT") {
                reply = Box::pin(backend.write_one(what, idempotency, &script.eval(keys, args)))
                    .await?;
            }
            match reply {
                Value::ServerError(e) if e.code() == "BUSY" && started.elapsed() < BUSY_WAIT => {
                    tokio::time::sleep(BUSY_PAUSE).await;
                }
                other => return Ok(other),
            }
        }
    }
}
