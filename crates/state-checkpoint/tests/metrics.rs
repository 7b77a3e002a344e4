//! The coordinator's metrics, rendered by the Prometheus recorder, against the one table
//! of names (`state_metrics::names::CHECKPOINT_METRICS`), as state-metrics' own tests check
//! the backends' metrics against `names::METRICS`.

use std::collections::BTreeMap;
use std::sync::Arc;

use state_checkpoint::{CheckpointCoordinator, CheckpointOptions, DirStore, describe_metrics};
use state_core::{MemoryBackend, StateBackend};
use state_metrics::names::{self, MetricKind};

/// `name value` of every series of the families starting with `state_checkpoint_`.
fn checkpoint_series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with("state_checkpoint_"))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[test]
fn every_checkpoint_metric_is_emitted_with_what_happened() {
    let recorder = state_metrics::prometheus::recorder().expect("a recorder");
    let handle = recorder.handle();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    // Everything on this thread, under this test's recorder: the metrics are recorded by
    // the task that takes the checkpoint.
    metrics::with_local_recorder(&recorder, || {
        describe_metrics();
        rt.block_on(async {
            let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
            for i in 0..25 {
                backend
                    .put(format!("k{i}").as_bytes(), b"value")
                    .await
                    .expect("put");
            }
            let store_dir = dir.path().join("ckpt");
            let store = Arc::new(DirStore::open(&store_dir).expect("a store"));
            let c = CheckpointCoordinator::new(backend, store, CheckpointOptions::new())
                .expect("a coordinator");
            let taken = c.checkpoint_now().await.expect("a checkpoint");
            assert_eq!(taken.entries, 25);
            // The directory gone (a file in its place): the next checkpoint fails.
            std::fs::remove_dir_all(&store_dir).expect("remove the store");
            std::fs::write(&store_dir, b"not a directory").expect("a file");
            c.checkpoint_now().await.expect_err("no store");
            c.shutdown().await.expect("shutdown");
        });
    });
    let text = handle.render();
    let series = checkpoint_series(&text);
    for metric in names::CHECKPOINT_METRICS {
        let kind = match metric.kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        assert!(
            text.contains(&format!("# TYPE {} {kind}", metric.name)),
            "{} is not emitted as a {kind}:\n{text}",
            metric.name
        );
        assert!(text.contains(&format!("# HELP {} ", metric.name)), "{text}");
        assert!(metric.labels.is_empty(), "no labels, as emitted");
    }
    for name in series.keys() {
        assert!(
            names::CHECKPOINT_METRICS.iter().any(|m| m.name == name),
            "{name} is emitted but not in the table:\n{text}"
        );
    }
    let value = |name: &str| series.get(name).copied();
    assert_eq!(
        value(names::CHECKPOINT_COMPLETED_TOTAL),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(names::CHECKPOINT_FAILED_TOTAL), Some(1.0), "{text}");
    assert_eq!(value(names::CHECKPOINT_IN_PROGRESS), Some(0.0), "{text}");
    assert_eq!(value(names::CHECKPOINT_LAST_ENTRIES), Some(25.0), "{text}");
    assert!(
        value(names::CHECKPOINT_LAST_BYTES).is_some_and(|b| b > 25.0 * 5.0),
        "{text}"
    );
    assert!(
        value(names::CHECKPOINT_LAST_DURATION).is_some_and(|s| s > 0.0),
        "{text}"
    );
}
