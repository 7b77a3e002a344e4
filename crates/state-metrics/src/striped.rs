//! [`Striped`]: counts kept per thread and handed to the recorder's handles on an interval.
//!
//! A recorder's counter is one atomic that every thread adds to: under a multi-thread
//! runtime, each call then moves that cache line between cores, which cost more than all
//! the rest of the metrics layer (BENCHMARKS.md). Counting into a stripe of the calling
//! thread and flushing the sums every [`FLUSH_EVERY`] keeps the hot path on lines a core
//! already owns. The recorder sees the counts up to that long after the calls.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use state_core::OpKind;
use state_core::layer::thread_stripe;

use crate::durations::Durations;

/// How often a layer's stripes are flushed into the recorder's handles.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Enough for the worker threads of most services; more threads share stripes.
const STRIPES: usize = 16;

const OPS: usize = OpKind::ALL.len();

/// The counts of one thread (or a few), on cache lines of their own.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Stripe {
    pub(crate) ok: [AtomicU64; OPS],
    pub(crate) failed: [AtomicU64; OPS],
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
    /// Calls started minus calls ended on this stripe (a call may end on another one).
    pub(crate) in_flight: AtomicI64,
    /// How long the calls took, per operation.
    pub(crate) durations: [Durations; OPS],
}

impl Default for Stripe {
    fn default() -> Stripe {
        Stripe {
            ok: std::array::from_fn(|_| AtomicU64::new(0)),
            failed: std::array::from_fn(|_| AtomicU64::new(0)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
            durations: std::array::from_fn(|_| Durations::default()),
        }
    }
}

/// Every stripe of one layer.
#[derive(Debug)]
pub(crate) struct Striped {
    stripes: Box<[Stripe; STRIPES]>,
}

impl Default for Striped {
    fn default() -> Striped {
        Striped {
            stripes: Box::new(std::array::from_fn(|_| Stripe::default())),
        }
    }
}

impl Striped {
    /// The calling thread's stripe.
    pub(crate) fn mine(&self) -> &Stripe {
        &self.stripes[thread_stripe() % STRIPES]
    }

    /// Every stripe, for a flush.
    pub(crate) fn all(&self) -> &[Stripe] {
        &self.stripes[..]
    }
}

/// Takes what a counter holds, leaving zero.
pub(crate) fn take(counter: &AtomicU64) -> u64 {
    if counter.load(Ordering::Relaxed) == 0 {
        // Most counters of most operations never move: do not dirty their lines.
        return 0;
    }
    counter.swap(0, Ordering::Relaxed)
}

/// Something whose stripes a background task flushes.
pub(crate) trait Flush: Send + Sync + 'static {
    /// Hands the stripes' counts to the recorder.
    fn flush(&self);
}

/// Flushes `target` every [`FLUSH_EVERY`] while it lives, on the current tokio runtime.
/// False outside a runtime: the caller then records each call directly.
pub(crate) fn spawn_flusher<T: Flush>(target: &Arc<T>) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let weak: Weak<T> = Arc::downgrade(target);
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(FLUSH_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match weak.upgrade() {
                Some(target) => target.flush(),
                // The layer is gone; its last counts were flushed when it was dropped.
                None => return,
            }
        }
    });
    true
}
