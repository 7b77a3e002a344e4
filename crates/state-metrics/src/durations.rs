//! [`Durations`]: call durations counted into [`DURATION_BUCKETS`] per thread, and handed
//! to the recorder as one `record_many` per bucket on each flush.
//!
//! Recording every duration into the recorder's histogram was, after the counters were
//! striped, what was left of the metrics layer's cost on Redis (BENCHMARKS.md): the
//! Prometheus exporter reads the clock and pushes each sample onto a list shared by every
//! thread. Here a call costs a search of 18 bounds and two adds on the calling thread's own
//! cache lines; the flush hands the recorder, per bucket that moved, the mean of its
//! samples `count` times. The mean of values inside a bucket lies inside it, so a
//! Prometheus histogram with the same bounds gets exact bucket counts and an exact `_sum`
//! (up to the samples that land while a flush reads). A recorder with other bounds, or one
//! that keeps quantiles, sees each sample as its bucket's mean for that second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Histogram;

use crate::names::DURATION_BUCKETS;

/// The buckets' upper bounds, in nanoseconds, and one more slot for anything above the
/// last (Prometheus's `+Inf`).
const SLOTS: usize = DURATION_BUCKETS.len() + 1;

/// [`DURATION_BUCKETS`] in whole nanoseconds (every bound is a whole number of them).
const BOUNDS_NANOS: [u64; DURATION_BUCKETS.len()] = {
    let mut bounds = [0u64; DURATION_BUCKETS.len()];
    let mut i = 0;
    while i < bounds.len() {
        // Rounded: 0.000_05 * 1e9 is 50 000 within f64's error.
        bounds[i] = (DURATION_BUCKETS[i] * 1e9 + 0.5) as u64;
        i += 1;
    }
    bounds
};

/// One bucket of one thread: how many calls, and their total time.
#[derive(Debug, Default)]
struct Slot {
    count: AtomicU64,
    nanos: AtomicU64,
}

/// The duration buckets of one operation on one stripe.
#[derive(Debug)]
pub(crate) struct Durations {
    slots: [Slot; SLOTS],
}

impl Default for Durations {
    fn default() -> Durations {
        Durations {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }
}

impl Durations {
    /// Counts one call that took `elapsed`.
    pub(crate) fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // Prometheus buckets are `le`: a value equal to a bound belongs to that bound.
        let index = BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        // Time first, count second (Release): a flush that takes a count also finds
        // the time of every call in it.
        slot.nanos.fetch_add(nanos, Ordering::Relaxed);
        slot.count.fetch_add(1, Ordering::Release);
    }

    /// Takes what this stripe counted into `totals` (count, nanos per bucket).
    pub(crate) fn drain_into(&self, totals: &mut [(u64, u64); SLOTS]) {
        for (slot, total) in self.slots.iter().zip(totals.iter_mut()) {
            if slot.count.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let count = slot.count.swap(0, Ordering::Acquire);
            total.0 += count;
            total.1 = total
                .1
                .saturating_add(slot.nanos.swap(0, Ordering::Relaxed));
        }
    }
}

/// Sums of every stripe's [`Durations`] for one operation, ready for the recorder.
pub(crate) type Totals = [(u64, u64); SLOTS];

/// Empty totals.
pub(crate) fn totals() -> Totals {
    [(0, 0); SLOTS]
}

/// Hands `totals` to `histogram`: per bucket, its mean `count` times, kept inside the
/// bucket's bounds.
pub(crate) fn record_totals(histogram: &Histogram, totals: &Totals) {
    for (index, &(count, nanos)) in totals.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let mean = nanos as f64 / count as f64 / 1e9;
        let lower = index
            .checked_sub(1)
            .and_then(|i| DURATION_BUCKETS.get(i))
            .map_or(0.0, |&bound| bound.next_up());
        let upper = DURATION_BUCKETS.get(index).copied().unwrap_or(f64::MAX);
        // A call timed while the flush read may have its time taken without its count:
        // the clamp keeps the mean in the bucket its calls were counted in.
        let mean = mean.clamp(lower, upper);
        histogram.record_many(mean, usize::try_from(count).unwrap_or(usize::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_the_buckets_in_nanoseconds() {
        assert_eq!(BOUNDS_NANOS[0], 50_000);
        assert_eq!(BOUNDS_NANOS[DURATION_BUCKETS.len() - 1], 10_000_000_000);
        for (nanos, seconds) in BOUNDS_NANOS.iter().zip(DURATION_BUCKETS) {
            assert_eq!(*nanos as f64 / 1e9, seconds);
        }
    }

    #[test]
    fn a_call_lands_in_the_first_bucket_at_or_above_it() {
        let durations = Durations::default();
        durations.record(Duration::from_micros(50)); // on the first bound: `le`
        durations.record(Duration::from_micros(51)); // just above: the second
        durations.record(Duration::from_secs(11)); // above every bound: +Inf
        let mut sums = totals();
        durations.drain_into(&mut sums);
        assert_eq!(sums[0], (1, 50_000));
        assert_eq!(sums[1], (1, 51_000));
        assert_eq!(sums[SLOTS - 1], (1, 11_000_000_000));
        assert_eq!(sums.iter().map(|s| s.0).sum::<u64>(), 3);

        // Drained: the next flush finds nothing.
        let mut again = totals();
        durations.drain_into(&mut again);
        assert!(again.iter().all(|&(count, _)| count == 0));
    }

    /// The bucket counts and the `_sum` a Prometheus recorder renders are the same whether
    /// it got every duration or our per-bucket means.
    #[cfg(feature = "prometheus")]
    #[test]
    fn prometheus_renders_the_same_buckets_and_sum_as_from_every_sample() {
        use metrics::Recorder;

        let samples: Vec<Duration> = [
            50_000u64, // on the first bound
            50_001,    // just above it
            99_999,    // just under the second
            2_000_000, // inside a middle bucket, three times
            2_000_000,
            2_499_999,
            10_000_000_000, // on the last bound
            12_345_678_901, // above every bound
        ]
        .into_iter()
        .map(Duration::from_nanos)
        .collect();
        let key = metrics::Key::from_name(crate::names::OPERATION_DURATION);
        let meta = metrics::Metadata::new("test", metrics::Level::INFO, None);

        let direct = crate::prometheus::recorder().expect("recorder");
        let histogram = direct.register_histogram(&key, &meta);
        for sample in &samples {
            histogram.record(sample.as_secs_f64());
        }

        let bucketed = crate::prometheus::recorder().expect("recorder");
        let durations = Durations::default();
        for sample in &samples {
            durations.record(*sample);
        }
        let mut sums = totals();
        durations.drain_into(&mut sums);
        record_totals(&bucketed.register_histogram(&key, &meta), &sums);

        let lines = |text: String| -> Vec<(String, f64)> {
            text.lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect()
        };
        let want = lines(direct.handle().render());
        let got = lines(bucketed.handle().render());
        assert_eq!(want.len(), DURATION_BUCKETS.len() + 3, "{want:?}"); // + Inf, sum, count
        assert_eq!(want.len(), got.len(), "{got:?}");
        for ((want_series, want_value), (got_series, got_value)) in want.iter().zip(&got) {
            assert_eq!(want_series, got_series);
            let tolerance = want_value.abs() * 1e-12;
            assert!(
                (want_value - got_value).abs() <= tolerance,
                "{want_series}: {want_value} from every sample, {got_value} from the means"
            );
        }
    }
}
