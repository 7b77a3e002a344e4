//! TLS on the Sentinel and Cluster topologies: every server (data nodes, sentinels, the
//! cluster bus) serves TLS only, with certificates made for the test
//! (`testing::services::TestCerts`). The backend works over TLS end to end with the right CA
//! and is refused, with an error that says what to do, with a wrong one or with none.
//!
//! Each test starts its own topology (nextest runs each test in its own process); two of
//! them run the whole conformance and property suites over TLS.

mod common;

use std::time::Duration;

use state_core::{ErrorKind, StateBackend, StateError};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::{RedisCluster, RedisSentinel, TestCerts};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Connects with `url` plus `extra` parameters, failing fast (no retries, short timeouts).
async fn quick_connect(url: &str, extra: &str) -> Result<RedisStateBackend, StateError> {
    let config = RedisConfig::builder()
        .url(format!("{url}{extra}"))
        .retries(0, Duration::ZERO, Duration::ZERO)
        .failover_timeout(Duration::ZERO)
        .connect_timeout(Duration::from_secs(3))
        .response_timeout(Duration::from_secs(3))
        .build()?;
    RedisStateBackend::new(config).await
}

/// The URL of a TLS topology without its `tls_ca` parameter (and with `tls=true` kept).
fn without_ca(url: &str) -> String {
    match url.split_once("&tls_ca=") {
        Some((head, _)) => head.to_string(),
        None => url.to_string(),
    }
}

/// The refusals every TLS topology must give: a CA that did not sign the servers'
/// certificates, the system roots (no CA given), and plain text to the TLS ports.
async fn check_refusals(url: &str, wrong_ca: &std::path::Path) -> TestResult {
    let bare = without_ca(url);
    let wrong = format!("&tls_ca={}", wrong_ca.display());
    for (what, extra) in [("a wrong CA", wrong.as_str()), ("the system roots", "")] {
        let err = quick_connect(&bare, extra)
            .await
            .err()
            .unwrap_or_else(|| panic!("TLS with {what} was accepted"));
        eprintln!("TLS with {what} refused: {err}");
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err}");
        assert!(err.to_string().contains("certificate"), "{what}: {err}");
        assert!(err.to_string().contains("tls_ca"), "says what to do: {err}");
    }
    let plain = bare.replacen("tls=true", "tls=false", 1);
    let refused = quick_connect(&plain, "").await;
    assert!(
        refused.is_err(),
        "plain text to TLS-only ports was accepted"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_reaches_sentinels_and_primary_and_refuses_a_wrong_ca() -> TestResult {
    let certs = TestCerts::generate().await?;
    let wrong = TestCerts::generate().await?;
    let topology = RedisSentinel::start_tls(&certs).await?;
    let url = topology.url();
    assert!(url.contains("tls=true") && url.contains("tls_ca="), "{url}");

    let prefix = testing::conformance::unique_namespace();
    let config = RedisConfig::builder()
        .url(&url)
        .key_prefix(&prefix)
        .build()?;
    assert!(config.tls());
    let backend = RedisStateBackend::new(config).await?;
    backend
        .put_with_ttl(b"k", b"over tls", Duration::from_secs(60))
        .await?;
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"over tls"[..]));
    assert_eq!(backend.count(b"").await?, 1);
    assert!(backend.health_check().await?.is_healthy());
    // The write is on the primary the sentinels name, read back over TLS by redis-cli.
    let primary = topology.primary_port().await?;
    let got = topology
        .cli(primary, &["GET", &format!("{prefix}k")])
        .await?;
    assert_eq!(got.trim(), "over tls");
    let info = backend.server_info().await?;
    assert_eq!(info.first().map(|i| i.role.as_str()), Some("master"));

    // The builder's form: the sentinels as rediss:// URLs plus the master name.
    let sentinels: Vec<String> = topology
        .sentinel_ports()
        .iter()
        .map(|p| format!("rediss://127.0.0.1:{p}"))
        .collect();
    let ca = std::fs::read(topology.ca_file().ok_or("the topology has no CA")?)?;
    let config = RedisConfig::builder()
        .urls(sentinels)
        .sentinel_master(topology.master_name())
        .tls_root_ca_pem(ca)
        .key_prefix(&prefix)
        .build()?;
    let guide = RedisStateBackend::new(config).await?;
    assert_eq!(guide.get(b"k").await?.as_deref(), Some(&b"over tls"[..]));
    assert_eq!(backend.clear(b"").await?, 1);

    check_refusals(&url, &wrong.ca_cert()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_over_tls_spans_every_master_and_refuses_a_wrong_ca() -> TestResult {
    let certs = TestCerts::generate().await?;
    let wrong = TestCerts::generate().await?;
    let cluster = RedisCluster::start_tls(&certs).await?;
    let url = cluster.url();
    assert!(url.contains("tls=true") && url.contains("tls_ca="), "{url}");

    let prefix = testing::conformance::unique_namespace();
    let config = RedisConfig::builder()
        .url(&url)
        .key_prefix(&prefix)
        .pipeline_batch_size(7)
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    let keys: Vec<Vec<u8>> = (0..300u32).map(|i| format!("k{i}").into_bytes()).collect();
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), &b"v"[..])).collect();
    backend.batch_put(&entries).await?;
    let asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let got = backend.batch_get(&asked).await?;
    assert!(got.iter().all(|v| v.as_deref() == Some(&b"v"[..])));
    // Every master holds some keys (so every node was reached over TLS), and the scan that
    // visits each master finds them all.
    let masters = cluster.masters().await?;
    assert_eq!(masters.len(), 3);
    for port in masters {
        let found = cluster
            .cli(port, &["--scan", "--pattern", &format!("{prefix}*")])
            .await?;
        assert!(found.lines().count() > 0, "master {port} holds no key");
    }
    assert_eq!(backend.count(b"").await?, 300);
    assert!(backend.compare_and_swap(b"k1", Some(b"v"), b"w").await?);
    assert!(backend.health_check().await?.is_healthy());
    assert_eq!(backend.server_info().await?.len(), 3);
    assert_eq!(backend.clear(b"").await?, 300);

    check_refusals(&url, &wrong.ca_cert()).await
}

#[test]
fn sentinel_over_tls_passes_the_conformance_and_property_suites() -> TestResult {
    let rt = common::runtime();
    let certs = rt.block_on(TestCerts::generate())?;
    let topology = rt.block_on(RedisSentinel::start_tls(&certs))?;
    let url: &'static str = Box::leak(topology.url().into_boxed_str());
    common::run_suites(common::factory(url));
    Ok(())
}

#[test]
fn cluster_over_tls_passes_the_conformance_and_property_suites() -> TestResult {
    let rt = common::runtime();
    let certs = rt.block_on(TestCerts::generate())?;
    let cluster = rt.block_on(RedisCluster::start_tls(&certs))?;
    let url: &'static str = Box::leak(cluster.url().into_boxed_str());
    common::run_suites(common::factory(url));
    Ok(())
}
