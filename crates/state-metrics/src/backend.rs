//! [`MetricsLayer`]: every call of a backend recorded through the `metrics` facade.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use state_core::layer::{Finished, Observer, watch};
use state_core::{Layer, Op, OpKind, StateBackend};

use crate::durations::{record_totals, totals};
use crate::names;
use crate::striped::{Flush, Stripe, Striped, spawn_flusher, take};

/// Records every call of the backend it wraps: counts by status and error kind, duration,
/// hits and misses, bytes, batch sizes and calls in flight (see [`names`]).
///
/// The handles are taken from the recorder installed when the layer is applied, so install
/// the recorder first ([`crate::prometheus::install`] does). Each call then costs a few
/// relaxed atomic adds: no lookup, no allocation, no clock read of its own. Labels are closed
/// sets: the backend's name, the operation, the status or error kind. A scan or an export
/// counts as one call when its stream ends or is dropped.
///
/// Applied inside a tokio runtime, the counts (and the calls in flight) are kept per
/// thread and reach the recorder within a second (a task flushes them, and a last
/// one when the layer is dropped). So are the durations, counted per thread into
/// [`names::DURATION_BUCKETS`] and handed over as each bucket's mean, `count` times: a
/// Prometheus histogram with those buckets (what [`crate::prometheus`] installs) gets
/// exact bucket counts and sum; a recorder with other buckets or quantiles sees each call
/// as its bucket's mean over that second. Batch sizes are recorded at once. Outside a
/// runtime every call is recorded at once, durations exactly.
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
        let recorded = Recorded::start(inner.capabilities().backend);
        watch(recorded, inner)
    }

    fn observer(&self, inner: &Arc<dyn StateBackend>) -> Option<Arc<dyn Observer>> {
        Some(Recorded::start(inner.capabilities().backend))
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
    /// Counts kept per thread until the next flush; `None`: recorded at once.
    striped: Option<Striped>,
}

impl Recorded {
    /// The observer, its stripes flushed by a task on the current runtime if there is one.
    fn start(backend: &'static str) -> Arc<Recorded> {
        let mut recorded = Recorded::new(backend);
        let in_runtime = tokio::runtime::Handle::try_current().is_ok();
        recorded.striped = in_runtime.then(Striped::default);
        let recorded = Arc::new(recorded);
        if recorded.striped.is_some() {
            spawn_flusher(&recorded);
        }
        recorded
    }

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
            striped: None,
        }
    }

    /// One more call in flight (`by` = 1) or one fewer (`by` = -1).
    fn in_flight(&self, by: i64) {
        match &self.striped {
            Some(striped) => {
                striped.mine().in_flight.fetch_add(by, Ordering::Relaxed);
            }
            None => self.in_flight.increment(by as f64),
        }
    }
}

impl Flush for Recorded {
    fn flush(&self) {
        let Some(striped) = &self.striped else {
            return;
        };
        let mut in_flight = 0i64;
        for (index, per) in self.ops.iter().enumerate() {
            let mut sums = totals();
            for stripe in striped.all() {
                if let Some(durations) = stripe.durations.get(index) {
                    durations.drain_into(&mut sums);
                }
            }
            record_totals(&per.duration, &sums);
        }
        for stripe in striped.all() {
            for (per, (ok, failed)) in self.ops.iter().zip(stripe.ok.iter().zip(&stripe.failed)) {
                add(&per.ok, take(ok));
                add(&per.failed, take(failed));
            }
            add(&self.hits, take(&stripe.hits));
            add(&self.misses, take(&stripe.misses));
            add(&self.bytes_read, take(&stripe.bytes_read));
            add(&self.bytes_written, take(&stripe.bytes_written));
            in_flight = in_flight.saturating_add(stripe.in_flight.load(Ordering::Relaxed));
        }
        self.in_flight.set(in_flight.max(0) as f64);
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // The counts since the last flush: the flusher holds no reference to stop this.
        self.flush();
    }
}

impl Observer for Recorded {
    fn started(&self, _op: &Op<'_>) -> Option<Box<dyn state_core::layer::Scope>> {
        self.in_flight(1);
        None
    }

    fn stream_started(&self, _kind: OpKind) {
        self.in_flight(1);
    }

    fn abandoned(&self, _kind: OpKind) {
        self.in_flight(-1);
    }

    fn finished(&self, call: &Finished) {
        self.in_flight(-1);
        let Some(per) = self.ops.get(call.kind.index()) else {
            return;
        };
        if let Some(histogram) = &per.entries {
            histogram.record(call.entries as f64);
        }
        match &self.striped {
            Some(striped) => count_in(striped.mine(), call),
            None => self.count_now(per, call),
        }
        if let Some(kind) = call.error {
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
}

impl Recorded {
    /// Counts `call` straight into the recorder's handles.
    fn count_now(&self, per: &PerOp, call: &Finished) {
        per.duration.record(call.elapsed.as_secs_f64());
        match call.error {
            None => per.ok.increment(1),
            Some(_) => per.failed.increment(1),
        }
        add(&self.hits, call.observed.hits);
        add(&self.misses, call.observed.misses);
        add(&self.bytes_read, call.observed.bytes_read);
        add(&self.bytes_written, call.bytes_written);
    }
}

/// Counts `call` into the calling thread's stripe, for the next flush.
fn count_in(stripe: &Stripe, call: &Finished) {
    let status = match call.error {
        None => &stripe.ok,
        Some(_) => &stripe.failed,
    };
    if let Some(count) = status.get(call.kind.index()) {
        count.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(durations) = stripe.durations.get(call.kind.index()) {
        durations.record(call.elapsed);
    }
    bump(&stripe.hits, call.observed.hits);
    bump(&stripe.misses, call.observed.misses);
    bump(&stripe.bytes_read, call.observed.bytes_read);
    bump(&stripe.bytes_written, call.bytes_written);
}

fn add(counter: &Counter, n: u64) {
    if n > 0 {
        counter.increment(n);
    }
}

fn bump(count: &AtomicU64, n: u64) {
    if n > 0 {
        count.fetch_add(n, Ordering::Relaxed);
    }
}
