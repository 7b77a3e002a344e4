//! [`MetricsLayer`]: every call of a backend recorded through the `metrics` facade.

use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use state_core::layer::{Finished, Observer, watch};
use state_core::{Layer, Op, OpKind, StateBackend};

use crate::names;

/// Records every call of the backend it wraps: counts by status and error kind, duration,
/// hits and misses, bytes, batch sizes and calls in flight (see [`names`]).
///
/// The handles are taken from the recorder installed when the layer is applied, so install
/// the recorder first ([`crate::prometheus::install`] does). Each call then costs a few
/// relaxed atomic adds and a histogram record: no lookup, no allocation. Labels are closed
/// sets: the backend's name, the operation, the status or error kind. A scan or an export
/// counts as one call when its stream ends or is dropped.
///
/// It is an [`Observer`]: stacked next to [`TracingLayer`](crate::TracingLayer) and
/// [`StatsLayer`](state_core::StatsLayer), the three share one layer and one pair of
/// clock reads per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer {
    _private: (),
}

impl MetricsLayer {
    /// A layer that records into the global recorder.
    pub fn new() -> MetricsLayer {
        MetricsLayer::default()
    }
}

impl Layer for MetricsLayer {
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        let recorded = Recorded::new(inner.capabilities().backend);
        watch(Arc::new(recorded), inner)
    }

    fn observer(&self, inner: &Arc<dyn StateBackend>) -> Option<Arc<dyn Observer>> {
        Some(Arc::new(Recorded::new(inner.capabilities().backend)))
    }
}

/// The handles of one operation.
#[derive(Debug)]
struct PerOp {
    ok: Counter,
    failed: Counter,
    duration: Histogram,
    entries: Option<Histogram>,
}

/// The hook of [`MetricsLayer`]: handles registered once, per operation.
#[derive(Debug)]
struct Recorded {
    backend: &'static str,
    ops: Vec<PerOp>,
    hits: Counter,
    misses: Counter,
    bytes_read: Counter,
    bytes_written: Counter,
    in_flight: Gauge,
}

impl Recorded {
    fn new(backend: &'static str) -> Recorded {
        let ops = OpKind::ALL
            .iter()
            .map(|kind| {
                let op = kind.name();
                let batch = matches!(
                    kind,
                    OpKind::BatchGet | OpKind::BatchPut | OpKind::BatchDelete
                );
                PerOp {
                    ok: counter!(names::OPERATIONS_TOTAL, "backend" => backend, "operation" => op, "status" => "ok"),
                    failed: counter!(names::OPERATIONS_TOTAL, "backend" => backend, "operation" => op, "status" => "error"),
                    duration: histogram!(names::OPERATION_DURATION, "backend" => backend, "operation" => op),
                    entries: batch.then(|| {
                        histogram!(names::BATCH_ENTRIES, "backend" => backend, "operation" => op)
                    }),
                }
            })
            .collect();
        Recorded {
            backend,
            ops,
            hits: counter!(names::HITS_TOTAL, "backend" => backend),
            misses: counter!(names::MISSES_TOTAL, "backend" => backend),
            bytes_read: counter!(names::BYTES_READ_TOTAL, "backend" => backend),
            bytes_written: counter!(names::BYTES_WRITTEN_TOTAL, "backend" => backend),
            in_flight: gauge!(names::IN_FLIGHT, "backend" => backend),
        }
    }
}

impl Observer for Recorded {
    fn started(&self, _op: &Op<'_>) -> Option<Box<dyn state_core::layer::Scope>> {
        self.in_flight.increment(1.0);
        None
    }

    fn stream_started(&self, _kind: OpKind) {
        self.in_flight.increment(1.0);
    }

    fn abandoned(&self, _kind: OpKind) {
        self.in_flight.decrement(1.0);
    }

    fn finished(&self, call: &Finished) {
        self.in_flight.decrement(1.0);
        let Some(per) = self.ops.get(call.kind.index()) else {
            return;
        };
        per.duration.record(call.elapsed.as_secs_f64());
        if let Some(histogram) = &per.entries {
            histogram.record(call.entries as f64);
        }
        match call.error {
            None => per.ok.increment(1),
            Some(kind) => {
                per.failed.increment(1);
                // Errors are rare: this one lookup is not on the hot path.
                counter!(
                    names::ERRORS_TOTAL,
                    "backend" => self.backend,
                    "operation" => call.kind.name(),
                    "kind" => kind.name()
                )
                .increment(1);
            }
        }
        add(&self.hits, call.observed.hits);
        add(&self.misses, call.observed.misses);
        add(&self.bytes_read, call.observed.bytes_read);
        add(&self.bytes_written, call.bytes_written);
    }
}

fn add(counter: &Counter, n: u64) {
    if n > 0 {
        counter.increment(n);
    }
}
