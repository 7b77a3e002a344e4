//! `read_from=replicas` on Sentinel and Cluster: point reads (`get`, `batch_get`, `ttl`)
//! are served by replicas, writes and scans by the primary. Which server answered is read
//! from the servers' own `INFO commandstats` (reset first), so the tests fail if the reads
//! reach the primary. Writes use `wait_replicas(1, …)`, so the replicas have them before
//! they are read (without it a replica read may miss the caller's own last write).
//!
//! Each test starts its own topology (nextest runs each test in its own process).

use std::time::Duration;

use state_core::{StateBackend, Ttl};
use state_redis::{ReadFrom, RedisConfig, RedisStateBackend};
use testing::services::{RedisCluster, RedisSentinel};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// How many calls of `command` (lowercase) a server's `INFO commandstats` reports.
fn calls(commandstats: &str, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    commandstats
        .lines()
        .find_map(|l| l.trim().strip_prefix(&prefix))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Keys `k0..kN` as byte strings.
fn keys(n: u32) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("k{i}").into_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_replica_reads_are_served_by_the_replica_and_writes_by_the_primary() -> TestResult
{
    let topology = RedisSentinel::start().await?;
    let prefix = testing::conformance::unique_namespace();
    let config = RedisConfig::builder()
        .url(format!("{}?read_from=replicas", topology.url()))
        .key_prefix(&prefix)
        .wait_replicas(1, Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .build()?;
    assert_eq!(config.read_from(), ReadFrom::Replicas);
    let backend = RedisStateBackend::new(config).await?;
    let primary = topology.primary_port().await?;
    let replica = topology.replica_port().await?;

    let keys = keys(20);
    for key in &keys {
        backend
            .put_with_ttl(key, b"v", Duration::from_secs(300))
            .await?;
    }
    // Writes went to the primary.
    let on_primary = topology
        .cli(primary, &["GET", &format!("{prefix}k0")])
        .await?;
    assert_eq!(on_primary.trim(), "v");

    for port in [primary, replica] {
        topology.cli(port, &["CONFIG", "RESETSTAT"]).await?;
    }
    for key in &keys {
        assert_eq!(backend.get(key).await?.as_deref(), Some(&b"v"[..]));
    }
    let asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let got = backend.batch_get(&asked).await?;
    assert!(
        got.iter().all(|v| v.as_deref() == Some(&b"v"[..])),
        "{got:?}"
    );
    assert!(matches!(backend.ttl(b"k1").await?, Ttl::Remaining(_)));

    let on_replica = topology.cli(replica, &["INFO", "commandstats"]).await?;
    let on_primary = topology.cli(primary, &["INFO", "commandstats"]).await?;
    assert!(calls(&on_replica, "get") >= 20, "replica:\n{on_replica}");
    assert!(calls(&on_replica, "mget") >= 1, "replica:\n{on_replica}");
    assert!(calls(&on_replica, "pttl") >= 1, "replica:\n{on_replica}");
    for command in ["get", "mget", "pttl"] {
        assert_eq!(calls(&on_primary, command), 0, "primary:\n{on_primary}");
    }
    // Scans stay on the primary.
    assert_eq!(backend.count(b"").await?, 20);
    let on_primary = topology.cli(primary, &["INFO", "commandstats"]).await?;
    assert!(calls(&on_primary, "scan") >= 1, "primary:\n{on_primary}");

    // The only replica hangs: reads time out there, then the primary answers them (the
    // Sentinels name no replica that answers `ROLE`). Writes with WAIT would fail now.
    topology.pause_node(replica)?;
    let outcome = async {
        for key in keys.iter().take(3) {
            assert_eq!(backend.get(key).await?.as_deref(), Some(&b"v"[..]));
        }
        Ok::<_, state_core::StateError>(())
    }
    .await;
    topology.resume_node(replica)?;
    outcome?;
    let on_primary = topology.cli(primary, &["INFO", "commandstats"]).await?;
    assert!(calls(&on_primary, "get") >= 1, "primary:\n{on_primary}");

    assert_eq!(backend.clear(b"").await?, 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_replica_reads_are_served_by_replicas_and_writes_by_masters() -> TestResult {
    let cluster = RedisCluster::start().await?;
    let prefix = testing::conformance::unique_namespace();
    let masters = cluster.masters().await?;
    let replicas = cluster.replicas().await?;
    assert_eq!((masters.len(), replicas.len()), (3, 3));
    // The keys go to every master first (through a backend that reads from the primary):
    // Redis 7.0 lists a replica in CLUSTER SLOTS, where the driver learns where to send
    // reads, only once it has replicated something.
    let keys = keys(60);
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), &b"v"[..])).collect();
    let writer = RedisConfig::builder()
        .url(cluster.url())
        .key_prefix(&prefix)
        .wait_replicas(1, Duration::from_secs(2))
        .build()?;
    RedisStateBackend::new(writer)
        .await?
        .batch_put(&entries)
        .await?;
    cluster
        .wait_replicas_in_slots(Duration::from_secs(30))
        .await?;

    let config = RedisConfig::builder()
        .url(cluster.url())
        .read_from(ReadFrom::Replicas)
        .key_prefix(&prefix)
        .wait_replicas(1, Duration::from_secs(2))
        .pool_size(1, 2)
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    for port in masters.iter().chain(&replicas) {
        cluster.cli(*port, &["CONFIG", "RESETSTAT"]).await?;
    }
    for key in &keys {
        assert_eq!(backend.get(key).await?.as_deref(), Some(&b"v"[..]));
    }
    let asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let got = backend.batch_get(&asked).await?;
    assert!(
        got.iter().all(|v| v.as_deref() == Some(&b"v"[..])),
        "{got:?}"
    );
    assert_eq!(backend.ttl(b"k1").await?, Ttl::Persistent);

    let total = |ports: &[u16], stats: &[String], command: &str| -> u64 {
        ports
            .iter()
            .zip(stats)
            .map(|(_, s)| calls(s, command))
            .sum()
    };
    let mut replica_stats = Vec::new();
    for port in &replicas {
        replica_stats.push(cluster.cli(*port, &["INFO", "commandstats"]).await?);
    }
    let mut master_stats = Vec::new();
    for port in &masters {
        master_stats.push(cluster.cli(*port, &["INFO", "commandstats"]).await?);
    }
    assert!(
        total(&replicas, &replica_stats, "get") >= 60,
        "{replica_stats:?}\nmasters: {master_stats:?}"
    );
    assert!(
        total(&replicas, &replica_stats, "mget") >= 3,
        "{replica_stats:?}"
    );
    assert!(
        total(&replicas, &replica_stats, "pttl") >= 1,
        "{replica_stats:?}"
    );
    for command in ["get", "mget", "pttl"] {
        assert_eq!(
            total(&masters, &master_stats, command),
            0,
            "{master_stats:?}"
        );
    }
    // Every replica served some reads (60 keys spread over the 3 slots' owners).
    for (port, stats) in replicas.iter().zip(&replica_stats) {
        assert!(calls(stats, "get") > 0, "replica {port} served no GET");
    }

    // Writes still go to the masters: a replica refuses them, so this can only succeed
    // there; and the new value is read back from a replica once WAIT has acknowledged it.
    backend.put(b"k0", b"w").await?;
    assert_eq!(backend.get(b"k0").await?.as_deref(), Some(&b"w"[..]));
    assert_eq!(backend.clear(b"").await?, 60);
    Ok(())
}
