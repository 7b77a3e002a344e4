//! RELIABILITY 30–31 on the embedded store: concurrent histories (8 clients, 4 keys, every
//! operation) checked for linearizability, in both durability modes.
//!
//! There is no connection to break in-process; the fault a caller can cause is giving up.
//! `testing::faults::Impatient` abandons every 7th call part-way (its future dropped after
//! 0–2 polls: not sent, queued for the writer thread, or done): such a call may still be
//! committed by the group writer, and is recorded as of unknown outcome.
//!
//! `STATE_HISTORY_SECS` (default 3) and `STATE_HISTORY_RUNS` (default 1) size the runs;
//! `STATE_HISTORY_LOG` collects their JSON records.

use std::sync::Arc;

use state_core::StateBackend;
use state_embedded::{Durability, RedbBackend, RedbConfig};
use testing::faults::Impatient;
use testing::history::{FaultLog, Trial, WorkloadConfig, trial};

async fn run(mode: &str, durability: Durability) {
    for run in 0..trial::runs() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("a temporary directory: {e}"));
        let config = RedbConfig::new(dir.path().join("histories.redb")).durability(durability);
        let backend = RedbBackend::open_with(config)
            .unwrap_or_else(|e| panic!("cannot open the redb file: {e}"));
        let log = FaultLog::new();
        let impatient = Arc::new(Impatient::new(Arc::new(backend), 7, Arc::clone(&log)));
        let workload = WorkloadConfig {
            prefix: testing::conformance::unique_namespace(),
            duration: trial::run_duration(),
            ..WorkloadConfig::default()
        };
        let name = format!("redb {mode}, every 7th call abandoned (run {})", run + 1);
        let backend: Arc<dyn StateBackend> = impatient.clone();
        let trial = Trial::run(&name, backend, workload, log, std::future::pending()).await;
        assert!(impatient.abandoned() > 0, "no call was abandoned");
        trial.assert_correct();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_with_fsync_are_linearizable() {
    run("immediate", Durability::Immediate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_with_eventual_durability_are_linearizable() {
    run("eventual", Durability::eventual()).await;
}
