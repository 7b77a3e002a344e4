//! Counts kept per thread reach the recorder while the backend lives (the flush every
//! second), and all of them when it is dropped; outside a runtime, at once.

use std::sync::Arc;
use std::time::Duration;

use state_core::{Layer, MemoryBackend, StateBackend};
use state_metrics::MetricsLayer;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PUTS: &str = "state_operations_total{backend=\"memory\",operation=\"put\",status=\"ok\"}";

fn count(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_reach_the_recorder_while_the_backend_lives_and_all_when_it_is_dropped() -> TestResult
{
    let recorder = state_metrics::prometheus::recorder()?;
    let handle = recorder.handle();
    let backend = metrics::with_local_recorder(&recorder, || {
        MetricsLayer::new().layer(Arc::new(MemoryBackend::new()))
    });
    for i in 0..3u8 {
        backend.put(b"k", &[i]).await?;
    }
    // Within a few flushes, with the backend still open.
    let mut seen = None;
    for _ in 0..100 {
        seen = count(&handle.render(), PUTS);
        if seen == Some(3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen, Some(3.0), "{}", handle.render());
    let in_flight = "state_operations_in_flight{backend=\"memory\"}";
    assert_eq!(count(&handle.render(), in_flight), Some(0.0));

    // The last counts go with the drop, flush or no flush.
    backend.put(b"k", b"last").await?;
    drop(backend);
    assert_eq!(count(&handle.render(), PUTS), Some(4.0));
    Ok(())
}

#[test]
fn outside_a_runtime_each_call_is_counted_at_once() -> TestResult {
    let recorder = state_metrics::prometheus::recorder()?;
    let handle = recorder.handle();
    let backend: Arc<dyn StateBackend> = metrics::with_local_recorder(&recorder, || {
        MetricsLayer::new().layer(Arc::new(MemoryBackend::new()))
    });
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    runtime.block_on(backend.put(b"k", b"v"))?;
    assert_eq!(count(&handle.render(), PUTS), Some(1.0));
    Ok(())
}
