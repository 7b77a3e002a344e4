//! The server dies in the middle of a restore (RELIABILITY 22, the server side; the client
//! side is checkpoint_restore_kill.rs): `statectl checkpoint restore ID --store file:///…`
//! runs as a child process and, part-way, the server under it goes away:
//!
//! - **Redis**: a private redis-server with `appendonly yes` and `appendfsync always` (so
//!   what it acknowledged survives) is SIGKILLed, then started again on the same port and
//!   directory, which reloads its append-only file;
//! - **PostgreSQL**: the restoring session is ended by `pg_terminate_backend` from another
//!   connection (the shared server, a schema of the test's own); and a private server is
//!   SIGKILLed whole (postmaster and children), then restarted, running crash recovery.
//!
//! Afterwards the namespace holds exactly its old contents or exactly the checkpoint's,
//! never a mix; a restore that failed exited 3 with one sentence on stderr, and one that
//! succeeded (a client may ride out the outage and finish) left the checkpoint's.
//!
//! "Part-way" is read from two sides, each bounded in time: the child's `/proc/PID/io`
//! `rchar` (how much of the data file it has read: the import consumes the file as it
//! goes) and the server (Redis: a client with commands queued in a `MULTI`, or keys
//! staged beyond the old state; PostgreSQL: the restore's session inside a transaction).

#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use state_core::{Bytes, Entry, ImportMode, StateError};
use tempfile::TempDir;
use testing::services::{LocalPostgres, LocalPostgresOptions, LocalRedis, LocalRedisOptions};

mod common;

use common::{one_sentence_failure, service_url, statectl, text, unique, with_param};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How long a restore may take to reach its kill point, and to exit after the kill.
const ROUND_LIMIT: Duration = Duration::from_secs(180);

/// What a backend holds: every (key, value), sorted.
type Contents = Vec<(Bytes, Bytes)>;

/// The two states: `old` is what the target holds before each restore, `new` the
/// checkpoint's. They share half their keys, with different values, so any mix shows.
struct States {
    old: Contents,
    new: Contents,
}

impl States {
    fn new(keys: usize) -> Self {
        let make = |range: std::ops::Range<usize>, tag: u8| -> Contents {
            range
                .map(|i| {
                    let key = Bytes::from(format!("k{i:07}"));
                    let value = Bytes::from(format!("{}{i:039}", tag as char));
                    (key, value)
                })
                .collect()
        };
        States {
            new: make(0..keys, b'N'),
            old: make(keys / 2..keys + keys / 2, b'O'),
        }
    }

    /// Which whole state `found` is; a test failure describing the mix if neither.
    fn which(&self, found: &Contents, round: &str) -> &'static str {
        if *found == self.old {
            return "old";
        }
        if *found == self.new {
            return "new";
        }
        let count = |tag: u8| found.iter().filter(|kv| kv.1.first() == Some(&tag)).count();
        panic!(
            "{round}: the namespace holds a mix: {} entries, {} with old values and {} with \
             the checkpoint's (old state {} entries, checkpoint {})",
            found.len(),
            count(b'O'),
            count(b'N'),
            self.old.len(),
            self.new.len()
        );
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, std::io::Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Replaces the whole namespace of `url` with `contents`.
async fn replace(url: &str, contents: &Contents) -> Result<(), StateError> {
    let backend = distributed_state::connect(url).await?;
    let entries = contents
        .iter()
        .map(|(k, v)| Ok(Entry::new(k.clone(), v.clone())));
    backend
        .import(state_core::stream::iter(entries), ImportMode::Replace)
        .await?;
    Ok(())
}

async fn read_all(url: &str) -> Result<Contents, StateError> {
    let backend = distributed_state::connect(url).await?;
    let entries = state_core::stream::try_collect(backend.scan(b"")).await?;
    let mut contents: Contents = entries.into_iter().map(|e| (e.key, e.value)).collect();
    contents.sort();
    Ok(contents)
}

/// Bytes the process `pid` has read through `read` calls so far.
fn rchar(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("rchar: ")?.trim().parse().ok())
}

/// Takes a checkpoint of `url` (holding the new state) into a directory store; its id and
/// the data file's size.
fn checkpoint(dir: &Path, url: &str, store: &str) -> Result<(String, u64), String> {
    let out = statectl(dir, Some(url), &["checkpoint", "create", "--store", store])
        .output()
        .map_err(|e| format!("cannot run statectl: {e}"))?;
    if !out.status.success() {
        return Err(format!("create: {}", text(&out.stderr)));
    }
    let id = text(&out.stdout).trim().to_owned();
    let data = dir.join("checkpoints").join(format!("{id}.data"));
    let size = std::fs::metadata(&data)
        .map_err(|e| format!("{}: {e}", data.display()))?
        .len();
    Ok((id, size))
}

/// Starts `statectl checkpoint restore ID` and waits until it has read `fraction` of the
/// data file and `server_busy` says the server holds part of the restore; `Err` if it
/// exits first or the limit passes.
fn start_restore(
    dir: &Path,
    url: &str,
    store: &str,
    (id, size): (&str, u64),
    fraction: f64,
    server_busy: &dyn Fn() -> bool,
) -> Result<Child, String> {
    let mut child = statectl(
        dir,
        Some(url),
        &["checkpoint", "restore", id, "--store", store],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .map_err(|e| format!("cannot start statectl: {e}"))?;
    let threshold = (size as f64 * fraction) as u64;
    let deadline = Instant::now() + ROUND_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let out = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(format!(
                "the restore ended ({status}) before the kill point; give it more data: {}",
                text(&out.stderr)
            ));
        }
        if rchar(child.id()).unwrap_or(0) >= threshold && server_busy() {
            return Ok(child);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the restore did not reach {fraction} of its file within {ROUND_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits (bounded) for the restore to exit; its exit code and output.
fn finish(mut child: Child, round: &str) -> Result<std::process::Output, String> {
    let deadline = Instant::now() + ROUND_LIMIT;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().map_err(|e| e.to_string());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{round}: the restore did not exit within {ROUND_LIMIT:?} after the server \
                 went away"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The outcome of a round: a failed restore is one sentence and exit 3 and left the old
/// state or the new; a restore that succeeded left the new state. Returns which state.
fn judge(out: &std::process::Output, found: &Contents, states: &States, round: &str) -> String {
    let state = states.which(found, round);
    let err = text(&out.stderr);
    match out.status.code() {
        Some(0) => assert_eq!(state, "new", "{round}: the restore succeeded: {err}"),
        _ => {
            let args = ["checkpoint", "restore"];
            one_sentence_failure(out, &args, 3);
        }
    }
    format!(
        "{round}: exit {:?}, {state} state; {}",
        out.status.code(),
        err.trim()
    )
}

// ---------------------------------------------------------------- Redis

const REDIS_KEYS: usize = 200_000;

/// Whether a client of `server` has commands queued in a `MULTI` (the atomic restore), or
/// the server holds more keys than the old state (a staged restore).
fn redis_busy(server: &LocalRedis, old_keys: usize) -> bool {
    let url = format!("redis://127.0.0.1:{}", server.port());
    let Ok(mut conn) =
        state_redis::redis::Client::open(url.as_str()).and_then(|c| c.get_connection())
    else {
        return false;
    };
    let clients: String = state_redis::redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut conn)
        .unwrap_or_default();
    let queued = clients.lines().any(|line| {
        line.split(' ')
            .find_map(|field| field.strip_prefix("multi="))
            .and_then(|n| n.parse::<i64>().ok())
            .is_some_and(|n| n > 0)
    });
    let keys: usize = state_redis::redis::cmd("DBSIZE")
        .query(&mut conn)
        .unwrap_or_default();
    queued || keys > old_keys
}

#[test]
fn a_redis_server_killed_mid_restore_comes_back_with_the_old_or_the_new_state() -> TestResult {
    let rt = runtime()?;
    let mut server = rt.block_on(LocalRedis::start(LocalRedisOptions {
        config: vec!["appendonly yes".into(), "appendfsync always".into()],
        ..LocalRedisOptions::default()
    }))?;
    let url = with_param(&server.url(), "prefix", "ns:");
    let dir = TempDir::new()?;
    let store = format!("file://{}", dir.path().join("checkpoints").display());
    let states = States::new(REDIS_KEYS);
    rt.block_on(replace(&url, &states.new))?;
    let (id, size) = checkpoint(dir.path(), &url, &store)?;

    let mut outcomes = Vec::new();
    // (how much of the file was read, whether the server comes back before the restore
    // has exited: a crash and a quick supervisor restart, which a client may ride out)
    for (fraction, back_at_once) in [(0.3, false), (0.8, true)] {
        let round = format!("redis, server killed at {fraction} of the file");
        rt.block_on(replace(&url, &states.old))?;
        // The private server holds the namespace only: its size is the old state's.
        let old_keys = states.old.len();
        let busy = || redis_busy(&server, old_keys);
        let child = start_restore(dir.path(), &url, &store, (&id, size), fraction, &busy)
            .map_err(|e| format!("{round}: {e}"))?;
        server.kill();
        let out = if back_at_once {
            rt.block_on(server.restart())?;
            finish(child, &round)?
        } else {
            let out = finish(child, &round)?;
            assert_ne!(
                out.status.code(),
                Some(0),
                "{round}: the restore succeeded with its server dead"
            );
            rt.block_on(server.restart())?;
            out
        };
        let found = rt.block_on(read_all(&url))?;
        let outcome = judge(&out, &found, &states, &round);
        if !back_at_once {
            // Killed before the restore could switch anything in, and never restarted
            // under it: the old state, from the append-only file.
            assert_eq!(states.which(&found, &round), "old", "{outcome}");
        }
        eprintln!("{outcome}");
        outcomes.push(outcome);
    }
    // The restarted server takes the same restore whole.
    let out = statectl(
        dir.path(),
        Some(&url),
        &["checkpoint", "restore", &id, "--store", &store],
    )
    .output()?;
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    let found = rt.block_on(read_all(&url))?;
    assert_eq!(states.which(&found, "redis, final restore"), "new");
    Ok(())
}

// ---------------------------------------------------------------- PostgreSQL

const POSTGRES_KEYS: usize = 100_000;

/// A schema of the test's own on the test database, dropped when the test ends.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    fn url(&self) -> String {
        with_param(&self.base, "schema", &self.name)
    }

    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([&self.base, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        Ok(text(&out.stdout))
    }

    /// The sessions of the backend inside a transaction that touches this schema: the
    /// restore's import once it has begun.
    fn restoring(&self) -> Vec<u32> {
        let sql = format!(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'state-postgres' \
             AND xact_start IS NOT NULL AND pid <> pg_backend_pid() \
             AND query LIKE '%{}%'",
            self.name
        );
        self.psql(&sql)
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        if let Err(e) = self.psql(&sql) {
            eprintln!("could not drop schema {}: {e}", self.name);
        }
    }
}

#[test]
fn a_postgres_session_terminated_mid_restore_leaves_the_old_or_the_new_state() -> TestResult {
    let schema = Schema {
        base: service_url(
            "STATE_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        name: unique("cksrvkill_pg"),
    };
    let url = schema.url();
    let rt = runtime()?;
    let dir = TempDir::new()?;
    let store = format!("file://{}", dir.path().join("checkpoints").display());
    let states = States::new(POSTGRES_KEYS);
    rt.block_on(replace(&url, &states.new))?;
    let (id, size) = checkpoint(dir.path(), &url, &store)?;

    for fraction in [0.3, 0.8] {
        let round = format!("postgres, session terminated at {fraction} of the file");
        rt.block_on(replace(&url, &states.old))?;
        let busy = || !schema.restoring().is_empty();
        let child = start_restore(dir.path(), &url, &store, (&id, size), fraction, &busy)
            .map_err(|e| format!("{round}: {e}"))?;
        let sessions = schema.restoring();
        for pid in &sessions {
            schema.psql(&format!("SELECT pg_terminate_backend({pid})"))?;
        }
        let out = finish(child, &round)?;
        let found = rt.block_on(read_all(&url))?;
        let outcome = judge(&out, &found, &states, &round);
        eprintln!("{outcome} (terminated sessions {sessions:?})");
        if out.status.code() != Some(0) {
            // The import's transaction was cut before its end: rolled back whole.
            assert_eq!(states.which(&found, &round), "old", "{outcome}");
        }
    }
    let out = statectl(
        dir.path(),
        Some(&url),
        &["checkpoint", "restore", &id, "--store", &store],
    )
    .output()?;
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    let found = rt.block_on(read_all(&url))?;
    assert_eq!(states.which(&found, "postgres, final restore"), "new");
    Ok(())
}

#[test]
fn a_postgres_server_killed_mid_restore_recovers_the_old_state() -> TestResult {
    let rt = runtime()?;
    let server = rt.block_on(LocalPostgres::start(LocalPostgresOptions::default()))?;
    let schema = Schema {
        base: server.url(),
        name: unique("cksrvcrash_pg"),
    };
    let url = schema.url();
    let dir = TempDir::new()?;
    let store = format!("file://{}", dir.path().join("checkpoints").display());
    let states = States::new(POSTGRES_KEYS);
    rt.block_on(replace(&url, &states.new))?;
    let (id, size) = checkpoint(dir.path(), &url, &store)?;

    let round = "postgres, server killed at 0.5 of the file";
    rt.block_on(replace(&url, &states.old))?;
    let busy = || !schema.restoring().is_empty();
    let child = start_restore(dir.path(), &url, &store, (&id, size), 0.5, &busy)
        .map_err(|e| format!("{round}: {e}"))?;
    server.kill()?;
    // Down until the restore has given up: it cannot have committed, so it must fail.
    let out = finish(child, round)?;
    assert_ne!(
        out.status.code(),
        Some(0),
        "{round}: the restore succeeded with its server dead"
    );
    rt.block_on(server.restart())?;
    let found = rt.block_on(read_all(&url))?;
    let outcome = judge(&out, &found, &states, round);
    eprintln!("{outcome}");
    assert_eq!(states.which(&found, round), "old", "{outcome}");

    let out = statectl(
        dir.path(),
        Some(&url),
        &["checkpoint", "restore", &id, "--store", &store],
    )
    .output()?;
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    let found = rt.block_on(read_all(&url))?;
    assert_eq!(states.which(&found, "postgres crash, final restore"), "new");
    Ok(())
}
