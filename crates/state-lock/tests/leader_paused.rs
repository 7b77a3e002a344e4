//! RELIABILITY 12 with real processes: five elector processes campaign for one Redis lock
//! with `LeaderElector`, each leader writing its work with its epoch as the fencing token.
//! The test SIGSTOPs the leader process in the middle of its term, longer than its lease;
//! another process takes over and writes with a higher epoch; then the paused process is
//! resumed (SIGCONT) and carries on where it stopped, writing with its old epoch without
//! looking (as a process resuming from a pause does), and once more after it notices the
//! loss (a stale write). The storage must reject every one of those writes (`Fenced`).
//!
//! Each process records its history (terms, writes and their outcome, wall-clock times)
//! in a file of its own; the test checks the merged history: every epoch had exactly one
//! leader, a process's epochs only increase, no accepted write follows (in real time) an
//! accepted write of a higher epoch, and the last value is the highest epoch's.
//!
//! The processes are this test binary itself, started again with [`CHILD_LOG`] set: the
//! test then plays one elector instead of the parent. Every loop is bounded in rounds and
//! time.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::{lock_on, redis_config};
use state_core::{ErrorKind, StateBackend};
use state_lock::LeaderElector;
use state_redis::RedisStateBackend;

/// Set in a child: where it records its history. Its absence makes the test the parent.
const CHILD_LOG: &str = "STATE_LOCK_TEST_ELECTOR_LOG";
const CHILD_URL: &str = "STATE_LOCK_TEST_ELECTOR_URL";
const CHILD_PREFIX: &str = "STATE_LOCK_TEST_ELECTOR_PREFIX";
/// This test's name, to start the binary on it alone.
const TEST: &str = "a_paused_leader_process_is_fenced_by_epoch";

const ELECTORS: usize = 5;
const TTL: Duration = Duration::from_secs(1);
/// One unit of a leader's work, between two writes; a pause mostly lands in it.
const WORK: Duration = Duration::from_millis(150);
const WRITES_PER_TERM: usize = 4;
/// How long each child campaigns, and at most how many terms it leads.
const CHILD_RUN: Duration = Duration::from_secs(12);
const MAX_TERMS: usize = 20;
/// Bounds of the parent's waits.
const WAIT: Duration = Duration::from_secs(20);
const LOCK: &str = "leader";
const KEY: &[u8] = b"leader/output";

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// The machine's monotonic clock, which the leader processes share: the wall clock can be
/// stepped between two writes and reverse their order in time.
fn now_ms() -> u128 {
    testing::clock::monotonic_ms()
}

/// One elector process: campaigns, leads for a few writes, steps down; until its time or
/// terms run out. Every line it records: `lead E T`, `write E START END OUTCOME`,
/// `lost E`, `down E`.
async fn child(log: PathBuf) -> TestResult {
    let url = std::env::var(CHILD_URL)?;
    let prefix = std::env::var(CHILD_PREFIX)?;
    let lock = Arc::new(lock_on(&url, &prefix).await);
    let backend = RedisStateBackend::new(redis_config(&url, &prefix)).await?;
    let mut file = OpenOptions::new().create(true).append(true).open(log)?;
    let mut record = move |line: String| -> std::io::Result<()> {
        // One write per line, unbuffered: a paused or killed process loses nothing.
        file.write_all(format!("{line}\n").as_bytes())
    };
    let pid = std::process::id();
    let elector =
        LeaderElector::new(lock, LOCK, TTL).with_retry_interval(Duration::from_millis(100));
    let end = Instant::now() + CHILD_RUN;
    let write = |epoch: u64, what: String| {
        let backend = &backend;
        async move {
            let start = now_ms();
            let value = format!("{pid} {epoch} {what}");
            let outcome = backend
                .put_fenced(KEY, value.as_bytes(), state_core::FencingToken(epoch))
                .await;
            let outcome = match outcome {
                Ok(()) => "ok".to_string(),
                Err(e) if e.kind() == ErrorKind::Fenced => "fenced".to_string(),
                Err(e) => format!("error:{}", e.kind().name()),
            };
            (
                format!("write {epoch} {start} {} {outcome}", now_ms()),
                outcome,
            )
        }
    };
    for _ in 0..MAX_TERMS {
        let Some(left) = end.checked_duration_since(Instant::now()) else {
            break;
        };
        let Ok(term) = tokio::time::timeout(left, elector.campaign()).await else {
            break;
        };
        let term = term?;
        let epoch = term.epoch().0;
        record(format!("lead {epoch} {}", now_ms()))?;
        let mut lost = false;
        for i in 0..WRITES_PER_TERM {
            if !term.is_leader() {
                lost = true;
                break;
            }
            tokio::time::sleep(WORK).await;
            // Written without checking again: a process paused during its work resumes here.
            let (line, outcome) = write(epoch, format!("round {i}")).await;
            record(line)?;
            if outcome != "ok" {
                lost = true;
                break;
            }
        }
        if !lost && term.step_down().await.is_err() {
            lost = true;
        }
        if lost {
            // A deposed leader's stale write: the storage must refuse it once a later
            // leader has written.
            let (line, _) = write(epoch, "stale".to_string()).await;
            record(line)?;
            record(format!("lost {epoch}"))?;
        } else {
            record(format!("down {epoch}"))?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// One recorded write.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    epoch: u64,
    start: u128,
    end: u128,
    outcome: String,
}

/// One child's parsed history.
#[derive(Debug, Default)]
struct History {
    leads: Vec<u64>,
    ended: BTreeSet<u64>,
    writes: Vec<Write>,
}

fn parse(log: &Path) -> Result<History, Box<dyn std::error::Error + Send + Sync>> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut h = History::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["lead", e, _] => h.leads.push(e.parse()?),
            ["lost" | "down", e] => {
                h.ended.insert(e.parse()?);
            }
            ["write", e, s, t, o] => h.writes.push(Write {
                epoch: e.parse()?,
                start: s.parse()?,
                end: t.parse()?,
                outcome: (*o).to_string(),
            }),
            _ => return Err(format!("{}: bad line `{line}`", log.display()).into()),
        }
    }
    Ok(h)
}

fn signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("kill {sig} {pid} failed")))
    }
}

/// Polls the logs until `found` returns something, for at most [`WAIT`].
async fn poll<T>(
    logs: &[PathBuf],
    what: &str,
    mut found: impl FnMut(&[History]) -> Option<T>,
) -> Result<T, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    while started.elapsed() < WAIT {
        let histories = logs
            .iter()
            .map(|l| parse(l))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(t) = found(&histories) {
            return Ok(t);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("{what}: not within {WAIT:?}").into())
}

/// The child leading now, early in its term (at most one write made): (index, epoch).
fn early_leader(histories: &[History]) -> Option<(usize, u64)> {
    histories.iter().enumerate().find_map(|(i, h)| {
        let epoch = *h.leads.last()?;
        let writes = h.writes.iter().filter(|w| w.epoch == epoch).count();
        (!h.ended.contains(&epoch) && writes == 1).then_some((i, epoch))
    })
}

async fn parent() -> TestResult {
    let url = testing::services::redis().await?.url();
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let dir = std::env::temp_dir().join(format!("state-lock-electors-{prefix}"));
    std::fs::create_dir_all(&dir)?;
    let logs: Vec<PathBuf> = (0..ELECTORS)
        .map(|i| dir.join(format!("{i}.log")))
        .collect();
    let mut children = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        let child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["--exact", TEST, "--nocapture", "--test-threads", "1"])
            .env(CHILD_LOG, log)
            .env(CHILD_URL, &url)
            .env(CHILD_PREFIX, &prefix)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{i}.err")))?)
            .kill_on_drop(true)
            .spawn()?;
        children.push(child);
    }
    let backend = RedisStateBackend::new(redis_config(&url, &prefix)).await?;
    let outcome = run(&logs, &mut children).await;
    for child in &mut children {
        // Resumed first in case the run failed with one stopped; then made sure to end.
        if let Some(pid) = child.id() {
            let _ = signal(pid, "-CONT");
        }
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    if outcome.is_err() {
        for (i, log) in logs.iter().enumerate() {
            let err = std::fs::read_to_string(dir.join(format!("{i}.err"))).unwrap_or_default();
            let log = std::fs::read_to_string(log).unwrap_or_default();
            eprintln!("--- elector {i}:\n{log}--- its stderr:\n{err}");
        }
    }
    let last = backend.get(KEY).await;
    backend.clear(b"").await?;
    let histories = logs.iter().map(|l| parse(l)).collect::<Result<Vec<_>, _>>();
    let _ = std::fs::remove_dir_all(&dir);
    let last = last?.ok_or("nothing was written")?;
    check_history(&histories?, outcome?, &String::from_utf8_lossy(&last))
}

/// The pause: which child, its epoch, and the wall-clock time just before SIGCONT.
#[derive(Debug, Clone, Copy)]
struct Paused {
    child: usize,
    epoch: u64,
    resumed_at: u128,
}

/// Pauses a leader past its lease, waits for a takeover and the new leader's write,
/// resumes it, and waits for every child to end.
async fn run(
    logs: &[PathBuf],
    children: &mut [tokio::process::Child],
) -> Result<Paused, Box<dyn std::error::Error + Send + Sync>> {
    let mut paused = None;
    for _ in 0..5 {
        let (i, epoch) = poll(logs, "a leader early in its term", early_leader).await?;
        let pid = children[i].id().ok_or("the leader has exited")?;
        signal(pid, "-STOP")?;
        // Stopped now: its log is final up to here. Still leading, not past its term?
        if !parse(&logs[i])?.ended.contains(&epoch) {
            paused = Some((i, epoch, pid));
            break;
        }
        signal(pid, "-CONT")?;
    }
    let (child, epoch, pid) = paused.ok_or("no leader could be paused in its term")?;
    // Another process leads with a higher epoch and has written: takeover complete.
    poll(logs, "a takeover and a write by the new leader", |hs| {
        hs.iter()
            .enumerate()
            .any(|(j, h)| {
                j != child
                    && h.writes
                        .iter()
                        .any(|w| w.epoch > epoch && w.outcome == "ok")
            })
            .then_some(())
    })
    .await?;
    let resumed_at = now_ms();
    signal(pid, "-CONT")?;
    for (i, c) in children.iter_mut().enumerate() {
        let status = tokio::time::timeout(CHILD_RUN + WAIT, c.wait())
            .await
            .map_err(|_| format!("elector {i} did not end in time"))??;
        if !status.success() {
            return Err(format!("elector {i} failed: {status}").into());
        }
    }
    Ok(Paused {
        child,
        epoch,
        resumed_at,
    })
}

/// Checks the merged history; `last` is the key's final value.
fn check_history(histories: &[History], paused: Paused, last: &str) -> TestResult {
    // Never two leaders in one epoch; each process's epochs only increase.
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    for (i, h) in histories.iter().enumerate() {
        assert!(
            h.leads.windows(2).all(|w| w[0] < w[1]),
            "elector {i}: {h:?}"
        );
        for epoch in &h.leads {
            if let Some(other) = leaders.insert(*epoch, i) {
                panic!("epoch {epoch} had two leaders: electors {other} and {i}");
            }
        }
    }
    eprintln!(
        "{} terms by {} electors; elector {} paused in epoch {}, {} writes after resuming",
        leaders.len(),
        leaders.values().collect::<BTreeSet<_>>().len(),
        paused.child,
        paused.epoch,
        histories[paused.child]
            .writes
            .iter()
            .filter(|w| w.epoch == paused.epoch && w.start >= paused.resumed_at)
            .count()
    );
    assert!(
        leaders.len() >= 3,
        "too few terms to show anything: {leaders:?}"
    );
    // The resumed leader's writes with its old epoch were all refused by the storage.
    let late: Vec<&Write> = histories[paused.child]
        .writes
        .iter()
        .filter(|w| w.epoch == paused.epoch && w.start >= paused.resumed_at)
        .collect();
    assert!(
        !late.is_empty(),
        "the resumed leader wrote nothing: {paused:?}"
    );
    for w in &late {
        assert_eq!(
            w.outcome, "fenced",
            "the resumed leader's write was not fenced: {w:?}"
        );
    }
    // No accepted write follows, in real time, an accepted write of a higher epoch.
    let accepted: Vec<&Write> = histories
        .iter()
        .flat_map(|h| &h.writes)
        .filter(|w| w.outcome == "ok")
        .collect();
    for a in &accepted {
        for b in &accepted {
            assert!(
                !(a.end < b.start && a.epoch > b.epoch),
                "epoch {} was accepted after epoch {} had written: {a:?} then {b:?}",
                b.epoch,
                a.epoch
            );
        }
    }
    for (i, h) in histories.iter().enumerate() {
        for w in &h.writes {
            assert!(
                w.outcome == "ok" || w.outcome == "fenced",
                "elector {i}: a write failed otherwise: {w:?}"
            );
        }
    }
    let highest = accepted
        .iter()
        .map(|w| w.epoch)
        .max()
        .ok_or("no accepted write")?;
    let last_epoch: u64 = last.split(' ').nth(1).ok_or("bad value")?.parse()?;
    assert_eq!(
        last_epoch, highest,
        "the last value `{last}` is not the highest epoch's"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_process_is_fenced_by_epoch() -> TestResult {
    match std::env::var_os(CHILD_LOG) {
        Some(log) => child(PathBuf::from(log)).await,
        None => parent().await,
    }
}
