//! A restore killed in the middle: `statectl checkpoint restore ID --store file:///…` runs
//! as a child process into a backend holding many entries and is killed with SIGKILL at
//! several points after it began writing; the target must then hold exactly its old
//! contents or exactly the checkpoint's, never a mix. Every backend here says
//! `atomic_restore` (PostgreSQL: one transaction; redb: one write transaction; Redis
//! standalone: staged keys switched in by one `MULTI … EXEC`), so that is what is checked.
//!
//! When the kill lands is read from the child's `/proc/PID/io` `rchar` (bytes it read
//! through `read` calls; socket traffic is not counted): into a target whose
//! `atomic_restore` holds, a restore reads the checkpoint's data file once, straight into
//! the backend's `import` (the checks travel in the import's stream), so `rchar` past
//! `f × size` means the import has consumed about a fraction `f` of the file. An import
//! commits only after its stream ended, so a kill before the whole file was read must
//! leave the old contents; a kill after it may land before or after
//! the commit, and either whole state is right.

#![cfg(target_os = "linux")]

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use state_core::{Bytes, Entry, ImportMode, StateBackend, StateError};
use tempfile::TempDir;

mod common;

use common::{service_url, statectl, text, unique, with_param};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Entries in each state: enough that the import takes a while (about 9 MB of data).
const KEYS: usize = 40_000;
const VALUE_LEN: usize = 200;

/// Where in the import the kill lands: the fraction of the data file the import has read,
/// then a pause. Below 1.0 the import cannot have committed yet; at 1.0 the stream has
/// ended and the pause moves the kill through the commit (before, during or after it).
const KILL_POINTS: [(f64, u64); 7] = [
    (0.05, 0),
    (0.4, 0),
    (0.75, 0),
    (0.95, 0),
    (1.0, 0),
    (1.0, 30),
    (1.0, 150),
];
const AT_COMMIT: f64 = 1.0;

/// The longest one restore may run before the test gives up on it.
const ROUND_LIMIT: Duration = Duration::from_secs(180);

/// What a backend holds: every (key, value), sorted.
type Contents = Vec<(Bytes, Bytes)>;

/// The two states: `old` is what the target holds before each restore, `new` is the
/// checkpoint's. They share half their keys, with different values, so any mix shows.
struct States {
    old: Contents,
    new: Contents,
}

impl States {
    fn new() -> Self {
        let make = |range: std::ops::Range<usize>, tag: u8| -> Contents {
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ u64::from(tag);
            let mut next = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            range
                .map(|i| {
                    let key = Bytes::from(format!("k{i:07}"));
                    let mut value = vec![tag];
                    while value.len() < VALUE_LEN {
                        value.extend_from_slice(&next().to_le_bytes());
                    }
                    value.truncate(VALUE_LEN);
                    (key, Bytes::from(value))
                })
                .collect()
        };
        States {
            new: make(0..KEYS, b'N'),
            old: make(KEYS / 2..KEYS + KEYS / 2, b'O'),
        }
    }

    /// Which whole state `found` is; a test failure naming the first difference if neither.
    fn which(&self, found: &Contents, round: &str) -> &'static str {
        if *found == self.old {
            return "old";
        }
        if *found == self.new {
            return "new";
        }
        let mixed_old = found
            .iter()
            .filter(|kv| kv.1.first() == Some(&b'O'))
            .count();
        let mixed_new = found
            .iter()
            .filter(|kv| kv.1.first() == Some(&b'N'))
            .count();
        panic!(
            "{round}: the target holds a mix: {} entries, {mixed_old} with old values and \
             {mixed_new} with the checkpoint's (old state {} entries, checkpoint {})",
            found.len(),
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

/// Replaces the whole namespace of `backend` with `contents`.
async fn replace(backend: &dyn StateBackend, contents: &Contents) -> Result<u64, StateError> {
    let entries = contents
        .iter()
        .map(|(k, v)| Ok(Entry::new(k.clone(), v.clone())));
    backend
        .import(state_core::stream::iter(entries), ImportMode::Replace)
        .await
}

async fn read_all(backend: &dyn StateBackend) -> Result<Contents, StateError> {
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

/// How a round ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// SIGKILL landed while the restore ran, after it had read this many bytes.
    Killed(u64),
    /// The restore finished first, with this exit code.
    Finished(Option<i32>),
}

/// Runs `restore` and kills it with SIGKILL `pause` after it has read `point × size`
/// bytes; waits at most [`ROUND_LIMIT`].
fn restore_and_kill(
    mut restore: Command,
    size: u64,
    (point, pause): (f64, u64),
) -> Result<Ended, String> {
    let mut child: Child = restore
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start statectl: {e}"))?;
    let threshold = (size as f64 * point) as u64;
    let deadline = Instant::now() + ROUND_LIMIT;
    let ended = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut stderr) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut stderr, &mut err);
            }
            if status.code() != Some(0) {
                return Err(format!("the restore failed on its own ({status}): {err}"));
            }
            break Ended::Finished(status.code());
        }
        let read = rchar(child.id()).unwrap_or(0);
        if read >= threshold {
            std::thread::sleep(Duration::from_millis(pause));
            let _ = child.kill();
            let status = child.wait().map_err(|e| e.to_string())?;
            break match status.signal() {
                Some(9) => Ended::Killed(read),
                _ => Ended::Finished(status.code()),
            };
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "the restore did not read {threshold} bytes within {ROUND_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    Ok(ended)
}

/// A backend under test: how statectl and this process reach it, and what it can show of
/// a write begun and abandoned.
trait Target {
    fn url(&self) -> String;
    /// Evidence, after a kill, that the killed restore had written to the backend (rows
    /// inserted then rolled back, keys staged); `None` where the backend cannot show it.
    fn writes_seen(&self, _since: &Marker) -> Option<bool> {
        None
    }
    /// A mark to compare [`writes_seen`](Self::writes_seen) against.
    fn mark(&self) -> Marker {
        Marker(0)
    }
}

/// A counter of the backend's own (inserted tuples, staged keys) before a round.
struct Marker(u64);

/// Runs the rounds against `target`: a checkpoint of the new state, then for each kill
/// point the old state in place, a restore killed there, and a check of what is left.
fn kill_restores(target: &dyn Target, dir: &Path, name: &str) -> TestResult {
    let states = States::new();
    let url = target.url();
    let rt = runtime()?;
    let store_dir = dir.join("checkpoints");
    let store = format!("file://{}", store_dir.display());

    // The checkpoint: the new state, taken by statectl.
    rt.block_on(async {
        let backend = distributed_state::connect(&url).await?;
        replace(backend.as_ref(), &states.new).await?;
        Ok::<_, StateError>(())
    })?;
    let out = statectl(
        dir,
        Some(&url),
        &["checkpoint", "create", "--store", &store],
    )
    .output()?;
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let size = std::fs::metadata(store_dir.join(format!("{id}.data")))?.len();
    eprintln!("{name}: checkpoint {id}, {size} bytes");

    let mut outcomes = Vec::new();
    for (point, pause) in KILL_POINTS {
        let round = format!("{name}, kill at {point} + {pause} ms");
        rt.block_on(async {
            let backend = distributed_state::connect(&url).await?;
            replace(backend.as_ref(), &states.old).await?;
            Ok::<_, StateError>(())
        })?;
        let mark = target.mark();
        let restore = statectl(
            dir,
            Some(&url),
            &["checkpoint", "restore", &id, "--store", &store],
        );
        let ended =
            restore_and_kill(restore, size, (point, pause)).map_err(|e| format!("{round}: {e}"))?;
        let found = rt.block_on(async {
            let backend = distributed_state::connect(&url).await?;
            read_all(backend.as_ref()).await
        })?;
        let state = states.which(&found, &round);
        let wrote = target.writes_seen(&mark);
        eprintln!("{round}: {ended:?}, the target holds the {state} state; writes seen: {wrote:?}");
        if point < AT_COMMIT {
            // Killed before the import's stream ended, so before any commit: all old.
            assert!(
                matches!(ended, Ended::Killed(_)),
                "{round}: the restore was not killed mid-way ({ended:?}); give it more data"
            );
            assert_eq!(state, "old", "{round}: an import committed before its end");
            if point >= 0.4 {
                assert_ne!(
                    wrote,
                    Some(false),
                    "{round}: the killed restore had written nothing yet"
                );
            }
        } else if ended == Ended::Finished(Some(0)) {
            assert_eq!(
                state, "new",
                "{round}: a restore that succeeded left the old state"
            );
        }
        outcomes.push((point, pause, ended, state));
    }
    // The same restore, not killed, lands the checkpoint whole.
    let out = statectl(
        dir,
        Some(&url),
        &["checkpoint", "restore", &id, "--store", &store],
    )
    .output()?;
    assert!(out.status.success(), "restore: {}", text(&out.stderr));
    let found = rt.block_on(async {
        let backend = distributed_state::connect(&url).await?;
        read_all(backend.as_ref()).await
    })?;
    assert_eq!(states.which(&found, name), "new");
    eprintln!("{name}: {outcomes:?}");
    Ok(())
}

// ---------------------------------------------------------------- redb

struct Redb(PathBuf);

impl Target for Redb {
    fn url(&self) -> String {
        format!("redb:{}", self.0.display())
    }
}

#[test]
fn a_killed_restore_into_redb_leaves_the_old_or_the_new_state() -> TestResult {
    let dir = TempDir::new()?;
    let target = Redb(dir.path().join("state.redb"));
    kill_restores(&target, dir.path(), "redb")
}

// ---------------------------------------------------------------- PostgreSQL

/// A schema of the test's own on the test database, dropped when the test ends.
struct Postgres {
    base: String,
    schema: String,
}

impl Postgres {
    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([
                self.base.as_str(),
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ])
            .output()
            .map_err(|e| format!("cannot run psql: {e}"))?;
        if !out.status.success() {
            return Err(text(&out.stderr));
        }
        Ok(text(&out.stdout))
    }

    /// Rows ever inserted into the schema's tables, committed or rolled back.
    fn inserted(&self) -> u64 {
        let sql = format!(
            "SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables WHERE schemaname = '{}'",
            self.schema
        );
        self.psql(&sql)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Target for Postgres {
    fn url(&self) -> String {
        with_param(&self.base, "schema", &self.schema)
    }

    /// The killed transaction's inserts show in the statistics once its server process
    /// has rolled back and flushed them, shortly after the client is gone.
    fn writes_seen(&self, since: &Marker) -> Option<bool> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.inserted() > since.0 {
                return Some(true);
            }
            if Instant::now() > deadline {
                return Some(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn mark(&self) -> Marker {
        Marker(self.inserted())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        if let Err(e) = self.psql(&sql) {
            eprintln!("could not drop schema {}: {e}", self.schema);
        }
    }
}

#[test]
fn a_killed_restore_into_postgres_leaves_the_old_or_the_new_state() -> TestResult {
    let target = Postgres {
        base: service_url(
            "STATE_TEST_POSTGRES_URL",
            "postgres://postgres@127.0.0.1:5432/test",
        ),
        schema: unique("ckkill_pg"),
    };
    let dir = TempDir::new()?;
    kill_restores(&target, dir.path(), "postgres")
}

// ---------------------------------------------------------------- Redis

/// A key prefix of the test's own on the test Redis; its keys, staged ones included, are
/// deleted when the test ends.
struct Redis {
    base: String,
    prefix: String,
}

impl Redis {
    fn connection(&self) -> Result<state_redis::redis::Connection, String> {
        state_redis::redis::Client::open(self.base.as_str())
            .and_then(|client| client.get_connection())
            .map_err(|e| format!("cannot reach Redis: {e}"))
    }

    /// Keys a restore staged under this prefix: `{T}\0state-stage\0ID\0` + prefix + key.
    fn staged(&self) -> Vec<Vec<u8>> {
        let Ok(mut conn) = self.connection() else {
            return Vec::new();
        };
        let pattern = format!("*\0state-stage\0*\0{}*", self.prefix);
        let mut found = Vec::new();
        let mut cursor: u64 = 0;
        // SCAN visits every key once per full cycle; bounded by the keyspace's size.
        for _ in 0..1_000_000 {
            let page: Result<(u64, Vec<Vec<u8>>), _> = state_redis::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern.as_bytes())
                .arg("COUNT")
                .arg(10_000)
                .query(&mut conn);
            let Ok((next, keys)) = page else { break };
            found.extend(keys);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        found
    }

    fn drop_staged(&self) {
        let staged = self.staged();
        let Ok(mut conn) = self.connection() else {
            return;
        };
        for keys in staged.chunks(1000) {
            let _: Result<u64, _> = state_redis::redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

impl Target for Redis {
    fn url(&self) -> String {
        with_param(&self.base, "prefix", &self.prefix)
    }

    /// A killed restore leaves its staged keys (they expire within a day); they are
    /// counted, then deleted so that the next round starts clean.
    fn writes_seen(&self, _since: &Marker) -> Option<bool> {
        let staged = self.staged().len();
        self.drop_staged();
        Some(staged > 0)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.drop_staged();
        let url = self.url();
        let cleared = runtime().map_err(|e| e.to_string()).and_then(|rt| {
            rt.block_on(async {
                let backend: Arc<dyn StateBackend> = distributed_state::connect(&url).await?;
                backend.clear(b"").await
            })
            .map_err(|e| e.to_string())
        });
        if let Err(e) = cleared {
            eprintln!("could not clear the test's Redis prefix: {e}");
        }
    }
}

#[test]
fn a_killed_restore_into_redis_leaves_the_old_or_the_new_state() -> TestResult {
    let target = Redis {
        base: service_url("STATE_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
        prefix: format!("{}:", unique("ckkill_redis")),
    };
    let dir = TempDir::new()?;
    kill_restores(&target, dir.path(), "redis")
}
