//! The one retry rule of the workspace, with exponential backoff and jitter, bounded in
//! attempts and in time.
//!
//! # The rule
//!
//! What the library reports happened, happened exactly once. So after a failure, an
//! operation is sent again only when that cannot change what any client observes:
//!
//! 1. **The server did not execute it**: the connection could not be opened, the server
//!    refused before executing (`LOADING`, `MOVED`/`ASK`, `TRYAGAIN`, `CLUSTERDOWN`,
//!    `READONLY`, `MASTERDOWN`, PostgreSQL's "shutting down" or "too many connections"), or a
//!    Sentinel names no primary yet. Such an error is retryable and its
//!    [`outcome_unknown`](StateError::outcome_unknown) is false. Any operation is sent again.
//!    While the server is *away* (kind `Unavailable`, or `Connection` before sending) the
//!    operation waits for it with backoff up to [`RetryPolicy::failover_timeout`] (30 s by
//!    default): a failover is ridden out, not reported.
//! 2. **The outcome is unknown** (the connection broke or a reply timed out after the request
//!    was sent): the operation is sent again only if it is [`Idempotency::Idempotent`]:
//!    reads, and writes made safe by construction, such as a lock acquire conditional on an
//!    owner token unique to the call. Blind writes (put, delete, batches, get-and-delete,
//!    compare-and-swap, set-if-not-exists, fenced puts) are not: with other writers present,
//!    re-applying one can bring back a value someone consumed, or report `false` for a delete
//!    that deleted. They return the error, marked outcome-unknown, instead.
//! 3. **Anything else** (invalid input, a conflict, a server error) is never retried.
//!
//! Per-backend tables of every operation are in the repository's `RETRIES.md`.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use crate::error::{Result, StateError};

/// Whether an operation may be sent again after an attempt whose outcome is unknown (see
/// the module's rule).
///
/// Every operation is sent again after a failure the server did not execute; this says
/// whether it may also be sent again when the first attempt may have been applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Idempotency {
    /// Re-applying it cannot change what any client observes: a read, or a write made safe
    /// by construction (conditional on a token unique to this call, like a lock acquire
    /// with its owner token).
    Idempotent,
    /// A write whose second application could be observed (a blind put or delete once other
    /// writers exist, a compare-and-swap, a get-and-delete): after an unknown outcome it
    /// returns the error, marked outcome-unknown, and is not sent again.
    NotIdempotent,
}

/// How often and how long to retry retryable errors.
///
/// Only errors whose [`StateError::is_retryable`] is true are retried, and only as the
/// module's rule allows. The delay before retry `n` (1-based) is a random value in
/// `[d/2, d]` with `d = min(max_delay, base_delay * 2^(n-1))` ("equal jitter"), so that many
/// clients that failed together do not retry together.
///
/// Two budgets bound the retries. `max_attempts` and `max_elapsed` bound every retry. While
/// the server is away (the error's kind is `Unavailable`, or `Connection` before anything
/// was sent: see [`StateError::server_away`]) the retries go on past them, until
/// `failover_timeout` has passed since the first attempt: long enough for a Sentinel or
/// Cluster failover to promote a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 means no retry (except while the server is
    /// away, within `failover_timeout`).
    pub max_attempts: u32,
    /// The delay before the first retry (before jitter).
    pub base_delay: Duration,
    /// The cap on any one delay.
    pub max_delay: Duration,
    /// No retry starts after this much time has passed since the first attempt (except
    /// while the server is away, within `failover_timeout`).
    pub max_elapsed: Duration,
    /// How long an operation waits for a server that is away (a failover in progress, a
    /// restart) before it reports the error; zero turns the waiting off.
    pub failover_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 50ms base, 2s cap, 10s in all; 30s of waiting for a server that is away
    /// (the guide's Sentinel failover time).
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(10),
            failover_timeout: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all, and no waiting for a server that is away.
    pub const NONE: RetryPolicy = RetryPolicy {
        max_attempts: 1,
        base_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        max_elapsed: Duration::ZERO,
        failover_timeout: Duration::ZERO,
    };

    /// The same policy with another [`failover_timeout`](Self::failover_timeout).
    pub fn with_failover_timeout(mut self, timeout: Duration) -> Self {
        self.failover_timeout = timeout;
        self
    }

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
            if !self.may_resend(&err, idempotency) {
                return Err(err);
            }
            let delay = self.delay(attempt);
            let elapsed = started.elapsed() + delay;
            let within_attempts = attempt < self.max_attempts && elapsed <= self.max_elapsed;
            let waiting_for_server = err.server_away() && elapsed <= self.failover_timeout;
            if !within_attempts && !waiting_for_server {
                return Err(err);
            }
            on_retry(&err);
            tokio::time::sleep(delay).await;
            attempt = attempt.saturating_add(1);
            err = match op().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
        }
    }

    /// The rule itself: whether an operation that failed with `err` may be sent again at
    /// all (budgets aside). Retryable errors the server did not execute: always; those of
    /// unknown outcome: only when re-applying cannot be observed.
    pub fn may_resend(&self, err: &StateError, idempotency: Idempotency) -> bool {
        err.is_retryable() && (!err.outcome_unknown() || idempotency == Idempotency::Idempotent)
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
            failover_timeout: Duration::ZERO,
        }
    }

    #[test]
    fn delays_grow_and_stay_within_jitter_bounds() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(60),
            failover_timeout: Duration::ZERO,
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

    /// Runs `fast()` with `policy` changes over errors produced by `fail(call)` until it
    /// returns `None`; returns (result, calls).
    async fn run_with(
        policy: RetryPolicy,
        idempotency: Idempotency,
        fail: impl Fn(u32) -> Option<StateError>,
    ) -> (Result<u32>, u32) {
        let calls = AtomicU32::new(0);
        let out = policy
            .run(
                idempotency,
                |_| {},
                || {
                    let call = calls.fetch_add(1, Ordering::SeqCst);
                    let result = match fail(call) {
                        Some(err) => Err(err),
                        None => Ok(call),
                    };
                    async move { result }
                },
            )
            .await;
        (out, calls.load(Ordering::SeqCst))
    }

    fn unknown() -> StateError {
        StateError::new(ErrorKind::Connection, "reset after sending").with_outcome_unknown()
    }

    #[tokio::test]
    async fn an_idempotent_op_is_resent_after_an_unknown_outcome() {
        let (out, calls) = run_with(fast(), Idempotency::Idempotent, |call| {
            (call < 1).then(unknown)
        })
        .await;
        assert_eq!(out.ok(), Some(1));
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn every_op_is_resent_when_the_server_executed_nothing() {
        for err in [
            StateError::new(ErrorKind::Unavailable, "LOADING"),
            StateError::new(ErrorKind::Connection, "connection refused"),
            StateError::new(ErrorKind::Timeout, "connect timed out"),
        ] {
            let kind = err.kind();
            let message = err.message().to_string();
            let (out, calls) = run_with(fast(), Idempotency::NotIdempotent, |call| {
                (call < 2).then(|| StateError::new(kind, message.clone()))
            })
            .await;
            assert_eq!(out.ok(), Some(2), "{kind:?}");
            assert_eq!(calls, 3, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn a_server_that_is_away_is_waited_for_past_max_attempts() {
        let policy = RetryPolicy {
            max_attempts: 2,
            failover_timeout: Duration::from_secs(10),
            ..fast()
        };
        // Ten refusals (a failover in progress), then the promoted server answers.
        let (out, calls) = run_with(policy, Idempotency::NotIdempotent, |call| {
            (call < 10).then(|| StateError::new(ErrorKind::Unavailable, "MASTERDOWN"))
        })
        .await;
        assert_eq!(out.ok(), Some(10));
        assert_eq!(calls, 11);
        // Without the failover budget the same refusals end after max_attempts.
        let policy = policy.with_failover_timeout(Duration::ZERO);
        let (out, calls) = run_with(policy, Idempotency::NotIdempotent, |call| {
            (call < 10).then(|| StateError::new(ErrorKind::Unavailable, "MASTERDOWN"))
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn the_failover_budget_does_not_stretch_other_retries() {
        let policy = RetryPolicy {
            max_attempts: 2,
            failover_timeout: Duration::from_secs(10),
            ..fast()
        };
        // Timeouts after sending are not a server that is away: max_attempts holds.
        let (out, calls) = run_with(policy, Idempotency::Idempotent, |_| {
            Some(StateError::new(ErrorKind::Timeout, "no reply").with_outcome_unknown())
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn the_failover_budget_ends_the_wait() {
        let policy = RetryPolicy {
            max_attempts: 1,
            failover_timeout: Duration::from_millis(60),
            ..fast()
        };
        let started = Instant::now();
        let (out, calls) = run_with(policy, Idempotency::Idempotent, |_| {
            Some(StateError::new(ErrorKind::Connection, "refused"))
        })
        .await;
        assert!(out.is_err());
        assert!(calls > 1, "it waited for the server: {calls} calls");
        assert!(started.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn server_away_is_only_a_server_that_executed_nothing() {
        assert!(StateError::new(ErrorKind::Unavailable, "x").server_away());
        assert!(StateError::new(ErrorKind::Connection, "x").server_away());
        assert!(!unknown().server_away());
        assert!(!StateError::new(ErrorKind::Timeout, "x").server_away());
        assert!(!StateError::invalid_input("x").server_away());
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
