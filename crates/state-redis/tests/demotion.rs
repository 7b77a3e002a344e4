//! RELIABILITY case 13, the `READONLY` half: the Sentinel primary is demoted behind the
//! Sentinels' back (`REPLICAOF` sent to it directly) while writes run. The demoted node
//! answers `READONLY`; the client must drop that connection and ask the Sentinels again —
//! not loop on the error — and writes must resume on the node the Sentinels name after
//! they fail over (forced here with `SENTINEL FAILOVER`, as an operator would), in the same
//! process, with the same backend.
//!
//! Two backends share the topology:
//! - the *probe* never retries (`failover_timeout` zero, no retries): every failure reaches
//!   the test, which checks that it saw `READONLY`, that every error was a retryable
//!   failover error (never a configuration error), and that once every Sentinel names the
//!   new primary each pool connection fails at most twice (a stale connection answering
//!   `READONLY` or cut by the Sentinels' reconfiguration) and then writes succeed;
//! - the *riding* load uses the default `failover_timeout`: the failover is ridden out, so
//!   its only possible errors are outcome-unknown ones (a connection cut by the Sentinels
//!   with `CLIENT KILL` while a write was in flight).
//!
//! What a demotion may lose: a write the old primary acknowledged before it became a replica
//! but had not yet streamed to the replica is dropped when the old primary resynchronises
//! from the replica. So writes *started* before the demotion may be lost (they are counted);
//! every write started after `REPLICAOF` returned could only be applied by the new primary,
//! and must be readable at the end.
//!
//! Every loop is bounded in count and time.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use state_core::{ErrorKind, StateBackend, StateError};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::RedisSentinel;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The longest a writer runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(120);
/// The probe's pool size: each of its connections may fail at most twice after settling.
const PROBE_POOL: u32 = 2;

#[derive(Debug, Clone)]
struct Acked {
    key: Vec<u8>,
    started: Instant,
}

#[derive(Debug, Clone)]
struct Failed {
    started: Instant,
    kind: ErrorKind,
    outcome_unknown: bool,
    message: String,
}

#[derive(Default)]
struct Record {
    acked: Mutex<Vec<Acked>>,
    failed: Mutex<Vec<Failed>>,
}

impl Record {
    fn acked(&self) -> Vec<Acked> {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn failed(&self) -> Vec<Failed> {
        self.failed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn note(&self, key: Vec<u8>, started: Instant, result: Result<(), StateError>) {
        match result {
            Ok(()) => self
                .acked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Acked { key, started }),
            Err(e) => self
                .failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Failed {
                    started,
                    kind: e.kind(),
                    outcome_unknown: e.outcome_unknown(),
                    message: e.to_string(),
                }),
        }
    }
}

struct Load {
    backend: Arc<RedisStateBackend>,
    record: Arc<Record>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `writers` tasks putting distinct keys (value = key), pausing `pause` between writes.
    fn start(backend: Arc<RedisStateBackend>, writers: usize, pause: Duration) -> Load {
        let record = Arc::new(Record::default());
        let stop = Arc::new(AtomicBool::new(false));
        let began = Instant::now();
        let writers = (0..writers)
            .map(|w| {
                let (backend, record, stop) =
                    (Arc::clone(&backend), Arc::clone(&record), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && began.elapsed() < LOAD_LIMIT {
                        let key = format!("w{w}:{i}").into_bytes();
                        let started = Instant::now();
                        let result = backend.put(&key, &key).await;
                        record.note(key, started, result);
                        i += 1;
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load {
            backend,
            record,
            stop,
            writers,
        }
    }

    /// Waits (up to `limit`) until `enough` holds for the record.
    async fn wait_until(&self, what: &str, limit: Duration, enough: impl Fn(&Record) -> bool) {
        let deadline = Instant::now() + limit;
        while !enough(&self.record) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            enough(&self.record),
            "{what} did not happen within {limit:?}: {} writes acknowledged, failures {:?}",
            self.record.acked().len(),
            self.record
                .failed()
                .iter()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
        );
    }

    /// Stops the writers; returns the acknowledged writes whose value is not readable.
    async fn stop_and_find_lost(self) -> Result<(Arc<Record>, Vec<Acked>), StateError> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            let _ = w.await;
        }
        let acked = self.record.acked();
        let mut lost = Vec::new();
        for chunk in acked.chunks(500) {
            let keys: Vec<&[u8]> = chunk.iter().map(|a| a.key.as_slice()).collect();
            let got = self.backend.batch_get(&keys).await?;
            for (a, v) in chunk.iter().zip(got) {
                if v.as_deref() != Some(a.key.as_slice()) {
                    lost.push(a.clone());
                }
            }
        }
        self.backend.clear(b"").await?;
        Ok((self.record, lost))
    }
}

fn config(url: &str, riding: bool) -> Result<RedisConfig, StateError> {
    let builder = RedisConfig::builder()
        .url(url)
        .key_prefix(testing::conformance::unique_namespace())
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(1000));
    if riding {
        builder
            .retries(4, Duration::from_millis(50), Duration::from_millis(500))
            .failover_timeout(Duration::from_secs(30))
            .build()
    } else {
        builder
            .pool_size(1, PROBE_POOL)
            .retries(0, Duration::ZERO, Duration::ZERO)
            .failover_timeout(Duration::ZERO)
            .build()
    }
}

/// `SENTINEL FAILOVER`, sent again (at most 20 times) while a Sentinel answers that it
/// cannot start one yet.
async fn force_failover(topology: &RedisSentinel) -> TestResult {
    let sentinel = topology
        .sentinel_ports()
        .first()
        .copied()
        .unwrap_or_default();
    let name = topology.master_name().to_owned();
    let mut last = String::new();
    for _ in 0..20 {
        last = topology
            .cli(sentinel, &["SENTINEL", "FAILOVER", &name])
            .await?;
        if last.trim() == "OK" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(format!("SENTINEL FAILOVER kept failing: {last}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_demoted_behind_the_sentinels_back_is_left_for_the_new_one() -> TestResult {
    let topology = RedisSentinel::start().await?;
    let url = topology.url();
    let riding = Load::start(
        Arc::new(RedisStateBackend::new(config(&url, true)?).await?),
        4,
        Duration::from_millis(2),
    );
    let probe = Load::start(
        Arc::new(RedisStateBackend::new(config(&url, false)?).await?),
        1,
        Duration::from_millis(20),
    );
    riding
        .wait_until("the riding load's start", Duration::from_secs(20), |r| {
            r.acked().len() >= 200
        })
        .await;
    probe
        .wait_until("the probe's start", Duration::from_secs(20), |r| {
            r.acked().len() >= 20
        })
        .await;
    assert!(
        probe.record.failed().is_empty() && riding.record.failed().is_empty(),
        "writes failed before anything happened"
    );

    // Demote the primary behind the Sentinels' back: it becomes a replica of the replica.
    let old = topology.primary_port().await?;
    let replica = topology.replica_port().await?;
    let out = topology
        .cli(old, &["REPLICAOF", "127.0.0.1", &replica.to_string()])
        .await?;
    assert_eq!(out.trim(), "OK", "REPLICAOF: {out}");
    let demoted = Instant::now();

    // The probe sees READONLY from the demoted node.
    probe
        .wait_until("a READONLY error", Duration::from_secs(10), |r| {
            r.failed().iter().any(|f| f.message.contains("READONLY"))
        })
        .await;

    force_failover(&topology).await?;
    let new = topology
        .wait_for_new_primary(old, Duration::from_secs(30))
        .await?;
    assert_eq!(new, replica, "the Sentinels promoted an unexpected node");
    topology
        .wait_settled_on(new, None, Duration::from_secs(30))
        .await?;
    let settled = Instant::now();

    // Writes resume in the same processes, on the same backends.
    let resumed = |r: &Record| r.acked().iter().filter(|a| a.started > settled).count();
    probe
        .wait_until("the probe's resumption", Duration::from_secs(15), |r| {
            resumed(r) >= 50
        })
        .await;
    riding
        .wait_until(
            "the riding load's resumption",
            Duration::from_secs(15),
            |r| resumed(r) >= 200,
        )
        .await;

    let (probe_record, probe_lost) = probe.stop_and_find_lost().await?;
    let (riding_record, riding_lost) = riding.stop_and_find_lost().await?;
    let probe_failed = probe_record.failed();
    let riding_failed = riding_record.failed();
    eprintln!(
        "demotion of {old}, new primary {new}: probe {} acked, {} failed ({} after settling), \
         {} lost; riding {} acked, {} failed, {} lost (all started before the demotion: {})",
        probe_record.acked().len(),
        probe_failed.len(),
        probe_failed.iter().filter(|f| f.started > settled).count(),
        probe_lost.len(),
        riding_record.acked().len(),
        riding_failed.len(),
        riding_lost.len(),
        riding_lost.iter().all(|a| a.started < demoted),
    );

    // Every failure is a failover error, retryable: never a configuration error.
    for f in probe_failed.iter().chain(&riding_failed) {
        assert!(
            matches!(
                f.kind,
                ErrorKind::Unavailable | ErrorKind::Connection | ErrorKind::Timeout
            ),
            "a demotion was reported as {:?}: {}",
            f.kind,
            f.message
        );
    }
    // The riding load waited the failover out: only a write cut off in flight may fail.
    for f in &riding_failed {
        assert!(
            f.outcome_unknown,
            "the riding load reported a failover it should have waited out: {}",
            f.message
        );
    }
    assert!(
        riding_failed.len() <= 8,
        "the riding load failed {} times",
        riding_failed.len()
    );
    // No error loop: once every Sentinel names the new primary, each connection of the
    // probe fails at most twice (READONLY on a stale connection, or its cut by the
    // Sentinels' reconfiguration of the old primary), then it is dialled to the new one.
    let late = probe_failed.iter().filter(|f| f.started > settled).count();
    assert!(
        late <= 2 * PROBE_POOL as usize,
        "the probe kept failing after the Sentinels named the new primary: {late} failures, \
         e.g. {:?}",
        probe_failed.last()
    );
    // What may be lost: only writes started before the demotion (acknowledged by the old
    // primary, not yet streamed to the replica). Everything started after it is readable.
    for a in probe_lost.iter().chain(&riding_lost) {
        assert!(
            a.started < demoted,
            "a write started after the demotion was acknowledged and lost: {:?}",
            String::from_utf8_lossy(&a.key)
        );
    }
    Ok(())
}
