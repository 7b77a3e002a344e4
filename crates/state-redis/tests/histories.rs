//! RELIABILITY 29–31 on Redis: concurrent histories (8 clients, 4 keys, every operation)
//! recorded while the library's own connections are killed every 200 ms, then checked for
//! linearizability and counted for anomalies.
//!
//! - **Standalone**: the library talks through a `FaultProxy`; the faults rotate between
//!   `CLIENT KILL ID` of the proxy's upstream connections (never another client's), proxy
//!   resets, a reply dropped after the server executed the request, and half-open
//!   connections. One server is linearizable: the history must be, with no anomaly.
//! - **Sentinel** and **Cluster**: `CLIENT KILL ID` of our connections on the data nodes,
//!   and a SIGKILL of the primary (a master) 40% into the run. Replication is asynchronous,
//!   so these histories are not linearizable by design: the test asserts what holds (no
//!   value from nowhere, the backend serves after the failover) and prints the counts;
//!   HISTORIES.md publishes them.
//!
//! `STATE_HISTORY_SECS` (default 3) and `STATE_HISTORY_RUNS` (default 1) size the runs;
//! `STATE_HISTORY_LOG` collects their JSON records.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use state_core::StateBackend;
use state_redis::RedisStateBackend;
use state_redis::redis::{self, aio::MultiplexedConnection};
use testing::conformance::unique_namespace;
use testing::faults::{FaultProxy, proxy_in_front_of};
use testing::history::{FaultLog, Trial, WorkloadConfig, trial};
use testing::services::{RedisCluster, RedisSentinel};

/// How often a fault is injected.
const FAULT_EVERY: Duration = Duration::from_millis(200);
/// Reply and connect timeouts short enough that a half-open connection is noticed soon.
const TIMEOUTS: &str = "timeout=500ms&connect_timeout=500ms&pool_max=4";

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn workload() -> WorkloadConfig {
    WorkloadConfig {
        prefix: unique_namespace(),
        duration: trial::run_duration(),
        ..WorkloadConfig::default()
    }
}

/// A connection to one node for the faults (not through any proxy).
async fn admin(port: u16) -> redis::RedisResult<MultiplexedConnection> {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await
}

/// Kills, by id, every client of `conn`'s node that `ours` selects (from its `CLIENT
/// LIST` line); returns how many.
async fn kill_clients(conn: &mut MultiplexedConnection, ours: impl Fn(&str) -> bool) -> usize {
    let Ok(list) = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async::<String>(conn)
        .await
    else {
        return 0;
    };
    let Ok(me) = redis::cmd("CLIENT")
        .arg("ID")
        .query_async::<u64>(conn)
        .await
    else {
        return 0;
    };
    let mut killed = 0;
    for line in list.lines().filter(|line| ours(line)) {
        let Some(id) = field(line, "id").and_then(|id| id.parse::<u64>().ok()) else {
            continue;
        };
        if id == me {
            continue;
        }
        let kill = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async::<i64>(conn)
            .await;
        killed += usize::from(matches!(kill, Ok(1)));
    }
    killed
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
}

/// A client of the library on a topology's node: a normal client (not a replica's link),
/// not a Sentinel's, not the admin connection's own `CLIENT LIST`.
fn library_client(line: &str) -> bool {
    let flags = field(line, "flags").unwrap_or("");
    let name = field(line, "name").unwrap_or("");
    !flags.contains('S') && !flags.contains('M') && !name.starts_with("sentinel")
}

/// One fault of the standalone rotation; notes it in `log`.
async fn standalone_fault(
    round: usize,
    proxy: &FaultProxy,
    admin: &mut MultiplexedConnection,
    log: &FaultLog,
) {
    // Half-open connections stall the clients for the reply timeout, with no connection
    // left to kill meanwhile: one round in ten.
    match round % 10 {
        0 | 2 | 4 | 6 | 8 => {
            let ours: HashSet<SocketAddr> = proxy.upstream_local_addrs().into_iter().collect();
            let killed = kill_clients(admin, |line| {
                field(line, "addr")
                    .and_then(|a| a.parse::<SocketAddr>().ok())
                    .is_some_and(|a| ours.contains(&a))
            })
            .await;
            log.note("CLIENT KILL", killed);
        }
        1 | 5 => log.note("proxy reset", proxy.reset_all()),
        3 | 7 => {
            let lost = proxy.drop_next_reply();
            let dropped = tokio::time::timeout(FAULT_EVERY / 2, lost.dropped()).await;
            log.note("reply dropped", usize::from(dropped.is_ok()));
            // Released (or cancelled if nothing came) when `lost` drops here.
        }
        _ => log.note("half-open", proxy.half_open_all()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_histories_under_connection_faults_are_linearizable() -> TestResult {
    let server = testing::services::redis().await?.url();
    let admin_port = testing::services::parse_url(&server)?
        .hosts()
        .first()
        .map(|h| h.port)
        .ok_or("the Redis URL names no server")?;
    for run in 0..trial::runs() {
        let config = workload();
        let url = format!("{server}/?prefix={}&{TIMEOUTS}", config.prefix);
        let (proxy, proxied) = proxy_in_front_of(&url).await?;
        let backend: Arc<dyn StateBackend> = Arc::new(RedisStateBackend::from_url(&proxied).await?);
        let mut admin = admin(admin_port).await?;
        let log = FaultLog::new();
        let faults = {
            let (proxy, log) = (&proxy, Arc::clone(&log));
            async move {
                for round in 0..10_000 {
                    tokio::time::sleep(FAULT_EVERY).await;
                    standalone_fault(round, proxy, &mut admin, &log).await;
                }
            }
        };
        let name = format!("redis standalone, connection faults (run {})", run + 1);
        let trial = Trial::run(&name, backend, config, Arc::clone(&log), faults).await;
        assert!(log.injections() > 0, "no fault was injected");
        trial.assert_correct();
    }
    Ok(())
}

/// What the failover runs must show although they are not linearizable by design.
fn assert_failover_invariants(trial: &Trial) {
    assert_eq!(
        trial.anomalies.values_from_nowhere, 0,
        "{}: a value nobody wrote was read: {:?}",
        trial.name, trial.anomalies.examples
    );
    assert!(
        trial.serves_at_the_end(),
        "{}: the backend did not serve after the failover",
        trial.name
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_histories_across_kills_and_a_failover() -> TestResult {
    for run in 0..trial::runs() {
        let mut topology = RedisSentinel::start().await?;
        let config = workload();
        let failover_at = config.duration * 2 / 5;
        let url = format!("{}?prefix={}&{TIMEOUTS}", topology.url(), config.prefix);
        let backend: Arc<dyn StateBackend> = Arc::new(RedisStateBackend::from_url(&url).await?);
        let log = FaultLog::new();
        let faults = {
            let (topology, log) = (&mut topology, Arc::clone(&log));
            async move {
                let started = tokio::time::Instant::now();
                let mut failed_over = false;
                for _ in 0..10_000 {
                    tokio::time::sleep(FAULT_EVERY).await;
                    if !failed_over && started.elapsed() >= failover_at {
                        failed_over = topology.kill_primary().await.is_ok();
                        log.note("primary SIGKILL", usize::from(failed_over));
                        continue;
                    }
                    let Ok(port) = topology.primary_port().await else {
                        continue;
                    };
                    if let Ok(mut admin) = admin(port).await {
                        log.note(
                            "CLIENT KILL",
                            kill_clients(&mut admin, library_client).await,
                        );
                    }
                }
            }
        };
        let name = format!("redis sentinel, kills + primary SIGKILL (run {})", run + 1);
        let trial = Trial::run(&name, backend, config, Arc::clone(&log), faults).await;
        assert_failover_invariants(&trial);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_histories_across_kills_and_a_failover() -> TestResult {
    for run in 0..trial::runs() {
        let mut cluster = RedisCluster::start().await?;
        let config = workload();
        let failover_at = config.duration * 2 / 5;
        let url = format!("{}?prefix={}&{TIMEOUTS}", cluster.url(), config.prefix);
        let backend: Arc<dyn StateBackend> = Arc::new(RedisStateBackend::from_url(&url).await?);
        let log = FaultLog::new();
        let faults = {
            let (cluster, log) = (&mut cluster, Arc::clone(&log));
            async move {
                let started = tokio::time::Instant::now();
                let mut failed_over = false;
                for _ in 0..10_000 {
                    tokio::time::sleep(FAULT_EVERY).await;
                    let Ok(masters) = cluster.masters().await else {
                        continue;
                    };
                    if !failed_over && started.elapsed() >= failover_at {
                        if let Some(&victim) = masters.first() {
                            failed_over = cluster.kill_node(victim).is_ok();
                            log.note("master SIGKILL", usize::from(failed_over));
                        }
                        continue;
                    }
                    for port in masters {
                        if let Ok(mut admin) = admin(port).await {
                            log.note(
                                "CLIENT KILL",
                                kill_clients(&mut admin, library_client).await,
                            );
                        }
                    }
                }
            }
        };
        let name = format!("redis cluster, kills + master SIGKILL (run {})", run + 1);
        let trial = Trial::run(&name, backend, config, Arc::clone(&log), faults).await;
        assert_failover_invariants(&trial);
    }
    Ok(())
}
