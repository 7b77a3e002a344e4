//! [`LockMetricsLayer`]: every call of a lock service recorded through the `metrics`
//! facade: outcomes, how long taking a lock took, leases found lost.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use metrics::{Counter, Histogram, counter, histogram};
use state_core::{
    DistributedLock, ErrorKind, LockHook, LockLayer, LockLayered, LockOp, LockOutcome, Result,
};

use crate::names;

/// Records every call of the lock service it wraps (see [`names`]):
/// `state_lock_operations_total{operation,outcome}` with outcome `ok`, `busy` (the lock
/// was held by someone else), `lost` (an extend or release found the lease gone) or
/// `error`; `state_lock_acquire_duration_seconds`; `state_lock_leases_lost_total`.
///
/// Install the recorder before applying the layer, as for [`MetricsLayer`](crate::MetricsLayer).
#[derive(Debug, Clone, Copy, Default)]
pub struct LockMetricsLayer {
    _private: (),
}

impl LockMetricsLayer {
    /// A layer that records into the global recorder.
    pub fn new() -> LockMetricsLayer {
        LockMetricsLayer::default()
    }
}

impl LockLayer for LockMetricsLayer {
    fn layer_lock(&self, inner: Arc<dyn DistributedLock>) -> Arc<dyn DistributedLock> {
        Arc::new(LockLayered::new(LockRecorded::new(), inner))
    }
}

const OPS: [LockOp; 5] = [
    LockOp::TryAcquire,
    LockOp::Acquire,
    LockOp::Extend,
    LockOp::Release,
    LockOp::IsLocked,
];

const OUTCOMES: [&str; 4] = ["ok", "busy", "lost", "error"];

/// The hook of [`LockMetricsLayer`]: one counter per operation and outcome.
#[derive(Debug)]
struct LockRecorded {
    /// `counts[op][outcome]`, in the order of `OPS` and `OUTCOMES`.
    counts: Vec<Vec<Counter>>,
    /// `acquired[op == Acquire][outcome]`, for the two acquiring operations.
    acquire_seconds: Vec<Vec<Histogram>>,
    lost: Counter,
}

impl LockRecorded {
    fn new() -> LockRecorded {
        let counts = OPS
            .iter()
            .map(|op| {
                OUTCOMES
                    .iter()
                    .map(|outcome| {
                        counter!(names::LOCK_OPERATIONS_TOTAL, "operation" => op.name(), "outcome" => *outcome)
                    })
                    .collect()
            })
            .collect();
        let acquire_seconds = [LockOp::TryAcquire, LockOp::Acquire]
            .iter()
            .map(|op| {
                OUTCOMES
                    .iter()
                    .map(|outcome| {
                        histogram!(names::LOCK_ACQUIRE_DURATION, "operation" => op.name(), "outcome" => *outcome)
                    })
                    .collect()
            })
            .collect();
        LockRecorded {
            counts,
            acquire_seconds,
            lost: counter!(names::LOCK_LOST_TOTAL),
        }
    }
}

/// Which of `OUTCOMES` a result is.
fn outcome<T: LockOutcome>(op: LockOp, out: &Result<T>) -> usize {
    match out {
        Ok(value) if value.busy() => 1,
        Ok(_) => 0,
        // An acquire that waited its whole wait found the lock busy throughout.
        Err(e) if op == LockOp::Acquire && e.kind() == ErrorKind::Timeout => 1,
        Err(e) if e.kind() == ErrorKind::NotOwner => 2,
        Err(_) => 3,
    }
}

impl LockHook for LockRecorded {
    async fn around<T: LockOutcome>(
        &self,
        op: LockOp,
        call: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        let started = Instant::now();
        let out = call.await;
        let which = outcome(op, &out);
        let row = OPS.iter().position(|o| *o == op);
        if let Some(counter) = row.and_then(|r| self.counts.get(r)?.get(which)) {
            counter.increment(1);
        }
        let acquiring = match op {
            LockOp::TryAcquire => Some(0),
            LockOp::Acquire => Some(1),
            _ => None,
        };
        if let Some(h) = acquiring.and_then(|a| self.acquire_seconds.get(a)?.get(which)) {
            h.record(started.elapsed().as_secs_f64());
        }
        if which == 2 {
            self.lost.increment(1);
        }
        out
    }
}
