//! [`MetricsLayer`]: every call of a backend recorded through the `metrics` facade.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use state_core::{
    BoxStream, Entry, Hook, Layer, Layered, Op, OpKind, Outcome, Result, StateBackend,
};

use crate::names;

/// Records every call of the backend it wraps: counts by status and error kind, duration,
/// hits and misses, bytes, batch sizes and calls in flight (see [`names`]).
///
/// The handles are taken from the recorder installed when the layer is applied, so install
/// the recorder first ([`crate::prometheus::install`] does). Each call then costs a few
/// relaxed atomic adds and a histogram record: no lookup, no allocation. Labels are closed
/// sets: the backend's name, the operation, the status or error kind. A scan or an export
/// counts as one call when its stream ends or is dropped (its errors by status only).
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
        Arc::new(Layered::new(recorded, inner))
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

/// Takes one call off the in-flight gauge when dropped: finished or cancelled.
struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

impl Hook for Recorded {
    fn around<T: Outcome>(
        &self,
        op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let kind = op.kind;
        let written = op.input.bytes_written();
        let entries = op.input.entries();
        async move {
            self.in_flight.increment(1.0);
            let _guard = InFlight(&self.in_flight);
            let started = Instant::now();
            let out = call.await;
            let Some(per) = self.ops.get(kind.index()) else {
                return out;
            };
            per.duration.record(started.elapsed().as_secs_f64());
            if let Some(histogram) = &per.entries {
                histogram.record(entries as f64);
            }
            match &out {
                Ok(value) => {
                    per.ok.increment(1);
                    let seen = value.observed();
                    add(&self.hits, seen.hits);
                    add(&self.misses, seen.misses);
                    add(&self.bytes_read, seen.bytes_read);
                    add(&self.bytes_written, written);
                }
                Err(err) => {
                    per.failed.increment(1);
                    // Errors are rare: this one lookup is not on the hot path.
                    counter!(
                        names::ERRORS_TOTAL,
                        "backend" => self.backend,
                        "operation" => kind.name(),
                        "kind" => err.kind().name()
                    )
                    .increment(1);
                }
            }
            out
        }
    }

    fn around_stream<'a>(
        &'a self,
        kind: OpKind,
        stream: BoxStream<'a, Result<Entry>>,
    ) -> BoxStream<'a, Result<Entry>> {
        match self.ops.get(kind.index()) {
            Some(per) => self.observe_stream(per, stream),
            None => stream,
        }
    }
}

impl Recorded {
    /// A scan or export: one call, timed from its start to its end or drop.
    fn observe_stream<'a>(
        &'a self,
        per: &'a PerOp,
        stream: BoxStream<'a, Result<Entry>>,
    ) -> BoxStream<'a, Result<Entry>> {
        self.in_flight.increment(1.0);
        let started = Instant::now();
        state_core::stream::observed(
            stream,
            |entry: &Entry| add(&self.bytes_read, entry.value.len() as u64),
            move |ok| {
                self.in_flight.decrement(1.0);
                per.duration.record(started.elapsed().as_secs_f64());
                if ok {
                    per.ok.increment(1);
                } else {
                    per.failed.increment(1);
                }
            },
        )
    }
}

fn add(counter: &Counter, n: u64) {
    if n > 0 {
        counter.increment(n);
    }
}
