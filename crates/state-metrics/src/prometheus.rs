//! [`install`]: the Prometheus recorder, with this crate's buckets, serving `/metrics`.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use state_core::{Result, StateError};

use crate::names;

/// Installs a Prometheus recorder as the global `metrics` recorder, with the histogram
/// buckets of [`names`] (durations from 50 µs to 10 s), the help texts, and
/// an HTTP listener on `addr` that answers `GET /metrics` (any path) with the text format.
/// Upkeep (draining histograms, every 5 s) runs in the background on the same runtime.
///
/// Call it once, inside a tokio runtime, before applying the metrics layers. The handle
/// renders the same text without HTTP.
pub fn install(addr: SocketAddr) -> Result<PrometheusHandle> {
    // The listener and the upkeep are tasks: outside a runtime, spawning them would panic.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(StateError::config(
            "state_metrics::prometheus::install needs a tokio runtime: call it from async code",
        ));
    }
    let builder = builder()?.with_http_listener(addr);
    let (recorder, exporter) = builder.build().map_err(|e| {
        StateError::config(format!("cannot serve Prometheus metrics on {addr}: {e}"))
    })?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|_| {
        StateError::config("a metrics recorder is already installed in this process")
    })?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::warn!("the Prometheus listener stopped: {e:?}");
        }
    });
    names::describe();
    Ok(handle)
}

/// A Prometheus recorder with this crate's buckets, not installed: for a process that
/// renders metrics itself, or for tests (`metrics::with_local_recorder`).
pub fn recorder() -> Result<metrics_exporter_prometheus::PrometheusRecorder> {
    Ok(builder()?.build_recorder())
}

fn builder() -> Result<PrometheusBuilder> {
    let bad = |e: metrics_exporter_prometheus::BuildError| {
        StateError::config(format!("Prometheus buckets: {e}"))
    };
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".to_string()),
            &names::DURATION_BUCKETS,
        )
        .map_err(bad)?
        .set_buckets_for_metric(
            Matcher::Full(names::BATCH_ENTRIES.to_string()),
            &names::ENTRY_BUCKETS,
        )
        .map_err(bad)
}
