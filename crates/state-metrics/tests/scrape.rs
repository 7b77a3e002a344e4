//! A real scrape, end to end: a workload runs through the metrics layer on a real Redis
//! in this process, which serves `/metrics`; Debian's Prometheus scrapes it and evaluates
//! the shipped alert rules. The series arrive with their labels; then the Redis server
//! is stopped, the workload fails, and HighErrorRate goes pending or firing.
//!
//! Only the test's copy of the rules is changed: `for: 5m` becomes `for: 1s`, so that the
//! alert can move within the test's bounded wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use state_core::Stack;
use state_metrics::MetricsLayer;
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::process::{free_port, wait_for};
use testing::services::{LocalPrometheus, LocalRedis, LocalRedisOptions};

/// The longest the test waits for Prometheus to see something.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_series_and_fires_high_error_rate_when_redis_stops() {
    let mut redis = LocalRedis::start(LocalRedisOptions::default())
        .await
        .unwrap_or_else(|e| panic!("redis starts: {e}"));
    let port = free_port().unwrap_or_else(|e| panic!("a free port: {e}"));
    let addr = format!("127.0.0.1:{port}");
    state_metrics::prometheus::install(addr.parse().unwrap_or_else(|e| panic!("{addr}: {e}")))
        .unwrap_or_else(|e| panic!("the recorder installs: {e}"));

    let config = RedisConfig::builder()
        .url(redis.url())
        .key_prefix("scrape:")
        .connect_timeout(Duration::from_millis(200))
        .response_timeout(Duration::from_millis(200))
        .retries(0, Duration::from_millis(1), Duration::from_millis(1))
        .failover_timeout(Duration::ZERO)
        .build()
        .unwrap_or_else(|e| panic!("config: {e}"));
    let redis_backend = RedisStateBackend::new(config)
        .await
        .unwrap_or_else(|e| panic!("the backend opens: {e}"));
    let backend = Stack::new()
        .layer(MetricsLayer::new())
        .apply(Arc::new(redis_backend));

    // The workload: a put and a get every 20 ms, until the test ends.
    let stop = Arc::new(AtomicBool::new(false));
    let workload = {
        let (backend, stop) = (backend.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{}", i % 50);
                let _ = backend.put(key.as_bytes(), b"v").await;
                let _ = backend.get(key.as_bytes()).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let rules = include_str!("../prometheus/alerts.yml").replace("for: 5m", "for: 1s");
    let prometheus = LocalPrometheus::start(
        std::slice::from_ref(&addr),
        &[("alerts.yml", rules)],
        Duration::from_millis(500),
    )
    .await
    .unwrap_or_else(|e| panic!("prometheus starts: {e}"));

    // 1. The series arrive, with their labels.
    let series = wait_for("the put series in Prometheus", WAIT, None, || async {
        let data = prometheus
            .query(r#"state_operations_total{backend="redis",operation="put",status="ok"}"#)
            .await
            .ok()?;
        let result = data["result"].as_array()?.clone();
        (!result.is_empty()).then_some(result)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(series[0]["metric"]["job"], "state", "{series:?}");
    for query in [
        r#"state_operation_duration_seconds_bucket{backend="redis",operation="get",le="0.01"}"#,
        r#"state_get_hits_total{backend="redis"}"#,
        r#"state_operations_in_flight{backend="redis"}"#,
    ] {
        let data = prometheus
            .query(query)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        let found = data["result"].as_array().is_some_and(|r| !r.is_empty());
        assert!(found, "{query}: nothing scraped: {data}");
    }

    // 2. Redis stops: every call fails, and the alert moves.
    redis.kill();
    let alert = wait_for(
        "HighErrorRate to be pending or firing",
        WAIT,
        None,
        || async {
            let alerts = prometheus.alerts().await.ok()?;
            alerts.as_array()?.iter().find_map(|a| {
                let ours = a["labels"]["alertname"] == "HighErrorRate"
                    && a["labels"]["backend"] == "redis";
                let state = a["state"].as_str()?;
                (ours && (state == "pending" || state == "firing")).then(|| a.clone())
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(alert["labels"]["severity"], "warning", "{alert}");
    let errors = prometheus
        .query(r#"sum(state_errors_total{backend="redis"})"#)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        errors["result"].as_array().is_some_and(|r| !r.is_empty()),
        "{errors}"
    );

    stop.store(true, Ordering::Relaxed);
    let _ = workload.await;
}
