//! The history checker end to end: the workload on the memory backend is linearizable and
//! clean, honest failures (errors of known and unknown outcome, timeouts, late effects)
//! keep it so, and backends with one deliberate bug each are caught.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use state_core::{
    BoxStream, Capabilities, Checkpoint, Entry, ErrorKind, FencingToken, Health, ImportMode,
    MemoryBackend, Result, StateBackend, StateError, Ttl,
};
use testing::conformance::unique_namespace;
use testing::faults::Impatient;
use testing::history::{
    Anomalies, FaultLog, History, Op, Outcome, Output, Record, SimConfig, Trial, Verdict,
    WorkloadConfig, anomalies, check, run_workload, run_workload_with, simulate, trial,
};

/// The one bug (or honest misbehaviour) a [`Wrapped`] backend adds to the memory backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    /// Every 3rd get returns the value before the last write of the key.
    StaleRead,
    /// Every 3rd compare_and_swap ignores its expectation: swaps and returns true.
    BlindCas,
    /// Every 3rd delete of a present key returns true and leaves the key.
    LostDelete,
    /// Every 5th put is applied, then reported as an error without `outcome_unknown`.
    LyingFailure,
    /// Not a bug: errors of unknown outcome applied before, after or never; errors of known
    /// outcome never applied; puts applied 20 ms after their error; stalls past the client
    /// timeout.
    Flaky,
}

#[derive(Debug)]
struct Wrapped {
    inner: MemoryBackend,
    bug: Bug,
    calls: AtomicU64,
    /// Every value written per key, in order, for the stale read.
    written: Mutex<HashMap<Vec<u8>, Vec<Bytes>>>,
}

fn unknown() -> StateError {
    StateError::new(ErrorKind::Connection, "connection reset after sending").with_outcome_unknown()
}

fn refused() -> StateError {
    StateError::new(ErrorKind::Connection, "connection refused before sending")
}

impl Wrapped {
    fn backend(bug: Bug) -> Arc<dyn StateBackend> {
        Arc::new(Wrapped {
            inner: MemoryBackend::new(),
            bug,
            calls: AtomicU64::new(0),
            written: Mutex::new(HashMap::new()),
        })
    }

    /// Counts calls; true on every `n`th.
    fn every(&self, n: u64) -> bool {
        self.calls.fetch_add(1, Ordering::Relaxed) % n == n - 1
    }

    fn remember(&self, key: &[u8], value: &[u8]) {
        if self.bug == Bug::StaleRead {
            let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let list = written.entry(key.to_vec()).or_default();
            list.push(Bytes::copy_from_slice(value));
        }
    }

    /// For [`Bug::Flaky`]: runs `op`, maybe failing before or after it, or stalling.
    async fn flaky<T>(&self, op: impl Future<Output = Result<T>>) -> Result<T> {
        if self.bug != Bug::Flaky {
            return op.await;
        }
        match self.calls.fetch_add(1, Ordering::Relaxed) % 29 {
            3 => Err(unknown()),
            7 => op.await.and(Err(unknown())),
            11 => Err(refused()),
            17 => {
                tokio::time::sleep(Duration::from_millis(80)).await;
                op.await
            }
            19 => {
                let value = op.await;
                tokio::time::sleep(Duration::from_millis(80)).await;
                value
            }
            _ => op.await,
        }
    }
}

#[async_trait]
impl StateBackend for Wrapped {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        if self.bug == Bug::StaleRead && self.every(3) {
            let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
            let previous = written
                .get(key)
                .and_then(|list| list.len().checked_sub(2).map(|i| list[i].clone()));
            if previous.is_some() {
                return Ok(previous);
            }
        }
        self.flaky(self.inner.get(key)).await
    }
    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.bug == Bug::LyingFailure && self.every(5) {
            self.inner.put(key, value).await?;
            return Err(refused());
        }
        if self.bug == Bug::Flaky && self.every(13) {
            // Applied 20 ms after the client was told the outcome is unknown.
            let (inner, key, value) = (self.inner.clone(), key.to_vec(), value.to_vec());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let _ = inner.put(&key, &value).await;
            });
            return Err(unknown());
        }
        self.flaky(self.inner.put(key, value)).await?;
        self.remember(key, value);
        Ok(())
    }
    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.inner.put_with_ttl(key, value, ttl).await
    }
    async fn delete(&self, key: &[u8]) -> Result<bool> {
        if self.bug == Bug::LostDelete && self.every(3) && self.inner.get(key).await?.is_some() {
            return Ok(true);
        }
        self.flaky(self.inner.delete(key)).await
    }
    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        self.flaky(self.inner.batch_get(keys)).await
    }
    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        self.flaky(self.inner.batch_put(entries)).await?;
        for (key, value) in entries {
            self.remember(key, value);
        }
        Ok(())
    }
    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        self.flaky(self.inner.batch_delete(keys)).await
    }
    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.flaky(self.inner.get_and_delete(key)).await
    }
    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let stored = self
            .flaky(self.inner.set_if_not_exists(key, value, ttl))
            .await?;
        if stored {
            self.remember(key, value);
        }
        Ok(stored)
    }
    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        if self.bug == Bug::BlindCas && self.every(3) {
            self.inner.put(key, new).await?;
            return Ok(true);
        }
        let swapped = self
            .flaky(self.inner.compare_and_swap(key, expected, new))
            .await?;
        if swapped {
            self.remember(key, new);
        }
        Ok(swapped)
    }
    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()> {
        self.inner.put_fenced(key, value, token).await
    }
    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.inner.ttl(key).await
    }
    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.inner.scan(prefix)
    }
    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        self.inner.count(prefix).await
    }
    async fn clear(&self, prefix: &[u8]) -> Result<u64> {
        self.inner.clear(prefix).await
    }
    async fn checkpoint(&self) -> Result<Checkpoint> {
        self.inner.checkpoint().await
    }
    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        self.inner.restore(checkpoint).await
    }
    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.inner.export(prefix)
    }
    async fn import(&self, entries: BoxStream<'_, Result<Entry>>, mode: ImportMode) -> Result<u64> {
        self.inner.import(entries, mode).await
    }
    async fn health_check(&self) -> Result<Health> {
        self.inner.health_check().await
    }
}

/// A run bounded by `ops` per client (about a second here), so that a loaded machine
/// makes it slower, not shorter; 30 s bounds it in time.
fn config(seed: u64, ops: u64) -> WorkloadConfig {
    WorkloadConfig {
        prefix: unique_namespace(),
        duration: Duration::from_secs(30),
        max_ops_per_client: ops,
        seed,
        ..WorkloadConfig::default()
    }
}

/// Checks a history, printing what a failing test needs.
fn verdict(name: &str, history: &History) -> (Verdict, Anomalies) {
    let started = Instant::now();
    let verdict = check(history);
    let a = anomalies(history);
    println!(
        "{name}: {} ops on {} keys, checked in {:?}: {verdict}\n{a}",
        history.len(),
        history.keys().len(),
        started.elapsed()
    );
    (verdict, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_backend_histories_are_linearizable_and_clean() {
    for seed in 1..=3 {
        let backend = Arc::new(MemoryBackend::new());
        let history = run_workload(backend.clone(), config(seed, 800)).await;
        let (v, a) = verdict("memory", &history);
        assert_eq!(v, Verdict::Linearizable, "seed {seed}");
        assert!(a.is_clean(), "seed {seed}: {a}");
        assert_eq!(
            history.len(),
            8 * 800 + 4,
            "every op and one final read per key"
        );
        assert_eq!(
            a.total.ok,
            history.len(),
            "nothing fails on the memory backend"
        );
        // Some of every kind ran, and some CASes swapped.
        assert_eq!(a.by_kind.len(), 9, "{a}");
        let swapped = history.records().iter().any(|r| {
            matches!(r.op, Op::Cas { .. }) && r.outcome == Outcome::Ok(Output::Bool(true))
        });
        assert!(swapped, "seed {seed}: no CAS ever succeeded");
        assert_eq!(
            backend.count(b"").await.expect("count"),
            0,
            "keys cleaned up"
        );
    }
}

/// The memory backend through `testing::faults::Impatient` (every 7th call abandoned
/// part-way), run the way every backend's `tests/histories.rs` runs (sized by
/// `STATE_HISTORY_SECS` / `STATE_HISTORY_RUNS`, logged to `STATE_HISTORY_LOG`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_histories_with_abandoned_calls_are_linearizable() {
    for run in 0..trial::runs() {
        let log = FaultLog::new();
        let backend = Arc::new(Impatient::new(
            Arc::new(MemoryBackend::new()),
            7,
            Arc::clone(&log),
        ));
        let workload = WorkloadConfig {
            prefix: unique_namespace(),
            duration: trial::run_duration(),
            ..WorkloadConfig::default()
        };
        let name = format!("memory, every 7th call abandoned (run {})", run + 1);
        let trial = Trial::run(&name, backend, workload, log, std::future::pending()).await;
        assert!(trial.anomalies.total.unknown > 0, "no call was abandoned");
        trial.assert_correct();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_failures_and_timeouts_stay_linearizable() {
    let mut cfg = config(7, 500);
    cfg.op_timeout = Duration::from_millis(50);
    let faults_ran = Arc::new(AtomicU64::new(0));
    let ticks = faults_ran.clone();
    let faults = async move {
        // A stand-in fault injector, bounded in count and time.
        for _ in 0..100_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ticks.fetch_add(1, Ordering::Relaxed);
        }
    };
    let history = run_workload_with(Wrapped::backend(Bug::Flaky), cfg, faults).await;
    let ran = faults_ran.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopped = faults_ran.load(Ordering::Relaxed);
    assert!(
        ran > 0 && ran == stopped,
        "the fault loop ran {ran} times, then {stopped}"
    );
    let (v, a) = verdict("flaky", &history);
    assert_eq!(v, Verdict::Linearizable);
    assert!(a.is_clean(), "{a}");
    assert!(a.total.unknown > 100 && a.total.failed > 50, "{a}");
}

/// Runs a broken backend until its history is caught, in at most three runs.
async fn caught(bug: Bug) -> (History, Verdict, Anomalies) {
    let mut last = None;
    for seed in 0..3 {
        let history = run_workload(Wrapped::backend(bug), config(100 + seed, 500)).await;
        let (v, a) = verdict(&format!("{bug:?}"), &history);
        if let Verdict::NotLinearizable(_) = &v {
            return (history, v, a);
        }
        last = Some(v);
    }
    panic!("{bug:?} was not caught in three runs; last verdict: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_read_is_caught() {
    let (_, _, a) = caught(Bug::StaleRead).await;
    assert!(a.stale_reads > 0 && a.lost_writes > 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cas_that_ignores_its_expectation_is_caught() {
    caught(Bug::BlindCas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_delete_is_caught() {
    let (_, _, a) = caught(Bug::LostDelete).await;
    assert!(a.resurrections > 0, "{a}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_write_reported_as_failed_is_caught() {
    let (_, _, a) = caught(Bug::LyingFailure).await;
    assert!(a.values_from_nowhere > 0, "{a}");
}

#[test]
fn a_large_history_with_unknown_outcomes_checks_in_seconds() {
    let shape = SimConfig {
        ops_per_key: 10_000,
        unknown_per_mille: 8,
        slow_per_mille: 20,
        seed: 11,
        ..SimConfig::default()
    };
    let mut history = simulate(&shape);
    // One read stuck for the whole run, then answered: no point is quiescent any more.
    let end = history.records().iter().filter_map(|r| r.complete).max();
    let stuck = Outcome::Ok(Output::Value(None));
    history.push(99, Op::Get { key: 0 }, 0, end.map(|t| t + 1), stuck);
    let unknown = history
        .records()
        .iter()
        .filter(|r| r.outcome == Outcome::Unknown)
        .count();
    let started = Instant::now();
    let v = check(&history);
    println!(
        "simulated: {} ops ({unknown} unknown) on 4 keys, checked in {:?}: {v}",
        history.len(),
        started.elapsed()
    );
    assert_eq!(v, Verdict::Linearizable);
    assert!(unknown > 200, "{unknown} unknown ops");
}

#[test]
fn a_stale_read_deep_in_a_large_history_is_found() {
    let shape = SimConfig {
        ops_per_key: 10_000,
        unknown_per_mille: 8,
        seed: 12,
        ..SimConfig::default()
    };
    let mut records = simulate(&shape).into_records();
    let n = records.len();
    let is_put = |r: &Record| {
        matches!(r.op, Op::Put { key: 0, .. }) && r.outcome == Outcome::Ok(Output::Done)
    };
    let old = records[n / 4..]
        .iter()
        .find(|r| is_put(r))
        .and_then(|r| r.op.writes().first().map(|w| w.1))
        .expect("an acknowledged put of k0");
    let read = records[n / 2..]
        .iter_mut()
        .find(|r| matches!(r.op, Op::Get { key: 0 }) && matches!(r.outcome, Outcome::Ok(_)))
        .expect("a successful get of k0");
    read.outcome = Outcome::Ok(Output::Value(Some(old)));
    let stale = read.id;
    let history = History::from_records(records);
    let started = Instant::now();
    let v = check(&history);
    println!(
        "one stale read among {n} ops, found in {:?}",
        started.elapsed()
    );
    match v {
        Verdict::NotLinearizable(report) => {
            assert_eq!((report.key, report.stuck), (0, stale), "{report}");
            println!("{report}");
        }
        other => panic!("expected a violation, got {other}"),
    }
    assert!(anomalies(&history).stale_reads >= 1);
}
