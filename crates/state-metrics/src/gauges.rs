//! [`GaugeCollector`]: a backend's server-side figures ([`StateBackend::gauges`]) read on
//! an interval and set as gauges.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, counter, gauge};
use state_core::{Result, StateBackend, StateError};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

use crate::names;

/// Reads [`StateBackend::gauges`] of one backend every interval and sets each figure as
/// the gauge `state_{name}{backend}` (see [`names`]): Redis's memory and clients,
/// PostgreSQL's table bytes, dead tuples and connections in use. A backend without
/// server-side figures (memory, redb) reports none, and the collector sets nothing.
///
/// - Labels: only `backend`, the same name [`MetricsLayer`](crate::MetricsLayer) uses
///   (`Capabilities::backend`); figure names are `'static`, fixed by the backend, so the
///   set of series is closed.
/// - Bounded: one poll at a time (a slow poll delays the next, polls never pile up), and
///   each gets at most [`POLL_TIMEOUT`](Self::POLL_TIMEOUT).
/// - A failed or timed-out poll adds one to `state_server_poll_errors_total{backend}`,
///   leaves the gauges at their last values, logs a warning when polls start failing (not
///   at every failure) and the collector keeps going.
/// - Stops when dropped (or [`stop`](Self::stop)ped): the task is aborted, and with it the
///   collector's reference to the backend.
///
/// Install the recorder before starting: the first poll runs in `start`, so the handles of
/// the figures it returns come from the recorder current there (a thread-local recorder
/// included), as for the layers.
///
/// ```no_run
/// # async fn demo() -> state_core::Result<()> {
/// use std::time::Duration;
/// state_metrics::prometheus::install("127.0.0.1:9898".parse().unwrap())?;
/// let backend = state_core::Registry::new().connect("memory://").await?;
/// let collector = state_metrics::GaugeCollector::start(backend, Duration::from_secs(15)).await?;
/// // … serve; the gauges follow the server every 15 s until `collector` is dropped.
/// collector.stop().await;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct GaugeCollector {
    task: Option<JoinHandle<()>>,
}

impl GaugeCollector {
    /// The longest one poll may take; a slower poll is given up and counts as failed.
    pub const POLL_TIMEOUT: Duration = Duration::from_secs(10);

    /// Polls `backend` once, then every `every` on the current tokio runtime, until the
    /// collector is dropped. A failure of the first poll is counted like any other, not
    /// returned: a service starts even while its server is away.
    ///
    /// A `Config` error for a zero interval, or outside a tokio runtime.
    pub async fn start(backend: Arc<dyn StateBackend>, every: Duration) -> Result<GaugeCollector> {
        if every.is_zero() {
            return Err(StateError::config(
                "GaugeCollector::start: the interval must be longer than zero",
            ));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StateError::config("GaugeCollector::start needs a tokio runtime"))?;
        let mut poller = Poller::new(backend);
        poller.poll().await;
        let task = runtime.spawn(async move {
            let mut ticks = tokio::time::interval_at(Instant::now() + every, every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                poller.poll().await;
            }
        });
        Ok(GaugeCollector { task: Some(task) })
    }

    /// Stops polling and returns once the task is gone, with its reference to the backend
    /// (dropping the collector only asks the task to stop): for a caller that closes the
    /// backend next.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Cancelled: the only outcome of an aborted loop that never returns.
            let _ = task.await;
        }
    }
}

impl Drop for GaugeCollector {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The collector's state: the backend, the handles registered so far, the error counter.
struct Poller {
    backend: Arc<dyn StateBackend>,
    label: &'static str,
    gauges: Vec<(&'static str, Gauge)>,
    errors: Counter,
    failing: bool,
}

impl Poller {
    fn new(backend: Arc<dyn StateBackend>) -> Poller {
        let label = backend.capabilities().backend;
        Poller {
            backend,
            label,
            gauges: Vec::new(),
            errors: counter!(names::SERVER_POLL_ERRORS_TOTAL, "backend" => label),
            failing: false,
        }
    }

    async fn poll(&mut self) {
        let outcome =
            tokio::time::timeout(GaugeCollector::POLL_TIMEOUT, self.backend.gauges()).await;
        let why = match outcome {
            Ok(Ok(figures)) => {
                for figure in figures {
                    self.set(figure.name, figure.value);
                }
                if self.failing {
                    self.failing = false;
                    tracing::info!(
                        backend = self.label,
                        "reading the backend's gauges works again"
                    );
                }
                return;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {:?}", GaugeCollector::POLL_TIMEOUT),
        };
        self.errors.increment(1);
        if !self.failing {
            self.failing = true;
            tracing::warn!(
                backend = self.label,
                "reading the backend's gauges failed ({why}); the gauges keep their last \
                 values and state_server_poll_errors_total counts the failed polls"
            );
        }
    }

    /// Sets figure `name`, registering its handle on first sight.
    fn set(&mut self, name: &'static str, value: f64) {
        if let Some((_, handle)) = self.gauges.iter().find(|(n, _)| *n == name) {
            handle.set(value);
            return;
        }
        let full = format!("{}{name}", names::GAUGE_PREFIX);
        let handle = gauge!(full, "backend" => self.label);
        handle.set(value);
        self.gauges.push((name, handle));
    }
}
