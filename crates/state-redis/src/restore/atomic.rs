//! Standalone and Sentinel: the whole import as one `MULTI … EXEC` on a connection of its
//! own, each run of entries one multi-key command.
//!
//! 1. A pool of one connection, for this restore alone (the shared pool multiplexes other
//!    requests, which would land inside the transaction). A script checks with
//!    `redis.acl_check_cmd` that the ACL user may run every command below; if not, the
//!    caller stages and switches instead (see the parent module).
//! 2. `SET ticket ready`, `WATCH ticket`, `MULTI`, `SET ticket done:…` (queued), and for a
//!    Replace a script that deletes the namespace's keys and fencing marks (it runs at
//!    `EXEC`, so a key another client wrote meanwhile goes too).
//! 3. The entries, in chunks of [`CHUNK_ENTRIES`], each chunk one pipeline of at most three
//!    queued commands: `MSET` of its persistent entries, a script that `SET`s its expiring
//!    ones with `PXAT`, `DEL` of those that had expired (where a chunk mixes them, only a
//!    key's last entry in the chunk is kept, so the order of the three does not matter;
//!    chunks are queued in stream order, so the last entry of a key wins). Up to
//!    [`IN_FLIGHT`] chunks are on the wire at once. The server keeps the queued commands
//!    (about the size of the data) until `EXEC`; the client holds a few chunks.
//! 4. `EXEC`: the server applies everything at once. It replies nil, and applies nothing,
//!    if the ticket changed after the `WATCH`.
//!
//! Every chunk starts with a `MULTI` of its own, which the server refuses ("nested") while
//! the transaction is open: a chunk that gets `OK` instead went over a connection dialled
//! again after the first one broke (whose transaction the server dropped), and the restore
//! fails there, before anything could be applied (an `EXEC` sent on such a connection could
//! only run what that connection queued, never the ticket's mark). Any error before `EXEC`
//! (the stream's, a bad entry, a refused command, a lost connection) drops the connection,
//! which discards the transaction: the namespace is unchanged. An `EXEC` whose reply is
//! lost is settled by its ticket, as a switch is (see [`super::switch`]): the settle
//! script, from another connection, finds `done:…`, or sets the ticket to `aborted`, which
//! makes a late `EXEC` fail through the `WATCH`.
//!
//! `EXEC` blocks the server while it runs (about half a microsecond a key with `MSET`,
//! more for entries with an expiry, which go through a script): other clients wait, and
//! are not told `BUSY`. The queued commands hold about the data's size of server memory
//! until then (a `maxmemory` reached while queueing fails the restore, unchanged).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::SystemTime;

use bytes::Bytes;
use redis::{Cmd, Pipeline, Value};
use state_core::{BoxStream, Entry, ErrorKind, Idempotency, ImportMode, Result, StateError};

use super::switch::Settled;
use super::{Restore, unix_ms};
use crate::config::ReadFrom;
use crate::conn::Pool;
use crate::error::{Failure, to_state};
use crate::keys;
use crate::scripts::Script;

/// The ticket once the transaction ran (the settle script reads `done:…`).
const DONE: &str = "done:transaction";

/// Entries per chunk: one `MSET` of this many keys costs the server a fraction of as many
/// `SET`s.
const CHUNK_ENTRIES: usize = 1000;
/// Bytes per chunk, so that large values keep the client's memory bounded too.
const CHUNK_BYTES: usize = 1 << 20;
/// Chunks sent and not yet acknowledged: enough to keep the socket full.
const IN_FLIGHT: usize = 8;

/// ARGV[1] a key of the namespace, ARGV[2] `scan` for a Replace; KEYS[1] the ticket.
/// Returns `ok`, or the first command the ACL user may not run.
static CAN: Script = Script::new(
    r"local checks = {{'WATCH', KEYS[1]}, {'MULTI'}, {'EXEC'}, {'SET', KEYS[1], 'x'},
  {'DEL', KEYS[1]}, {'MSET', ARGV[1], 'x'}, {'SET', ARGV[1], 'x'}, {'DEL', ARGV[1]}}
if ARGV[2] == 'scan' then table.insert(checks, {'SCAN', '0'}) end
for _, cmd in ipairs(checks) do
  if not redis.acl_check_cmd(unpack(cmd)) then return cmd[1] end
end
return 'ok'",
);

/// Replace: deletes the namespace's keys (ARGV[1] their MATCH pattern; internal keys are
/// kept) and its fencing marks (ARGV[2] their pattern, ARGV[3] the key prefix).
static CLEAR: Script = Script::new(
    r"#!lua
local function each(pattern, visit)
  local cursor = '0'
  repeat
    local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = page[1]
    visit(page[2])
  until cursor == '0'
end
each(ARGV[1], function(found)
  for _, key in ipairs(found) do
    if not string.find(key, '^{%d+}%zstate%-') then redis.call('DEL', key) end
  end
end)
local prefix = ARGV[3]
each(ARGV[2], function(found)
  for _, key in ipairs(found) do
    local _, last = string.find(key, '^{%d+}%zstate%-fence%z')
    if last and string.sub(key, last + 1, last + #prefix) == prefix then
      redis.call('DEL', key)
    end
  end
end)
return 0",
);

/// KEYS the keys; ARGV[2i-1] the value of KEYS[i], ARGV[2i] its expiry (Unix ms).
static SET_PXAT: Script = Script::new(
    r"for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[2 * i - 1], 'PXAT', ARGV[2 * i])
end
return #KEYS",
);

/// One entry, ready to queue: its Redis key, value, and what to do.
struct Item {
    key: Vec<u8>,
    value: Bytes,
    action: Action,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Set,
    /// `SET … PXAT` this Unix ms.
    SetUntil(u64),
    /// The entry had expired: the key must end up absent.
    Delete,
}

type Flight<'f> =
    Pin<Box<dyn Future<Output = std::result::Result<Vec<Value>, Failure>> + Send + 'f>>;

/// The restore's own connection and what it has queued.
pub(super) struct Transaction<'r, 'a> {
    restore: &'r Restore<'a>,
    pool: Pool,
    ticket: Vec<u8>,
}

impl<'r, 'a> Transaction<'r, 'a> {
    /// Opens the connection and checks the ACL; `None` if the user may not run what the
    /// transaction needs (the caller stages instead).
    pub(super) async fn open(restore: &'r Restore<'a>, mode: ImportMode) -> Result<Option<Self>> {
        let backend = restore.backend;
        let mut config = backend.inner.config.clone();
        config.pool_min = 1;
        config.pool_max = 1;
        config.read_from = ReadFrom::Primary;
        let pool = Pool::connect(&config).await?;
        let ticket = restore.ticket_key(0);
        let mut probe = backend.prefix().to_vec();
        probe.extend_from_slice(b"x");
        let how: &[u8] = if mode == ImportMode::Replace {
            b"scan"
        } else {
            b"merge"
        };
        let tx = Transaction {
            restore,
            pool,
            ticket,
        };
        let reply = tx
            .one("restore ACL check", CAN.eval(&[&tx.ticket], &[&probe, how]))
            .await?;
        Ok(match reply {
            Value::BulkString(b) if b == b"ok" => Some(tx),
            _ => None,
        })
    }

    /// Runs the restore; the caller deletes the ticket afterwards, whatever happened.
    pub(super) async fn run(
        &self,
        mut entries: BoxStream<'_, Result<Entry>>,
        mode: ImportMode,
    ) -> Result<u64> {
        let mut begin = redis::pipe();
        begin
            .cmd("SET")
            .arg(&self.ticket)
            .arg("ready")
            .arg("PXAT")
            .arg(self.restore.expire_at);
        begin.cmd("WATCH").arg(&self.ticket);
        begin.cmd("MULTI");
        // The mark of the commit, queued first: only the transaction opened here can set
        // it, never one a connection dialled again would hold.
        begin.cmd("SET").arg(&self.ticket).arg(DONE).arg("KEEPTTL");
        if mode == ImportMode::Replace {
            let prefix = self.restore.backend.prefix();
            let data = keys::prefix_pattern(prefix);
            let mut fences = b"{*}".to_vec();
            fences.extend_from_slice(&keys::escape_glob(keys::FENCE));
            fences.extend_from_slice(&data);
            begin.add_command(CLEAR.eval(&[], &[&data, &fences, prefix]));
        }
        let replies = self
            .pool
            .pipeline(&begin, Idempotency::NotIdempotent)
            .await
            .map_err(|f| self.failed(f))?;
        self.check_begin(&replies)?;

        let mut flights: VecDeque<Flight<'_>> = VecDeque::new();
        let mut items: Vec<Item> = Vec::with_capacity(CHUNK_ENTRIES);
        let mut bytes = 0;
        let mut live = 0u64;
        let mut now = SystemTime::now();
        while let Some(entry) = state_core::stream::next(&mut entries).await {
            let item = self.item(entry?, now)?;
            if item.action != Action::Delete {
                live += 1;
            }
            bytes += item.key.len() + item.value.len();
            items.push(item);
            if items.len() < CHUNK_ENTRIES && bytes < CHUNK_BYTES {
                continue;
            }
            let pipe = chunk_pipeline(std::mem::take(&mut items));
            bytes = 0;
            now = SystemTime::now();
            self.send(&mut flights, pipe).await?;
        }
        if !items.is_empty() {
            self.send(&mut flights, chunk_pipeline(items)).await?;
        }
        while let Some(flight) = flights.pop_front() {
            check_queued(self.target(), flight.await.map_err(|f| self.failed(f))?)?;
        }
        self.commit(live).await
    }

    /// The queued form of `entry`, after the checks a write makes.
    fn item(&self, entry: Entry, now: SystemTime) -> Result<Item> {
        if entry.metadata.is_some() {
            return Err(StateError::new(
                ErrorKind::Unsupported,
                "the redis backend does not store entry metadata; strip it before \
                 importing, or use a backend with metadata",
            ));
        }
        let backend = self.restore.backend;
        let key = backend.full_key(&entry.key)?;
        backend.check_value(&entry.value)?;
        let action = match entry.expires_at {
            _ if entry.is_expired_at(now) => Action::Delete,
            // PXAT takes a positive signed 64-bit time: a later one is as good as never.
            Some(at) => Action::SetUntil(unix_ms(at).clamp(1, i64::MAX as u64)),
            None => Action::Set,
        };
        Ok(Item {
            key,
            value: entry.value,
            action,
        })
    }

    /// Queues `pipe` behind the chunks in flight, first waiting for the oldest if
    /// [`IN_FLIGHT`] are out.
    async fn send<'f>(&'f self, flights: &mut VecDeque<Flight<'f>>, pipe: Pipeline) -> Result<()> {
        if flights.len() >= IN_FLIGHT
            && let Some(oldest) = flights.pop_front()
        {
            check_queued(self.target(), oldest.await.map_err(|f| self.failed(f))?)?;
        }
        let pool = &self.pool;
        let mut flight: Flight<'f> =
            Box::pin(async move { pool.pipeline(&pipe, Idempotency::NotIdempotent).await });
        // Polled once now, so that it takes its place on the connection before the next
        // chunk is made: chunks reach the server in stream order.
        match std::future::poll_fn(|cx| Poll::Ready(flight.as_mut().poll(cx))).await {
            Poll::Ready(replies) => {
                check_queued(self.target(), replies.map_err(|f| self.failed(f))?)
            }
            Poll::Pending => {
                flights.push_back(flight);
                Ok(())
            }
        }
    }

    /// Sends `EXEC`; settles the outcome by the ticket if the reply is lost.
    async fn commit(&self, live: u64) -> Result<u64> {
        let mut end = redis::pipe();
        end.cmd("MULTI");
        end.cmd("EXEC");
        let target = self.restore.backend.target();
        let replies = match self.pool.pipeline(&end, Idempotency::NotIdempotent).await {
            Ok(replies) => replies,
            Err(failure) => {
                let e = to_state("restore commit", target, failure);
                if !e.outcome_unknown() {
                    return Err(e);
                }
                return match self.restore.settle(&self.ticket).await {
                    Ok(Settled::Switched(_)) => Ok(live),
                    Ok(Settled::Aborted) => Err(StateError::new(
                        e.kind(),
                        format!(
                            "restore on {target}: no reply to EXEC in time, and it had not \
                             run; it was aborted, so the namespace is unchanged: retry the \
                             restore (with a longer response_timeout if the server is slow): \
                             {}",
                            e.message()
                        ),
                    )),
                    Ok(Settled::Unknown) | Err(_) => Err(e),
                };
            }
        };
        let mut replies = replies.into_iter();
        let exec = replies.next_back();
        check_queued(target, replies.collect())?;
        match exec {
            Some(Value::Array(results)) => {
                if let Some(Value::ServerError(e)) =
                    results.iter().find(|r| matches!(r, Value::ServerError(_)))
                {
                    return Err(StateError::new(
                        ErrorKind::Backend,
                        format!(
                            "restore on {target}: the server committed the restore but \
                             refused part of it ({}: {}); the namespace may hold a mix of \
                             the old and the new state: restore again",
                            e.code(),
                            e.details().unwrap_or("see the server's message")
                        ),
                    ));
                }
            }
            Some(Value::Nil) => {
                return Err(StateError::new(
                    ErrorKind::Backend,
                    format!(
                        "restore on {target}: the restore's ticket changed before EXEC (it \
                         expired, or a settle aborted it), so nothing was applied: retry"
                    ),
                ));
            }
            Some(Value::ServerError(e)) => return Err(refused(target, &e)),
            other => {
                return Err(crate::reply::unexpected(
                    "restore commit",
                    &other.unwrap_or(Value::Nil),
                ));
            }
        }
        self.wait_replicas().await?;
        Ok(live)
    }

    /// With `wait_replicas`: `WAIT` on this connection, as every write does.
    async fn wait_replicas(&self) -> Result<()> {
        let Some(w) = self.restore.backend.inner.config.wait else {
            return Ok(());
        };
        let mut wait = redis::cmd("WAIT");
        wait.arg(w.replicas)
            .arg(u64::try_from(w.timeout.as_millis()).unwrap_or(u64::MAX));
        let acked = match self.one("restore WAIT", wait).await? {
            Value::Int(n) => n,
            _ => 0,
        };
        if acked < i64::from(w.replicas) {
            return Err(StateError::new(
                ErrorKind::Unavailable,
                format!(
                    "restore on {}: only {acked} of {} replicas acknowledged it within {:?}; \
                     it is on the primary but may be lost in a failover",
                    self.restore.backend.target(),
                    w.replicas,
                    w.timeout
                ),
            )
            .with_outcome_unknown());
        }
        Ok(())
    }

    /// Sends one command on this connection; its reply, an error reply included.
    async fn one(&self, what: &str, cmd: Cmd) -> Result<Value> {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        let mut replies = self
            .pool
            .pipeline(&pipe, Idempotency::NotIdempotent)
            .await
            .map_err(|f| to_state(what, self.restore.backend.target(), f))?;
        Ok(replies.pop().unwrap_or(Value::Nil))
    }

    /// The replies to SET ticket, WATCH, MULTI and (Replace) the queued clear script.
    fn check_begin(&self, replies: &[Value]) -> Result<()> {
        let target = self.restore.backend.target();
        for (i, reply) in replies.iter().enumerate() {
            match reply {
                Value::Okay => {}
                Value::SimpleString(s) if i >= 3 && s == "QUEUED" => {}
                Value::ServerError(e) => return Err(refused(target, e)),
                other => return Err(crate::reply::unexpected("restore begin", other)),
            }
        }
        Ok(())
    }

    fn target(&self) -> &str {
        self.restore.backend.target()
    }

    /// A failure before `EXEC`: whatever it was, the transaction was never committed.
    fn failed(&self, failure: Failure) -> StateError {
        let e = to_state("restore", self.restore.backend.target(), failure);
        StateError::new(
            e.kind(),
            format!(
                "{}; the restore was not committed, so the namespace is unchanged: retry",
                e.message()
            ),
        )
    }
}

/// A chunk's pipeline: the guard `MULTI`, then its `MSET`, `SET … PXAT` script and `DEL`.
fn chunk_pipeline(mut items: Vec<Item>) -> Pipeline {
    if items.windows(2).any(|w| match w {
        [a, b] => std::mem::discriminant(&a.action) != std::mem::discriminant(&b.action),
        _ => false,
    }) {
        keep_last_per_key(&mut items);
    }
    let mut pipe = redis::pipe();
    pipe.cmd("MULTI");
    let (mut sets, mut until, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    for item in items {
        match item.action {
            Action::Set => sets.push(item),
            Action::SetUntil(_) => until.push(item),
            Action::Delete => gone.push(item),
        }
    }
    if !sets.is_empty() {
        let data: usize = sets.iter().map(|i| i.key.len() + i.value.len()).sum();
        let mut mset = Cmd::with_capacity(1 + 2 * sets.len(), 4 + data);
        mset.arg("MSET");
        for item in &sets {
            mset.arg(&item.key).arg(&item.value[..]);
        }
        pipe.add_command(mset);
    }
    if !until.is_empty() {
        let keys: Vec<&[u8]> = until.iter().map(|i| &i.key[..]).collect();
        let ms: Vec<String> = until
            .iter()
            .map(|i| match i.action {
                Action::SetUntil(ms) => ms.to_string(),
                _ => "1".to_string(),
            })
            .collect();
        let args: Vec<&[u8]> = until
            .iter()
            .zip(&ms)
            .flat_map(|(i, ms)| [&i.value[..], ms.as_bytes()])
            .collect();
        pipe.add_command(SET_PXAT.eval(&keys, &args));
    }
    if !gone.is_empty() {
        let mut del = Cmd::with_capacity(
            1 + gone.len(),
            3 + gone.iter().map(|i| i.key.len()).sum::<usize>(),
        );
        del.arg("DEL");
        for item in &gone {
            del.arg(&item.key);
        }
        pipe.add_command(del);
    }
    pipe
}

/// Drops every entry of `items` that a later one for the same key overrides.
fn keep_last_per_key(items: &mut Vec<Item>) {
    let mut last: HashMap<&[u8], usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        last.insert(&item.key, i);
    }
    let keep: Vec<bool> = items
        .iter()
        .enumerate()
        .map(|(i, item)| last.get(&item.key[..]) == Some(&i))
        .collect();
    drop(last);
    let mut flags = keep.into_iter();
    items.retain(|_| flags.next().unwrap_or(true));
}

/// A chunk's replies: the guard `MULTI` refused as nested (the transaction is still
/// open on this connection), then `QUEUED` for each command.
fn check_queued(target: &str, replies: Vec<Value>) -> Result<()> {
    let mut replies = replies.into_iter();
    match replies.next() {
        Some(Value::ServerError(e)) if e.details().is_some_and(|d| d.contains("nested")) => {}
        Some(Value::Okay) => {
            return Err(StateError::new(
                ErrorKind::Connection,
                "restore: the connection was lost and dialled again in the middle of the \
                 restore; the server dropped the transaction, so the namespace is \
                 unchanged: retry",
            ));
        }
        Some(other) => return Err(crate::reply::unexpected("restore MULTI", &other)),
        None => return Err(crate::reply::unexpected("restore MULTI", &Value::Nil)),
    }
    for reply in replies {
        match reply {
            Value::SimpleString(s) if s == "QUEUED" => {}
            Value::ServerError(e) => return Err(refused(target, &e)),
            other => return Err(crate::reply::unexpected("restore chunk", &other)),
        }
    }
    Ok(())
}

/// The server refused a command of the transaction, so it applies nothing.
fn refused(target: &str, e: &redis::ServerError) -> StateError {
    StateError::new(
        if e.code() == "NOPERM" {
            ErrorKind::Config
        } else {
            ErrorKind::Backend
        },
        format!(
            "restore on {target} refused ({}), before changing anything: {}",
            e.code(),
            e.details().unwrap_or("see the server's message")
        ),
    )
}
