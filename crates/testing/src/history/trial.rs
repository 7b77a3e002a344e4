//! One checked run of the workload under faults, the way every backend's history test runs
//! it: record, check, count, print one line, and append a JSON record for HISTORIES.md.
//!
//! How long a run lasts and how many runs a test makes come from the environment, so that
//! CI runs the short form and a person measures the long one with the same tests:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `STATE_HISTORY_SECS` | 3 | seconds of workload per run |
//! | `STATE_HISTORY_RUNS` | 1 | runs per test (each checked) |
//! | `STATE_HISTORY_LOG` | unset | a file to append one JSON line per run to |

use std::fmt;
use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use state_core::StateBackend;

use super::{Anomalies, History, Outcome, Verdict, WorkloadConfig, anomalies, check};

/// Seconds of workload per run: `STATE_HISTORY_SECS`, else 3.
pub fn run_duration() -> Duration {
    env_number("STATE_HISTORY_SECS")
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(3))
}

/// Runs per test: `STATE_HISTORY_RUNS`, else 1.
pub fn runs() -> u64 {
    env_number("STATE_HISTORY_RUNS").unwrap_or(1).max(1)
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Counts the faults a fault loop injected, by name, for the run's summary.
#[derive(Debug, Default)]
pub struct FaultLog {
    counts: std::sync::Mutex<std::collections::BTreeMap<&'static str, usize>>,
    total: AtomicUsize,
}

impl FaultLog {
    /// A log shared between the fault loop and the trial.
    pub fn new() -> Arc<FaultLog> {
        Arc::new(FaultLog::default())
    }

    /// Counts one `fault` (`"CLIENT KILL"`, `"proxy reset"`…) that hit `n` connections.
    pub fn note(&self, fault: &'static str, n: usize) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(fault).or_insert(0) += n;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// How many times a fault was injected.
    pub fn injections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if counts.is_empty() {
            return "none".to_string();
        }
        counts
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A checked run.
#[derive(Debug)]
pub struct Trial {
    /// What ran: backend, topology and faults (`redis standalone, kills`).
    pub name: String,
    /// The recorded history.
    pub history: History,
    /// The linearizability verdict.
    pub verdict: Verdict,
    /// Jepsen-style counts (RELIABILITY 30).
    pub anomalies: Anomalies,
    /// How long the workload ran.
    pub ran: Duration,
    /// How long the check took.
    pub checked_in: Duration,
    /// The faults injected, by kind (how many connections each hit, in all).
    pub faults: String,
}

impl Trial {
    /// Runs `config` on `backend` with `faults` alongside (it should note what it does in
    /// `log`), checks the history off the async threads, prints the summary and appends it
    /// to `STATE_HISTORY_LOG`.
    pub async fn run<F>(
        name: &str,
        backend: Arc<dyn StateBackend>,
        config: WorkloadConfig,
        log: Arc<FaultLog>,
        faults: F,
    ) -> Trial
    where
        F: Future<Output = ()>,
    {
        let started = Instant::now();
        let history = super::run_workload_with(backend, config, faults).await;
        let ran = started.elapsed();
        let checking = Instant::now();
        let (history, verdict, anomalies) = tokio::task::spawn_blocking(move || {
            let verdict = check(&history);
            let anomalies = anomalies(&history);
            (history, verdict, anomalies)
        })
        .await
        .unwrap_or_else(|e| panic!("the checker panicked: {e}"));
        let trial = Trial {
            name: name.to_string(),
            history,
            verdict,
            anomalies,
            ran,
            checked_in: checking.elapsed(),
            faults: log.describe(),
        };
        eprintln!("{trial}");
        trial.append_to_log();
        trial
    }

    /// Whether the final read of every key (the quiescent reads after the clients stopped,
    /// each tried up to three times) succeeded: the backend serves again after whatever
    /// the faults did.
    pub fn serves_at_the_end(&self) -> bool {
        let records = self.history.records();
        let Some(final_client) = records.iter().map(|r| r.client).max() else {
            return false;
        };
        let mut last_try: std::collections::BTreeMap<Vec<super::Key>, &super::Record> =
            std::collections::BTreeMap::new();
        for r in records.iter().filter(|r| r.client == final_client) {
            last_try.insert(r.op.keys(), r);
        }
        !last_try.is_empty()
            && last_try
                .values()
                .all(|r| matches!(r.outcome, Outcome::Ok(_)))
    }

    /// Panics with the checker's report unless the history is linearizable and free of
    /// anomalies, and the backend served at the end.
    pub fn assert_correct(&self) {
        assert!(
            self.verdict.is_linearizable(),
            "{}: {}\n{}",
            self.name,
            self.verdict,
            self.anomalies.examples.join("\n")
        );
        assert!(
            self.anomalies.is_clean(),
            "{}: {:?}",
            self.name,
            self.anomalies
        );
        assert!(
            self.serves_at_the_end(),
            "{}: a final read failed",
            self.name
        );
    }

    /// The JSON record appended to `STATE_HISTORY_LOG`.
    pub fn to_json(&self) -> serde_json::Value {
        let a = &self.anomalies;
        serde_json::json!({
            "name": self.name,
            "ran_ms": self.ran.as_millis() as u64,
            "checked_ms": self.checked_in.as_millis() as u64,
            "ops": a.total.total(),
            "ok": a.total.ok,
            "failed": a.total.failed,
            "unknown": a.total.unknown,
            "verdict": match &self.verdict {
                Verdict::Linearizable => "linearizable",
                Verdict::NotLinearizable(_) => "not linearizable",
                Verdict::Unknown(_) => "unknown",
            },
            "values_from_nowhere": a.values_from_nowhere,
            "stale_reads": a.stale_reads,
            "lost_writes": a.lost_writes,
            "resurrections": a.resurrections,
            "faults": self.faults,
        })
    }

    fn append_to_log(&self) {
        let Ok(path) = std::env::var("STATE_HISTORY_LOG") else {
            return;
        };
        let line = format!("{}\n", self.to_json());
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot append to STATE_HISTORY_LOG={path}: {e}");
        }
    }
}

impl fmt::Display for Trial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.anomalies;
        let verdict = match &self.verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            other => other.to_string(),
        };
        write!(
            f,
            "history [{}] {:.1?}: {} ops ({} ok, {} failed, {} unknown); faults: {}; \
             {verdict} (checked in {:.2?}); values from nowhere {}, stale reads {} \
             (lost writes {}), resurrections {}",
            self.name,
            self.ran,
            a.total.total(),
            a.total.ok,
            a.total.failed,
            a.total.unknown,
            self.faults,
            self.checked_in,
            a.values_from_nowhere,
            a.stale_reads,
            a.lost_writes,
            a.resurrections
        )
    }
}

/// Runs `fault` every `interval` (the first after one interval) until the workload ends and
/// drops this future, or `max` times; every loop is bounded.
pub async fn every<F, Fut>(interval: Duration, max: usize, mut fault: F)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for round in 0..max {
        tokio::time::sleep(interval).await;
        fault(round).await;
    }
}
