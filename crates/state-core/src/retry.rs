//! Retries with exponential backoff and jitter, bounded in attempts and in total time.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::error::{Result, StateError};

/// Whether an operation may be applied twice without harm.
///
/// A failure whose outcome is unknown (a timeout after the request was sent) is retried only
/// for idempotent operations: re-sending a compare-and-swap or an increment could apply it
/// twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Safe to re-send (get, put of a fixed value, delete).
    Idempotent,
    /// Not safe to re-send when the first attempt may have been applied.
    NotIdempotent,
}

/// How often and how long to retry retryable errors.
///
/// Only errors whose [`StateError::is_retryable`] is true are retried. The delay before
/// attempt `n` (1-based, after the first) is a random value in `[d/2, d]` with
/// `d = min(max_delay, base_delay * 2^(n-1))` ("equal jitter"), so that many clients that
/// failed together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// The delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// The cap on any one delay.
    pub max_delay: Duration,
    /// No retry starts after this much time has passed since the first attempt.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 50ms base, 2s cap, 10s in all.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        max_elapsed: Duration::ZERO,
    };

    /// The guide's `retries(max_retries, base_delay, max_delay)`: `max_retries` retries after
    /// the first attempt.
    pub fn new(max_retries: u32, base_delay: Duration, max_delay: Duration) -> Self {
        RetryPolicy {
            max_attempts: max_retries.saturating_add(1),
            base_delay,
            max_delay,
            ..RetryPolicy::default()
        }
    }

    /// Checks the policy; the error names the bad field.
    pub fn validate(&self) -> Result<()> {
        if self.max_attempts == 0 {
            return Err(StateError::config(
                "retry max_attempts is 0; it counts the first attempt, so use at least 1",
            ));
        }
        if self.base_delay > self.max_delay {
            return Err(StateError::config(format!(
                "retry base_delay ({:?}) is larger than max_delay ({:?})",
                self.base_delay, self.max_delay
            )));
        }
        Ok(())
    }

    /// The jittered delay before retry number `retry` (1 for the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let full = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        let half = full / 2;
        let spread = u64::try_from((full - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread == 0 {
            0
        } else {
            random_u64() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// Runs `op` until it succeeds, fails with an error that must not be retried, or the
    /// policy's attempts or time run out; returns the last error then. `on_retry` is called
    /// before each retry (for metrics).
    pub async fn run<T, F, Fut>(
        &self,
        idempotency: Idempotency,
        mut on_retry: impl FnMut(&StateError),
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let started = Instant::now();
        match op().await {
            Ok(value) => Ok(value),
            // The retry loop, with its timer and a second copy of `op`'s future, lives in
            // its own heap allocation: failures are rare, and keeping that state out of
            // this future keeps every caller's future (boxed once per call by
            // `async_trait`) small enough for the allocator's fast path.
            Err(err) => {
                Box::pin(self.retry_after(started, err, idempotency, &mut on_retry, &mut op)).await
            }
        }
    }

    /// The rest of [`run`](Self::run) after the first attempt failed with `err`.
    async fn retry_after<T, F, Fut>(
        &self,
        started: Instant,
        mut err: StateError,
        idempotency: Idempotency,
        on_retry: &mut impl FnMut(&StateError),
        op: &mut F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            let unsafe_to_resend =
                err.outcome_unknown() && idempotency == Idempotency::NotIdempotent;
            if !err.is_retryable() || unsafe_to_resend || attempt >= self.max_attempts {
                return Err(err);
            }
            let delay = self.delay(attempt);
            if started.elapsed() + delay > self.max_elapsed {
                return Err(err);
            }
            on_retry(&err);
            tokio::time::sleep(delay).await;
            attempt += 1;
            err = match op().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
        }
    }
}

/// A random number good enough for jitter, without a dependency on `rand`.
fn random_u64() -> u64 {
    RandomState::new().hash_one(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            max_elapsed: Duration::from_secs(5),
        }
    }

    #[test]
    fn delays_grow_and_stay_within_jitter_bounds() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(60),
        };
        for (retry, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            for _ in 0..50 {
                let d = policy.delay(retry);
                assert!(d >= Duration::from_millis(full / 2), "{retry}: {d:?}");
                assert!(d <= Duration::from_millis(full), "{retry}: {d:?}");
            }
        }
    }

    #[tokio::test]
    async fn retries_retryable_errors_until_success() {
        let calls = AtomicU32::new(0);
        let mut retries = 0;
        let out = fast()
            .run(
                Idempotency::Idempotent,
                |_| retries += 1,
                || async {
                    if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                        Err(StateError::new(ErrorKind::Connection, "reset"))
                    } else {
                        Ok(7)
                    }
                },
            )
            .await;
        assert_eq!(out.ok(), Some(7));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(retries, 2);
    }

    #[tokio::test]
    async fn never_retries_a_permanent_error() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = fast()
            .run(
                Idempotency::Idempotent,
                |_| {},
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(StateError::invalid_input("bad"))
                },
            )
            .await;
        assert_eq!(out.err().map(|e| e.kind()), Some(ErrorKind::InvalidInput));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn never_resends_a_non_idempotent_op_with_unknown_outcome() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = fast()
            .run(
                Idempotency::NotIdempotent,
                |_| {},
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(StateError::new(ErrorKind::Timeout, "no reply").with_outcome_unknown())
                },
            )
            .await;
        assert!(out.err().is_some_and(|e| e.outcome_unknown()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stops_after_max_attempts() {
        let calls = AtomicU32::new(0);
        let out: Result<()> = fast()
            .run(
                Idempotency::Idempotent,
                |_| {},
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(StateError::new(ErrorKind::Connection, "refused"))
                },
            )
            .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn validate_names_the_field() {
        let p = RetryPolicy {
            max_attempts: 0,
            ..RetryPolicy::default()
        };
        assert!(
            p.validate()
                .err()
                .is_some_and(|e| e.message().contains("max_attempts"))
        );
        let p = RetryPolicy::new(3, Duration::from_secs(3), Duration::from_secs(1));
        assert!(
            p.validate()
                .err()
                .is_some_and(|e| e.message().contains("base_delay"))
        );
    }
}
