#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod durations;
mod gauges;
#[cfg(feature = "leader")]
mod leader;
mod lock;
pub mod names;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod spans;
mod striped;

pub use backend::MetricsLayer;
pub use gauges::GaugeCollector;
#[cfg(feature = "leader")]
pub use leader::watch_leadership;
pub use lock::LockMetricsLayer;
pub use spans::TracingLayer;

use state_core::{Registry, Stack};

/// Lets URLs opened by `registry` switch these layers on: `metrics=true` (a
/// [`MetricsLayer`] on backends, a [`LockMetricsLayer`] on lock services) and
/// `tracing=true` (a [`TracingLayer`]). Install the recorder before connecting.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let mut registry = state_core::Registry::new();
/// state_metrics::register(&mut registry);
/// let backend = registry.connect("memory://?metrics=true&tracing=true").await?;
/// backend.put(b"k", b"v").await?;
/// # Ok::<(), state_core::StateError>(())
/// # }).unwrap();
/// ```
pub fn register(registry: &mut Registry) {
    let metrics = Stack::new()
        .layer(MetricsLayer::new())
        .lock_layer(LockMetricsLayer::new());
    registry.register_switch("metrics", metrics);
    registry.register_switch("tracing", Stack::new().layer(TracingLayer::new()));
}
