//! `statectl checkpoint run`: checkpoints on a schedule with retention, stopped by SIGINT;
//! two runners on one store and one lock, one writer, a `kill -9` of the leader in the
//! middle of a checkpoint, and the other taking over. Each test works in its own temporary
//! directory and under its own key prefix, removed when it ends, passed or failed.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod common;

use common::checkpoints::{RedisPrefix, Statectl, file_url, listed, runtime, token};

type TestResult = Result<(), Box<dyn std::error::Error>>;

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
            format!("{id}\tok\tkey_prefix=\n")
        );
    }
    assert!(after.iter().any(|id| token(id) == new_token), "{after:?}");
    Ok(())
}
