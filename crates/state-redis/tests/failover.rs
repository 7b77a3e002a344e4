//! Failover under a steady write load: SIGKILL the Sentinel primary or a Cluster master and
//! check that writes resume in the same process, then count acknowledged writes that were
//! lost. Without `wait_replicas` the count is measured and printed (asynchronous
//! replication may lose the last writes); with `wait_replicas(1, …)` it must be zero.
//! Writes must flow again within 15 s of the kill (30 s with `WAIT`, which also needs the
//! test to bring a replica back and let it sync).
//!
//! Each test starts its own topology (it kills a node of it). Loops are bounded in count
//! and time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::{RedisCluster, RedisSentinel};

/// The longest a writer runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(90);
/// Writes must resume this soon after the kill (the requirement).
const RESUME_WITHIN: Duration = Duration::from_secs(15);
/// With `WAIT`, writes also wait for the test to bring a replica back and for its full sync.
const RESUME_WITH_WAIT_WITHIN: Duration = Duration::from_secs(30);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// (key, instant the write was acknowledged) of every acknowledged write.
type Acks = Arc<Mutex<Vec<(Vec<u8>, Instant)>>>;

struct Load {
    backend: Arc<RedisStateBackend>,
    stop: Arc<AtomicBool>,
    acked: Acks,
    failures: Arc<AtomicU64>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// `writers` tasks writing distinct keys, each key starting with `tag` (a Cluster hash
    /// tag pins them to one master).
    fn start(backend: Arc<RedisStateBackend>, writers: usize, tag: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Acks = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let handles = (0..writers)
            .map(|w| {
                let tag = tag.to_string();
                let (backend, stop, acked, failures) = (
                    Arc::clone(&backend),
                    Arc::clone(&stop),
                    Arc::clone(&acked),
                    Arc::clone(&failures),
                );
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && started.elapsed() < LOAD_LIMIT {
                        let key = format!("{tag}w{w}:{i}").into_bytes();
                        match backend.put(&key, &key).await {
                            Ok(()) => acked
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .push((key, Instant::now())),
                            Err(e) => {
                                if failures.fetch_add(1, Ordering::Relaxed) % 50 == 0 {
                                    eprintln!("write failed (sample): {e}");
                                }
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        i += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
            })
            .collect();
        Load {
            backend,
            stop,
            acked,
            failures,
            writers: handles,
        }
    }

    fn acked_count(&self) -> usize {
        self.acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// When writes flowed again after `killed`: waits (up to `limit` after it) for a write
    /// acknowledged after `settled` (when the topology finished failing over), then returns
    /// the end of the longest pause between two acknowledgements since `killed`, measured
    /// from `killed`, with that pause's length.
    async fn resumed_after(
        &self,
        killed: Instant,
        settled: Instant,
        limit: Duration,
    ) -> Option<(Duration, Duration)> {
        let deadline = killed + limit;
        loop {
            let mut done: Vec<Instant> = self
                .acked
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(_, at)| *at)
                .filter(|at| *at >= killed)
                .collect();
            done.sort_unstable();
            if done.last().is_some_and(|last| *last > settled) {
                let mut previous = killed;
                let mut longest = (Duration::ZERO, Duration::ZERO);
                for at in done {
                    let pause = at.duration_since(previous);
                    if pause > longest.1 {
                        longest = (at.duration_since(killed), pause);
                    }
                    previous = at;
                }
                return Some(longest);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "no resumption: {} acked, {} failed",
                    self.acked_count(),
                    self.failures.load(Ordering::Relaxed)
                );
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the writers and counts acknowledged writes whose value is gone.
    async fn stop_and_count_lost(self) -> Result<(usize, usize), state_core::StateError> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.writers {
            let _ = w.await;
        }
        let acked: Vec<Vec<u8>> = self
            .acked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, _)| k.clone())
            .collect();
        let mut lost = 0;
        for chunk in acked.chunks(500) {
            let keys: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let got = self.backend.batch_get(&keys).await?;
            lost += keys
                .iter()
                .zip(got)
                .filter(|(k, v)| v.as_deref() != Some(**k))
                .count();
        }
        self.backend.clear(b"").await?;
        Ok((acked.len(), lost))
    }
}

fn config(url: &str, wait: bool) -> Result<RedisConfig, state_core::StateError> {
    let mut builder = RedisConfig::builder()
        .url(url)
        .key_prefix(testing::conformance::unique_namespace())
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(1000))
        .retries(4, Duration::from_millis(50), Duration::from_millis(500));
    if wait {
        builder = builder.wait_replicas(1, Duration::from_millis(500));
    }
    builder.build()
}

#[track_caller]
fn assert_resumed(resumed: Option<(Duration, Duration)>, within: Duration) {
    assert!(
        resumed.is_some_and(|(at, _)| at <= within),
        "writes did not resume within {within:?} of the kill: {resumed:?}"
    );
}

async fn wait_for_acks(load: &Load, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.acked_count() < at_least && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        load.acked_count() >= at_least,
        "the load never got going: {} writes acknowledged, {} failed",
        load.acked_count(),
        load.failures.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_primary_killed_writes_resume_and_losses_are_counted() -> TestResult {
    let mut topology = RedisSentinel::start().await?;
    let backend = Arc::new(RedisStateBackend::new(config(&topology.url(), false)?).await?);
    let load = Load::start(Arc::clone(&backend), 4, "");
    wait_for_acks(&load, 200).await;

    // A manual failover first: the old primary turns replica and answers READONLY, which
    // must make the client ask the sentinels again rather than loop on errors.
    let sentinel = topology.sentinel_ports()[0];
    let before = topology.primary_port().await?;
    let switched = Instant::now();
    topology
        .cli(sentinel, &["SENTINEL", "FAILOVER", topology.master_name()])
        .await?;
    topology
        .wait_for_new_primary(before, Duration::from_secs(30))
        .await?;
    let resumed = load
        .resumed_after(switched, Instant::now(), RESUME_WITHIN)
        .await;
    eprintln!("sentinel manual failover: writes resumed (end, longest pause) {resumed:?}");
    assert!(
        resumed.is_some(),
        "writes did not resume after a manual failover"
    );

    let killed_port = topology.kill_primary().await?;
    let killed = Instant::now();
    let new_primary = topology
        .wait_for_new_primary(killed_port, Duration::from_secs(30))
        .await?;
    let resumed = load
        .resumed_after(killed, Instant::now(), RESUME_WITHIN)
        .await;
    let failures = load.failures.load(Ordering::Relaxed);
    let (acked, lost) = load.stop_and_count_lost().await?;
    eprintln!(
        "sentinel failover (no WAIT): SIGKILL of primary {killed_port}, new primary \
         {new_primary}; writes resumed (at, longest pause) {resumed:?}; {acked} acknowledged writes, \
         {lost} lost; {failures} writes failed during the failover; stats {:?}",
        backend.stats().await
    );
    assert_resumed(resumed, RESUME_WITHIN);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_with_wait_replicas_loses_no_acknowledged_write() -> TestResult {
    let mut topology = RedisSentinel::start().await?;
    let backend = Arc::new(RedisStateBackend::new(config(&topology.url(), true)?).await?);
    let load = Load::start(Arc::clone(&backend), 4, "");
    wait_for_acks(&load, 200).await;
    let killed_port = topology.kill_primary().await?;
    let killed = Instant::now();
    let new_primary = topology
        .wait_for_new_primary(killed_port, Duration::from_secs(30))
        .await?;
    // WAIT 1 needs a replica: bring the old primary back as one at once, as an operator
    // would (the sentinels would convert it too, but only after their next INFO poll).
    topology.restart_node(killed_port).await?;
    topology
        .cli(
            killed_port,
            &["REPLICAOF", "127.0.0.1", &new_primary.to_string()],
        )
        .await?;
    let resumed = load
        .resumed_after(killed, Instant::now(), RESUME_WITH_WAIT_WITHIN)
        .await;
    let (acked, lost) = load.stop_and_count_lost().await?;
    eprintln!(
        "sentinel failover (WAIT 1): SIGKILL of primary {killed_port}, new primary \
         {new_primary}; writes resumed (at, longest pause) {resumed:?}; {acked} acknowledged writes, {lost} lost"
    );
    assert_resumed(resumed, RESUME_WITH_WAIT_WITHIN);
    assert_eq!(lost, 0, "acknowledged writes were lost despite WAIT");
    Ok(())
}

/// The hash tag the cluster load writes under, and the master that owns its slot.
const TAG: &str = "{a}";

async fn owner_of_tag(cluster: &RedisCluster) -> Result<u16, Box<dyn std::error::Error>> {
    for port in cluster.masters().await? {
        // Only the owner answers an integer; the others answer MOVED.
        let reply = cluster.cli(port, &["EXISTS", "{a}probe"]).await?;
        if reply.trim() == "0" || reply.trim() == "1" {
            return Ok(port);
        }
    }
    Err("no master owns the slot of the tag".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_master_killed_writes_resume_and_losses_are_counted() -> TestResult {
    let mut cluster = RedisCluster::start().await?;
    let backend = Arc::new(RedisStateBackend::new(config(&cluster.url(), false)?).await?);
    let load = Load::start(Arc::clone(&backend), 4, TAG);
    wait_for_acks(&load, 200).await;
    let victim = owner_of_tag(&cluster).await?;
    cluster.kill_node(victim)?;
    let killed = Instant::now();
    let promoted = cluster
        .wait_for_promotion(victim, Duration::from_secs(30))
        .await?;
    let resumed = load
        .resumed_after(killed, Instant::now(), RESUME_WITHIN)
        .await;
    let failures = load.failures.load(Ordering::Relaxed);
    let (acked, lost) = load.stop_and_count_lost().await?;
    eprintln!(
        "cluster failover (no WAIT): SIGKILL of master {victim}, replica {promoted} promoted; \
         writes resumed (at, longest pause) {resumed:?}; {acked} acknowledged writes, {lost} lost; \
         {failures} writes failed during the failover"
    );
    assert_resumed(resumed, RESUME_WITHIN);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_wait_replicas_loses_no_acknowledged_write() -> TestResult {
    let mut cluster = RedisCluster::start().await?;
    let backend = Arc::new(RedisStateBackend::new(config(&cluster.url(), true)?).await?);
    let load = Load::start(Arc::clone(&backend), 4, TAG);
    wait_for_acks(&load, 200).await;
    let victim = owner_of_tag(&cluster).await?;
    cluster.kill_node(victim)?;
    let killed = Instant::now();
    let promoted = cluster
        .wait_for_promotion(victim, Duration::from_secs(30))
        .await?;
    cluster.restart_node(victim).await?;
    let resumed = load
        .resumed_after(killed, Instant::now(), RESUME_WITH_WAIT_WITHIN)
        .await;
    let (acked, lost) = load.stop_and_count_lost().await?;
    eprintln!(
        "cluster failover (WAIT 1): SIGKILL of master {victim}, replica {promoted} promoted; \
         writes resumed (at, longest pause) {resumed:?}; {acked} acknowledged writes, {lost} lost"
    );
    assert_resumed(resumed, RESUME_WITH_WAIT_WITHIN);
    assert_eq!(lost, 0, "acknowledged writes were lost despite WAIT");
    Ok(())
}
