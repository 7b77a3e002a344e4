//! RELIABILITY 29: `statectl bench` spans a failover. The primary of a Sentinel deployment,
//! or a master of a Cluster, is SIGKILLed while the benchmark runs; the benchmark keeps going
//! (reads and what is safe to re-send wait for the promoted node, writes of unknown outcome
//! are counted by kind) and completes, and a command run right after it succeeds at its
//! first try. A `statectl put` started while the Sentinels promote a replica waits for it
//! and succeeds.
//!
//! Each test starts its own topology (it kills a node of it); every wait is bounded.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testing::services::{RedisCluster, RedisSentinel};

mod common;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How long after its start the benchmark's node is killed: it has connected and is
/// measuring by then.
const KILL_AFTER: Duration = Duration::from_millis(1000);
/// The longest the benchmark may take, failover included.
const BENCH_LIMIT: Duration = Duration::from_secs(150);
/// Calls the benchmark makes: several seconds of work in a debug build, so it outlasts the
/// kill (checked), and well under the limit.
const BENCH_OPS: u64 = 400_000;
const BENCH_ARGS: [&str; 8] = [
    "--workload",
    "mixed",
    "--ops",
    "400000",
    "--concurrency",
    "8",
    "--keyspace",
    "2000",
];

fn statectl(url: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_statectl"));
    cmd.current_dir(dir)
        .env_remove("STATE_URL")
        .arg("--url")
        .arg(url);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The benchmark running in the background; killed if the test ends before it does.
struct Bench(Option<Child>);

impl Drop for Bench {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the benchmark in the background, its JSON report going to `dir/bench.json`.
fn start_bench(url: &str, dir: &Path) -> std::io::Result<Bench> {
    let child = statectl(url, dir)
        .arg("bench")
        .args(BENCH_ARGS)
        .args(["--json", "bench.json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    Ok(Bench(Some(child)))
}

/// Fails if the benchmark has already ended: the kill must fall inside it.
fn still_running(bench: &mut Bench) -> TestResult {
    let Some(child) = bench.0.as_mut() else {
        return Err("the benchmark was not started".into());
    };
    match child.try_wait()? {
        None => Ok(()),
        Some(status) => Err(format!(
            "the benchmark ended ({status}) before the node was killed; raise BENCH_OPS"
        )
        .into()),
    }
}

/// Waits (bounded) for the benchmark to end; kills it if it runs past the limit.
async fn finish(mut bench: Bench) -> Result<Output, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let Some(child) = bench.0.as_mut() else {
        return Err("the benchmark was not started".into());
    };
    while child.try_wait()?.is_none() {
        if started.elapsed() > BENCH_LIMIT {
            // Killed when `bench` drops.
            return Err(format!("the benchmark ran past {BENCH_LIMIT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let child = bench.0.take().ok_or("the benchmark was not started")?;
    Ok(child.wait_with_output()?)
}

/// The benchmark completed, measured its one op, and counted what failed by kind; then a
/// put and a get, each run once, succeed.
fn check_after(url: &str, dir: &Path, out: &Output, what: &str) -> TestResult {
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: the benchmark did not complete ({:?}): {}{stdout}",
        out.status.code(),
        text(&out.stderr)
    );
    eprintln!("{what}:\n{stdout}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("bench.json"))?)?;
    let row = &report["results"][0];
    assert_eq!(row["op"], "mixed", "{report}");
    let succeeded = row["ops"].as_u64().unwrap_or(0);
    let failed: u64 = row
        .get("errors")
        .and_then(|e| e.as_object())
        .map(|kinds| kinds.values().filter_map(serde_json::Value::as_u64).sum())
        .unwrap_or(0);
    assert_eq!(
        succeeded + failed,
        BENCH_OPS,
        "every call counted once: {report}"
    );
    if let Some(kinds) = row.get("errors").and_then(|e| e.as_object()) {
        for kind in kinds.keys() {
            // Only what may not be sent again is reported: a blind write of unknown outcome.
            assert!(
                kind.contains("outcome unknown"),
                "{what}: a failover error reached the caller although it was safe to \
                 re-send: {kind} ({report})"
            );
        }
    }
    let put = statectl(url, dir)
        .args(["put", "after-failover", "yes"])
        .output()?;
    assert!(
        put.status.success(),
        "{what}: put after the benchmark: {}",
        text(&put.stderr)
    );
    let get = statectl(url, dir)
        .args(["get", "after-failover"])
        .output()?;
    assert!(
        get.status.success(),
        "{what}: get after the benchmark: {}",
        text(&get.stderr)
    );
    assert_eq!(text(&get.stdout).trim(), "yes");
    let del = statectl(url, dir)
        .args(["del", "after-failover"])
        .output()?;
    assert!(del.status.success(), "{what}: del: {}", text(&del.stderr));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_spans_a_sentinel_primary_kill() -> TestResult {
    let mut topology = RedisSentinel::start().await?;
    let dir = tempfile::TempDir::new()?;
    let url = common::with_param(&topology.url(), "prefix", &common::unique("sentinel"));
    let mut bench = start_bench(&url, dir.path())?;
    tokio::time::sleep(KILL_AFTER).await;
    still_running(&mut bench)?;
    let old = topology.kill_primary().await?;
    let killed = Instant::now();
    // A new process opened while the Sentinels promote: it waits for the new primary
    // instead of reporting the failover (once: "master name not found", a Config error).
    let during = statectl(&url, dir.path())
        .args(["put", "during-failover", "yes"])
        .output()?;
    assert!(
        during.status.success(),
        "a put made during the promotion failed ({:?}): {}",
        during.status.code(),
        text(&during.stderr)
    );
    let new = topology
        .wait_for_new_primary(old, Duration::from_secs(60))
        .await?;
    eprintln!(
        "primary {old} killed; {new} promoted after {:?}",
        killed.elapsed()
    );
    still_running(&mut bench)?;
    let out = finish(bench).await?;
    check_after(&url, dir.path(), &out, "sentinel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_spans_a_cluster_master_kill() -> TestResult {
    let mut cluster = RedisCluster::start().await?;
    let dir = tempfile::TempDir::new()?;
    let url = common::with_param(&cluster.url(), "prefix", &common::unique("cluster"));
    let mut bench = start_bench(&url, dir.path())?;
    tokio::time::sleep(KILL_AFTER).await;
    still_running(&mut bench)?;
    let victim = cluster
        .masters()
        .await?
        .first()
        .copied()
        .ok_or("the cluster has no master")?;
    cluster.kill_node(victim)?;
    let killed = Instant::now();
    let promoted = cluster
        .wait_for_promotion(victim, Duration::from_secs(60))
        .await?;
    eprintln!(
        "master {victim} killed; {promoted} promoted after {:?}",
        killed.elapsed()
    );
    still_running(&mut bench)?;
    let out = finish(bench).await?;
    check_after(&url, dir.path(), &out, "cluster")
}
