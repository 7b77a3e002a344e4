//! `GaugeCollector` over time, on a Redis server of its own: polls that fail while the
//! server is down are counted, and the collector keeps going and follows the server again
//! once it is back.

use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use state_core::{ErrorKind, MemoryBackend, StateBackend, StateError};
use state_metrics::GaugeCollector;
use state_metrics::names;
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::process::wait_for;
use testing::services::{LocalRedis, LocalRedisOptions};

/// The longest the test waits for the collector to see a change.
const WAIT: Duration = Duration::from_secs(60);

/// The value of `name{backend="redis"}` in the recorder's text, if it is there.
fn redis_value(handle: &PrometheusHandle, name: &str) -> Option<f64> {
    let series = format!("{name}{{backend=\"redis\"}} ");
    handle
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(&series)?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_polls_are_counted_and_the_collector_keeps_going() -> Result<(), StateError> {
    let mut redis = LocalRedis::start(LocalRedisOptions::default()).await?;
    let config = RedisConfig::builder()
        .url(redis.url())
        .key_prefix("gauges:")
        .connect_timeout(Duration::from_secs(1))
        .response_timeout(Duration::from_secs(1))
        .retries(0, Duration::from_millis(1), Duration::from_millis(1))
        .failover_timeout(Duration::ZERO)
        .build()?;
    let backend: Arc<dyn StateBackend> = Arc::new(RedisStateBackend::new(config).await?);
    let recorder = state_metrics::prometheus::recorder()?;
    let handle = recorder.handle();
    let collector = metrics::with_local_recorder(&recorder, || {
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(GaugeCollector::start(
                backend.clone(),
                Duration::from_millis(100),
            ))
        })
    })?;
    // The first poll ran in `start`.
    let before = redis_value(&handle, names::REDIS_MEMORY_USED_BYTES);
    assert!(
        before.is_some_and(|bytes| bytes > 0.0),
        "{}",
        handle.render()
    );

    // The server goes away: polls fail, and are counted.
    redis.kill();
    wait_for("a failed poll to be counted", WAIT, None, || async {
        redis_value(&handle, names::SERVER_POLL_ERRORS_TOTAL).filter(|n| *n >= 1.0)
    })
    .await?;

    // It comes back: the collector, still polling, sees 4 MiB more memory in use.
    redis.restart().await?;
    let floor = before.unwrap_or_default() + 2.0 * 1024.0 * 1024.0;
    let value = vec![7u8; 4 * 1024 * 1024];
    wait_for("the server to take a write again", WAIT, None, || async {
        backend.put(b"big", &value).await.ok()
    })
    .await?;
    wait_for(
        "the gauge to follow the server again",
        WAIT,
        None,
        || async {
            redis_value(&handle, names::REDIS_MEMORY_USED_BYTES).filter(|bytes| *bytes >= floor)
        },
    )
    .await?;

    collector.stop().await;
    backend.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_interval_is_a_config_error() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let refused = GaugeCollector::start(backend, Duration::ZERO).await;
    assert_eq!(refused.err().map(|e| e.kind()), Some(ErrorKind::Config));
}
