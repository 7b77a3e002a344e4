//! What the layers and the gauge collector really emit, rendered by the Prometheus
//! recorder, against the one table of names (`state_metrics::names`), and checked by
//! `promtool check metrics`. The gauges come from a real Redis and a real PostgreSQL
//! (`STATE_TEST_REDIS_URL`, `STATE_TEST_POSTGRES_URL`, else the fixtures' servers).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use state_core::{
    DistributedLock, ErrorKind, MemoryBackend, Stack, StateBackend, StateError, stream,
};
use state_lock::{LeaderElector, MemoryLock};
use state_metrics::names::{self, MetricKind};
use state_metrics::{GaugeCollector, LockMetricsLayer, MetricsLayer, TracingLayer};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::promtool;

type TestResult = Result<(), StateError>;

/// The schema of this crate's tests on the test database; each test works under its own
/// key prefix there and clears it afterwards.
const SCHEMA: &str = "state_metrics_tests";

/// A Redis and a PostgreSQL backend under a fresh key prefix each, with a few keys
/// written, so that there is something to measure.
async fn servers() -> Result<[Arc<dyn StateBackend>; 2], StateError> {
    let prefix = testing::conformance::unique_namespace();
    let redis_url = testing::services::redis().await?.url();
    let config = RedisConfig::builder()
        .url(redis_url)
        .key_prefix(&prefix)
        .build()?;
    let redis: Arc<dyn StateBackend> = Arc::new(RedisStateBackend::new(config).await?);
    let config = PostgresConfig::new(&testing::services::postgres_url().await?)
        .with_schema(SCHEMA)
        .with_key_prefix(&prefix)
        .with_ssl_mode("disable");
    let postgres: Arc<dyn StateBackend> = Arc::new(PostgresStateBackend::new(config).await?);
    for backend in [&redis, &postgres] {
        backend
            .batch_put(&[(b"g1", &[1; 512]), (b"g2", &[2; 512])])
            .await?;
    }
    Ok([redis, postgres])
}

/// The value of the series `series` (`name{labels}`) in the Prometheus text.
fn value_of(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series `{series}` in:\n{text}"))
}

/// A workload that makes every metric move: hits, misses, batches, a scan, an invalid
/// input, a busy lock and a lost lease.
async fn workload(backend: Arc<dyn StateBackend>, lock: Arc<dyn DistributedLock>) -> TestResult {
    backend.put(b"a", b"12345").await?;
    backend.get(b"a").await?;
    backend.get(b"missing").await?;
    backend.batch_put(&[(b"b", b"1"), (b"c", b"2")]).await?;
    backend.batch_get(&[b"a", b"b", b"nope"]).await?;
    let _ = stream::try_collect(backend.scan(b"")).await?;
    let refused = backend.put(b"", b"v").await.err().map(|e| e.kind());
    assert_eq!(refused, Some(ErrorKind::InvalidInput));

    let short = Duration::from_millis(50);
    let first = lock.try_acquire("job", short).await?;
    assert!(first.is_some());
    assert!(lock.try_acquire("job", short).await?.is_none(), "busy");
    tokio::time::sleep(Duration::from_millis(120)).await;
    let second = lock.try_acquire("job", Duration::from_secs(5)).await?;
    if let Some(stale) = first {
        let lost = lock.release(stale).await.err().map(|e| e.kind());
        assert_eq!(
            lost,
            Some(ErrorKind::NotOwner),
            "the stale holder lost its lease"
        );
    }
    if let Some(guard) = second {
        lock.release(guard).await?;
    }
    Ok(())
}

/// `name{labels} value` lines of the Prometheus text, by metric family.
fn families(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|base| names::METRICS.iter().any(|m| m.name == *base))
            .unwrap_or(name);
        out.entry(family.to_string())
            .or_default()
            .push(line.to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_in_the_table_is_emitted_with_its_labels_and_nothing_else() -> TestResult {
    let recorder = state_metrics::prometheus::recorder()?;
    let handle = recorder.handle();
    // The handles are taken when the layers are applied: under this test's recorder.
    let elector = LeaderElector::new(
        Arc::new(MemoryLock::new()),
        "nightly",
        Duration::from_secs(30),
    );
    let (backend, lock, watching) = metrics::with_local_recorder(&recorder, || {
        names::describe();
        let watching =
            state_metrics::watch_leadership("nightly", &elector).unwrap_or_else(|e| panic!("{e}"));
        let backend = Stack::new()
            .layer(TracingLayer::new())
            .layer(MetricsLayer::new())
            .apply(Arc::new(MemoryBackend::new()));
        let lock = Stack::new()
            .lock_layer(LockMetricsLayer::new())
            .apply_lock(Arc::new(MemoryLock::new()));
        (backend, lock, watching)
    });
    // The one lookup made per call (an error's kind) goes to the same recorder.
    let outcome = metrics::with_local_recorder(&recorder, || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(workload(backend, lock))
        })
    });
    outcome?;
    // The gauges: one poll of each server, in `start`, under this test's recorder (an
    // hour's interval: no other poll comes during the test).
    let servers = servers().await?;
    let collectors = metrics::with_local_recorder(&recorder, || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async {
                let mut started = Vec::new();
                for backend in &servers {
                    let layered = Stack::new()
                        .layer(MetricsLayer::new())
                        .apply(backend.clone());
                    started.push(GaugeCollector::start(layered, Duration::from_secs(3600)).await?);
                }
                Ok::<_, StateError>(started)
            })
        })
    })?;
    // Elected, then stepped down: two changes. Each is awaited before the next, since a
    // watch shows only the latest of changes that come together.
    let seen = |expected: &'static str| {
        let handle = handle.clone();
        async move {
            for _ in 0..250 {
                if handle.render().contains(expected) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            false
        }
    };
    let term = elector.campaign().await?;
    assert!(seen("state_leader_is_leader{election=\"nightly\"} 1").await);
    term.step_down().await?;
    let counted = "state_leader_changes_total{election=\"nightly\"} 2";
    assert!(seen(counted).await, "{}", handle.render());
    drop(elector);
    let _ = watching.await;
    let text = handle.render();
    let found = families(&text);

    for metric in names::METRICS {
        let lines = found
            .get(metric.name)
            .unwrap_or_else(|| panic!("{} was not emitted:\n{text}", metric.name));
        let kind = match metric.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        assert!(
            text.contains(&format!("# TYPE {} {kind}", metric.name)),
            "{} is not a {kind}:\n{text}",
            metric.name
        );
        assert!(text.contains(&format!("# HELP {} ", metric.name)));
        for line in lines {
            let labels = line
                .split_once('{')
                .and_then(|(_, rest)| rest.split_once('}'))
                .map_or("", |(labels, _)| labels);
            for pair in labels.split(',').filter(|p| !p.is_empty()) {
                let label = pair.split('=').next().unwrap_or_default();
                assert!(
                    metric.labels.contains(&label) || label == "le",
                    "{line}: label `{label}` is not in the table for {}",
                    metric.name
                );
            }
        }
    }
    for family in found.keys() {
        assert!(
            names::METRICS.iter().any(|m| m.name == family),
            "{family} is emitted but not in the table"
        );
    }
    // Durations use this crate's buckets (50 µs to 10 s), not summaries.
    assert!(
        text.contains("state_operation_duration_seconds_bucket{"),
        "{text}"
    );
    assert!(text.contains("le=\"0.00005\""), "{text}");
    // The workload's outcomes, as counted.
    for expected in [
        "state_operations_total{backend=\"memory\",operation=\"put\",status=\"error\"} 1",
        "state_errors_total{backend=\"memory\",operation=\"put\",kind=\"invalid_input\"} 1",
        "state_get_hits_total{backend=\"memory\"} 3",
        "state_get_misses_total{backend=\"memory\"} 2",
        "state_operations_total{backend=\"memory\",operation=\"scan\",status=\"ok\"} 1",
        "state_lock_operations_total{operation=\"try_acquire\",outcome=\"busy\"} 1",
        "state_lock_operations_total{operation=\"release\",outcome=\"lost\"} 1",
        "state_lock_leases_lost_total 1",
        "state_operations_in_flight{backend=\"memory\"} 0",
        counted,
        "state_leader_is_leader{election=\"nightly\"} 0",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }

    // The servers' figures, plausible, from polls that did not fail.
    let redis = |name: &str| value_of(&text, &format!("{name}{{backend=\"redis\"}}"));
    let postgres = |name: &str| value_of(&text, &format!("{name}{{backend=\"postgres\"}}"));
    assert!(redis(names::REDIS_MEMORY_USED_BYTES) > 0.0);
    assert!(
        redis(names::REDIS_CONNECTED_CLIENTS) >= 1.0,
        "this test is a client"
    );
    assert!(
        postgres(names::POSTGRES_TABLE_BYTES) > 0.0,
        "two rows were written"
    );
    assert!(postgres(names::POSTGRES_DEAD_TUPLES) >= 0.0);
    assert!(postgres(names::POSTGRES_CONNECTIONS_IN_USE) >= 0.0);
    assert_eq!(redis(names::SERVER_POLL_ERRORS_TOTAL), 0.0);
    assert_eq!(postgres(names::SERVER_POLL_ERRORS_TOTAL), 0.0);
    for collector in collectors {
        collector.stop().await;
    }
    for backend in &servers {
        backend.clear(b"").await?;
    }

    // And Prometheus's own linter finds nothing wrong with the exposition.
    promtool(Path::new("."), &["check", "metrics"], Some(&text)).unwrap_or_else(|e| panic!("{e}"));
    Ok(())
}
