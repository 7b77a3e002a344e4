//! `statectl checkpoint … --store URL`: checkpoints as files, on the embedded store, Redis
//! and PostgreSQL (the real servers of `STATE_TEST_REDIS_URL` / `STATE_TEST_POSTGRES_URL`,
//! else the local defaults); and `checkpoint run`: one writer of two, a `kill -9` of the
//! leader mid-checkpoint, the other taking over. Each test works in its own temporary
//! directory and under its own key prefix or schema, removed when it ends, passed or failed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod common;

use common::{one_sentence_failure, output, service_url, statectl, text, unique, with_param};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";
const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// statectl run from a directory of the test's own, with `--url` if one is given.
struct Statectl {
    dir: PathBuf,
    url: Option<String>,
}

impl Statectl {
    fn new(dir: &Path, url: Option<&str>) -> Self {
        Statectl {
            dir: dir.to_path_buf(),
            url: url.map(str::to_owned),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        statectl(&self.dir, self.url.as_deref(), args)
    }

    fn out(&self, args: &[&str]) -> Output {
        output(self.command(args), args)
    }

    /// A command that must succeed with nothing on stderr; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "statectl {args:?} failed ({:?}): {}",
            out.status.code(),
            text(&out.stderr)
        );
        assert!(out.stderr.is_empty(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// A command that must fail with `code`, one sentence on stderr and nothing on stdout;
    /// that sentence.
    fn fails(&self, args: &[&str], code: i32) -> String {
        one_sentence_failure(&self.out(args), args, code)
    }
}

/// `file:///…` of a directory.
fn file_url(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// The ids `checkpoint list` prints, checking each line's shape.
fn listed(cli: &Statectl, store: &str) -> Vec<String> {
    cli.ok(&["checkpoint", "list", "--store", store])
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 4, "{line}");
            let created = fields[1];
            assert!(
                created.ends_with('Z') && created.get(10..11) == Some("T"),
                "created_at {created} is not RFC 3339 UTC"
            );
            assert!(fields[2].parse::<u64>().is_ok() && fields[3].parse::<u64>().is_ok());
            fields[0].to_owned()
        })
        .collect()
}

/// A checkpoint id's fencing token (`{token:020}-{seq:010}`).
fn token(id: &str) -> u64 {
    let (token, seq) = id.split_once('-').unwrap_or_else(|| panic!("id `{id}`"));
    assert_eq!((token.len(), seq.len()), (20, 10), "id `{id}`");
    token.parse().unwrap_or_else(|e| panic!("id `{id}`: {e}"))
}

/// `scan --values`, sorted (Redis scans in no order).
fn entries(cli: &Statectl) -> String {
    let scanned = cli.ok(&["scan", "--values"]);
    let mut lines: Vec<&str> = scanned.lines().collect();
    lines.sort_unstable();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

/// The short form of an id, `7-3`, which statectl reads as the same id.
fn short(id: &str) -> String {
    let seq: u64 = id
        .rsplit_once('-')
        .and_then(|(_, seq)| seq.parse().ok())
        .unwrap_or_else(|| panic!("id `{id}`"));
    format!("{}-{seq}", token(id))
}

/// Put, checkpoint, change, verify, restore by id and `latest`, delete: the round trip
/// every backend must make. Leaves the state of the first checkpoint.
fn round_trip(cli: &Statectl, store: &str) {
    cli.ok(&["put", "a", "1"]);
    cli.ok(&["put", "b", "2"]);
    cli.ok(&["put", "t", "x", "--ttl", "10m"]);
    let first = cli.ok(&["checkpoint", "create", "--store", store]);
    let first = first.trim();
    assert_eq!(listed(cli, store), [first]);
    assert_eq!(
        cli.ok(&["checkpoint", "verify", first, "--store", store]),
        format!("{first}\tok\n")
    );

    cli.ok(&["put", "a", "changed"]);
    assert_eq!(cli.ok(&["del", "b"]), "1\n");
    cli.ok(&["put", "c", "new"]);
    cli.ok(&["put", "t", "y"]);
    let second = cli.ok(&["checkpoint", "create", "--store", store]);
    let second = second.trim();
    assert!(second > first, "ids grow: {first} then {second}");
    assert_eq!(listed(cli, store), [first, second]);

    assert_eq!(
        cli.ok(&["checkpoint", "restore", first, "--store", store]),
        ""
    );
    assert_eq!(entries(cli), "a\t1\nb\t2\nt\tx\n");
    let left: u64 = cli.ok(&["ttl", "t"]).trim().parse().unwrap_or(0);
    assert!(left > 0 && left <= 600_000, "the restored TTL is {left} ms");

    assert_eq!(
        cli.ok(&["checkpoint", "restore", "latest", "--store", store]),
        format!("{second}\n")
    );
    assert_eq!(entries(cli), "a\tchanged\nc\tnew\nt\ty\n");

    // The short form of an id is the same id.
    assert_eq!(
        cli.ok(&["checkpoint", "delete", &short(second), "--store", store]),
        ""
    );
    assert_eq!(listed(cli, store), [first]);
    for command in ["restore", "delete", "verify"] {
        let err = cli.fails(&["checkpoint", command, second, "--store", store], 1);
        assert!(
            err.contains(&format!("checkpoint {second} does not exist")),
            "{err}"
        );
    }
    cli.fails(&["checkpoint", "restore", "not-an-id", "--store", store], 2);
    cli.ok(&["checkpoint", "restore", "latest", "--store", store]);
    assert_eq!(entries(cli), "a\t1\nb\t2\nt\tx\n");
}

// ---------------------------------------------------------------- embedded

#[test]
fn the_default_embedded_store_checkpoints_into_a_directory_and_back() -> TestResult {
    let dir = TempDir::new()?;
    let store = file_url(&dir.path().join("checkpoints"));
    // No --url: the default redb file, created for a --store command.
    let cli = Statectl::new(dir.path(), None);
    round_trip(&cli, &store);
    assert!(dir.path().join(".statectl/state.redb").is_file());
    Ok(())
}

#[test]
fn a_damaged_file_fails_verify_naming_it_and_restore_latest_falls_back() -> TestResult {
    let dir = TempDir::new()?;
    let store_dir = dir.path().join("checkpoints");
    let store = file_url(&store_dir);
    let cli = Statectl::new(dir.path(), Some("redb:s.redb"));
    cli.ok(&["put", "k", "old"]);
    let older = cli.ok(&["checkpoint", "create", "--store", &store]);
    let older = older.trim();
    cli.ok(&["put", "k", "new"]);
    let newer = cli.ok(&["checkpoint", "create", "--store", &store]);
    let newer = newer.trim();
    cli.ok(&["put", "k", "now"]);

    // One bit flipped in the middle of the newest data file.
    let data = store_dir.join(format!("{newer}.data"));
    let mut bytes = std::fs::read(&data)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&data, bytes)?;

    let err = cli.fails(&["checkpoint", "verify", newer, "--store", &store], 3);
    assert!(
        err.contains(&format!("{}", data.display())),
        "the file is named: {err}"
    );
    assert_eq!(
        cli.ok(&["checkpoint", "verify", older, "--store", &store]),
        format!("{older}\tok\n")
    );
    // A failed restore changes nothing.
    cli.fails(&["checkpoint", "restore", newer, "--store", &store], 3);
    assert_eq!(cli.ok(&["get", "k"]), "now\n");

    let out = cli.out(&["checkpoint", "restore", "latest", "--store", &store]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout), format!("{older}\n"));
    assert!(
        err.starts_with("statectl: warning: ") && err.contains(newer) && err.contains("skipped"),
        "{err}"
    );
    assert_eq!(cli.ok(&["get", "k"]), "old\n");
    // Still listed (its manifest is intact): only reading the data tells.
    assert_eq!(listed(&cli, &store), [older, newer]);
    Ok(())
}

#[test]
fn bad_stores_and_no_store_are_one_sentence_naming_the_fix() -> TestResult {
    let dir = TempDir::new()?;
    let cli = Statectl::new(dir.path(), Some("memory://"));
    let err = cli.fails(
        &["checkpoint", "list", "--store", "s3://key:secret@bucket/x"],
        2,
    );
    assert!(
        err.contains("not built in yet") && !err.contains("secret"),
        "{err}"
    );
    let err = cli.fails(&["checkpoint", "list", "--store", "file://relative/dir"], 2);
    assert!(err.contains("absolute"), "{err}");
    let err = cli.fails(&["checkpoint", "create"], 2);
    assert!(err.contains("--store"), "{err}");
    let err = cli.fails(&["checkpoint", "run", "--interval", "1s"], 2);
    assert!(err.contains("--store"), "{err}");
    let store = file_url(&dir.path().join("s"));
    let err = cli.fails(
        &[
            "checkpoint",
            "run",
            "--store",
            &store,
            "--lock-url",
            "memory://",
        ],
        2,
    );
    assert!(err.contains("redis://"), "{err}");
    let err = cli.fails(&["checkpoint", "run", "--store", &store, "--keep", "0"], 2);
    assert!(err.contains("keep"), "{err}");
    Ok(())
}

#[test]
fn run_checkpoints_on_schedule_keeps_the_newest_and_stops_on_sigint() -> TestResult {
    let dir = TempDir::new()?;
    let store = file_url(&dir.path().join("checkpoints"));
    let cli = Statectl::new(dir.path(), Some("redb:s.redb"));
    let (tx, rx) = channel();
    let mut runner = Runner::spawn(
        0,
        cli.command(&[
            "checkpoint",
            "run",
            "--store",
            &store,
            "--interval",
            "200ms",
            "--min-pause",
            "0s",
            "--keep",
            "2",
        ]),
        &tx,
    )?;
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while printed.len() < 3 {
        match next_line(&rx, deadline) {
            Some(Line {
                stdout: true, text, ..
            }) => printed.push(text),
            Some(_) => {}
            None => panic!("3 checkpoints were not printed in time: {printed:?}"),
        }
    }
    runner.signal("INT");
    let status = runner.wait(Duration::from_secs(120));
    assert_eq!(status, Some(0), "exit status after SIGINT");
    // Every id printed is one checkpoint; retention kept the newest two.
    let mut all: Vec<String> = printed;
    while let Some(line) = next_line(&rx, Instant::now() + Duration::from_secs(5)) {
        if line.stdout {
            all.push(line.text);
        }
    }
    let listed = listed(&Statectl::new(dir.path(), None), &store);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed.last(), all.last(), "printed {all:?}");
    Ok(())
}

// ---------------------------------------------------------------- Redis

/// A key prefix of this test's on the test Redis, emptied when the test ends.
struct RedisPrefix {
    url: String,
}

impl RedisPrefix {
    fn new(tag: &str) -> Self {
        let base = service_url("STATE_TEST_REDIS_URL", REDIS_DEFAULT);
        RedisPrefix {
            url: with_param(&base, "prefix", &format!("{}:", unique(tag))),
        }
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let url = self.url.clone();
        let cleared = runtime().and_then(|rt| {
            rt.block_on(async {
                let backend = distributed_state::connect(&url).await?;
                backend.clear(b"").await
            })
            .map_err(|e| e.to_string())
        });
        if let Err(e) = cleared {
            eprintln!("could not clear the test's Redis prefix: {e}");
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

#[test]
fn redis_checkpoints_round_trip_through_a_directory() -> TestResult {
    let prefix = RedisPrefix::new("ckstore_redis");
    let dir = TempDir::new()?;
    let store = file_url(&dir.path().join("checkpoints"));
    let cli = Statectl::new(dir.path(), Some(&prefix.url));
    round_trip(&cli, &store);
    // Without --store Redis has nowhere to keep them: one sentence naming --store.
    let err = cli.fails(&["checkpoint", "create"], 2);
    assert!(
        err.contains("--store") && err.contains("postgres://"),
        "{err}"
    );
    Ok(())
}

// ---------------------------------------------------------------- PostgreSQL

/// Drops the test's schema when the test ends, passed or failed.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    fn new(tag: &str) -> Self {
        Schema {
            base: service_url("STATE_TEST_POSTGRES_URL", POSTGRES_DEFAULT),
            name: unique(tag),
        }
    }

    fn url(&self) -> String {
        with_param(&self.base, "schema", &self.name)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name);
        let out = Command::new("psql")
            .args([
                self.base.as_str(),
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                &sql,
            ])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!("could not drop schema {}: {}", self.name, text(&out.stderr)),
            Err(e) => eprintln!("could not run psql: {e}"),
        }
    }
}

#[test]
fn postgres_checkpoints_round_trip_through_a_directory_beside_server_side_ones() -> TestResult {
    let schema = Schema::new("ckstore_pg");
    let dir = TempDir::new()?;
    let store = file_url(&dir.path().join("checkpoints"));
    let cli = Statectl::new(dir.path(), Some(&schema.url()));
    round_trip(&cli, &store);

    // Server-side checkpoints are untouched by --store, and `restore latest` works there.
    assert_eq!(cli.ok(&["checkpoint", "list"]), "");
    let server: i64 = cli.ok(&["checkpoint", "create"]).trim().parse()?;
    cli.ok(&["put", "a", "after"]);
    assert_eq!(
        cli.ok(&["checkpoint", "restore", "latest"]),
        format!("{server}\n")
    );
    assert_eq!(cli.ok(&["get", "a"]), "1\n");
    let err = cli.fails(&["checkpoint", "verify", "1"], 2);
    assert!(err.contains("--store"), "{err}");

    // The file is portable: PostgreSQL's checkpoint restored into an embedded store.
    let id = listed(&cli, &store).pop().unwrap_or_default();
    let redb = Statectl::new(dir.path(), Some("redb:copy.redb"));
    redb.ok(&["checkpoint", "restore", &id, "--store", &store]);
    assert_eq!(entries(&redb), "a\t1\nb\t2\nt\tx\n");
    Ok(())
}

// ---------------------------------------------------------------- checkpoint run

/// A line a runner printed.
#[derive(Debug)]
struct Line {
    who: usize,
    stdout: bool,
    text: String,
}

/// A `statectl checkpoint run` process whose output lines arrive on a channel.
struct Runner {
    child: Child,
}

impl Runner {
    fn spawn(who: usize, mut command: Command, lines: &Sender<Line>) -> std::io::Result<Self> {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let streams: [(bool, Option<Box<dyn std::io::Read + Send>>); 2] = [
            (true, child.stdout.take().map(|s| Box::new(s) as _)),
            (false, child.stderr.take().map(|s| Box::new(s) as _)),
        ];
        for (stdout, stream) in streams {
            let Some(stream) = stream else { continue };
            let lines = lines.clone();
            std::thread::spawn(move || {
                for text in BufReader::new(stream).lines().map_while(Result::ok) {
                    if lines.send(Line { who, stdout, text }).is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Runner { child })
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{name}");
    }

    /// The exit code, waiting up to `limit`; `None` if it did not exit (it is then killed).
    fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(_) => break,
            }
        }
        None
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next line, or `None` at the deadline.
fn next_line(lines: &Receiver<Line>, deadline: Instant) -> Option<Line> {
    let left = deadline.saturating_duration_since(Instant::now());
    lines.recv_timeout(left).ok()
}

/// Entries enough that a checkpoint of them takes a while (tens of MB through Redis).
const ENTRIES: usize = 60_000;
const VALUE_LEN: usize = 512;

/// Fills the backend at `url` with [`ENTRIES`] keys of incompressible values.
fn fill(url: &str) -> TestResult {
    let rt = runtime()?;
    rt.block_on(async {
        let backend = distributed_state::connect(url).await?;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let keys: Vec<String> = (0..ENTRIES).map(|i| format!("k{i:07}")).collect();
        let values: Vec<Vec<u8>> = (0..ENTRIES)
            .map(|_| {
                (0..VALUE_LEN / 8)
                    .flat_map(|_| next().to_le_bytes())
                    .collect()
            })
            .collect();
        for (keys, values) in keys.chunks(1000).zip(values.chunks(1000)) {
            let batch: Vec<(&[u8], &[u8])> = keys
                .iter()
                .zip(values)
                .map(|(k, v)| (k.as_bytes(), v.as_slice()))
                .collect();
            backend.batch_put(&batch).await?;
        }
        Ok::<(), state_core::StateError>(())
    })?;
    Ok(())
}

/// The names in the store directory.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn two_runners_one_writer_and_a_kill_9_mid_checkpoint_hands_over_cleanly() -> TestResult {
    let data = RedisPrefix::new("ckrun_data");
    // The lock in a namespace of its own, so that checkpoints do not hold its keys.
    let locks = RedisPrefix::new("ckrun_lock");
    fill(&data.url)?;
    let dir = TempDir::new()?;
    let store_dir = dir.path().join("checkpoints");
    let store = file_url(&store_dir);
    let cli = Statectl::new(dir.path(), Some(&data.url));
    let args = [
        "checkpoint",
        "run",
        "--store",
        &store,
        "--interval",
        "500ms",
        "--min-pause",
        "0s",
        "--keep",
        "3",
        "--lock-url",
        &locks.url,
        "--lock-ttl",
        "5s",
    ];
    let (tx, rx) = channel();
    let mut runners = [
        Runner::spawn(0, cli.command(&args), &tx)?,
        Runner::spawn(1, cli.command(&args), &tx)?,
    ];
    let mut seen: Vec<Line> = Vec::new();

    // 1. One of them leads: the first checkpoint printed names it and its fencing token.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (leader, first) = loop {
        let Some(line) = next_line(&rx, deadline) else {
            panic!("no checkpoint was taken in time: {seen:?}");
        };
        let found = line.stdout.then(|| (line.who, line.text.clone()));
        seen.push(line);
        if let Some(found) = found {
            break found;
        }
    };
    let follower = 1 - leader;
    let old_token = token(&first);

    // 2. In the middle of one of its next checkpoints (its data being written), kill -9.
    let prefix = format!("{old_token:020}-");
    let deadline = Instant::now() + Duration::from_secs(180);
    let partial = loop {
        let writing = names(&store_dir)
            .into_iter()
            .find(|n| n.starts_with(&prefix) && n.contains(".data.tmp-"));
        if let Some(name) = writing {
            runners[leader].child.kill()?;
            break name;
        }
        assert!(Instant::now() < deadline, "the leader wrote no more data");
        std::thread::sleep(Duration::from_millis(1));
    };
    let killed_at = Instant::now();
    let _ = runners[leader].child.wait();
    let partial_id = partial.split('.').next().unwrap_or_default().to_owned();
    while let Ok(line) = rx.try_recv() {
        seen.push(line);
    }
    // Only the leader wrote: the follower printed no checkpoint, every id is the leader's.
    assert!(
        !seen.iter().any(|l| l.who == follower && l.stdout),
        "the follower wrote while the leader led: {seen:?}"
    );
    let before: Vec<String> = listed(&cli, &store);
    assert!(
        !before.is_empty() && before.iter().all(|id| token(id) == old_token),
        "{before:?}"
    );
    // The kill landed mid-checkpoint: its data is left, and no checkpoint lists it.
    let left = names(&store_dir);
    assert!(
        left.iter()
            .any(|n| n.starts_with(&partial_id) && n.contains(".data")),
        "no partial data of {partial_id} left: {left:?}"
    );
    assert!(
        !left.contains(&format!("{partial_id}.manifest.json")),
        "{left:?}"
    );
    assert!(!before.contains(&partial_id), "{before:?}");

    // 3. The follower takes over once the dead leader's lease runs out, and checkpoints.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut leads_after = None;
    let taken = loop {
        let Some(line) = next_line(&rx, deadline) else {
            panic!("the follower did not take over in time: {seen:?}");
        };
        let from_follower = line.who == follower;
        if from_follower && !line.stdout && line.text.contains("leading") {
            leads_after = Some(killed_at.elapsed());
        }
        let found = (from_follower && line.stdout).then(|| line.text.clone());
        seen.push(line);
        if let Some(id) = found {
            break id;
        }
    };
    let new_token = token(&taken);
    assert!(new_token > old_token, "{taken} after {first}");
    eprintln!("the follower led {leads_after:?} after the kill (lease 5s)");
    assert!(leads_after.is_some(), "no `leading` line: {seen:?}");

    // 4. SIGTERM: it finishes what it is doing, releases the lock and exits 0.
    runners[follower].signal("TERM");
    assert_eq!(runners[follower].wait(Duration::from_secs(120)), Some(0));
    while let Some(line) = next_line(&rx, Instant::now() + Duration::from_secs(5)) {
        seen.push(line);
    }

    // 5. Each wrote only under its own lease: the leader's ids carry its fencing token,
    //    the follower's the newer one.
    for line in seen.iter().filter(|l| l.stdout) {
        let expected = if line.who == leader {
            old_token
        } else {
            new_token
        };
        assert_eq!(token(&line.text), expected, "{line:?}");
    }
    // Every listed checkpoint is whole and was printed by the one that led at the time;
    //    the partial one is not listed.
    let after = listed(&cli, &store);
    assert!(
        !after.is_empty() && !after.contains(&partial_id),
        "{after:?}"
    );
    for id in &after {
        let writer = if token(id) == old_token {
            leader
        } else {
            follower
        };
        assert!(
            seen.iter()
                .any(|l| l.who == writer && l.stdout && l.text == *id),
            "{id} was not printed by its writer: {seen:?}"
        );
        assert_eq!(
            cli.ok(&["checkpoint", "verify", id, "--store", &store]),
            format!("{id}\tok\n")
        );
    }
    assert!(after.iter().any(|id| token(id) == new_token), "{after:?}");
    Ok(())
}
