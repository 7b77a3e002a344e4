//! Waiting for a lock: the loop behind every implementation's `acquire`.

use std::future::Future;
use std::time::{Duration, Instant};

use state_core::{DistributedLock, ErrorKind, LockGuard, Result, StateError, new_owner_token};

/// The first pause between attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// The longest pause between attempts: a freed lock is noticed within about this long.
const MAX_PAUSE: Duration = Duration::from_millis(200);

/// `lock.acquire(name, ttl)` for every implementation: [`acquire_with_backoff`] over the
/// lock's own `try_acquire_as`. A bad name or TTL ends the wait at the first attempt
/// (`InvalidInput` is not retried).
pub(crate) async fn acquire_waiting<L>(
    lock: &L,
    name: &str,
    ttl: Duration,
    wait: Duration,
) -> Result<LockGuard>
where
    L: DistributedLock + ?Sized,
{
    acquire_with_backoff(name, wait, |owner| async move {
        lock.try_acquire_as(name, ttl, &owner).await
    })
    .await
}

/// Calls `attempt(owner)` until it returns a guard or `wait` has passed, pausing between
/// attempts with exponential backoff and equal jitter (so that waiters who started together
/// spread out).
///
/// Every attempt uses the same owner token: if one fails after its request was sent (a lost
/// reply), the next recognises the lock it may already hold. A retryable error is retried
/// like a busy lock; any other error ends the wait. When `wait` runs out the error is a
/// [`Timeout`](ErrorKind::Timeout) naming the lock.
pub(crate) async fn acquire_with_backoff<F, Fut>(
    name: &str,
    wait: Duration,
    mut attempt: F,
) -> Result<LockGuard>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<Option<LockGuard>>>,
{
    let owner = new_owner_token();
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        let last_error = match attempt(owner.clone()).await {
            Ok(Some(guard)) => return Ok(guard),
            Ok(None) => None,
            Err(e) if e.is_retryable() => Some(e),
            Err(e) => return Err(e),
        };
        let waited = started.elapsed();
        if waited >= wait {
            let why = match last_error {
                Some(e) => format!("the last attempt failed: {e}"),
                None => "another holder has it".to_string(),
            };
            return Err(StateError::new(
                ErrorKind::Timeout,
                format!(
                    "lock `{name}` not acquired within {wait:?}: {why}; wait longer or find \
                     the holder"
                ),
            ));
        }
        let sleep = jitter(pause).min(wait - waited);
        tokio::time::sleep(sleep).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Equal jitter: half of `pause` plus a random part of the other half.
fn jitter(pause: Duration) -> Duration {
    use std::hash::BuildHasher;
    let random = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    let half = pause / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_nanos(random % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::FencingToken;

    #[tokio::test]
    async fn waits_with_one_owner_and_times_out_naming_the_lock() {
        let mut owners = Vec::new();
        let out = acquire_with_backoff("jobs", Duration::from_millis(60), |owner| {
            owners.push(owner);
            async { Ok(None) }
        })
        .await;
        let e = out.expect_err("a lock that stays busy times out");
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.to_string().contains("`jobs`"), "{e}");
        assert!(owners.len() >= 2, "it retried: {}", owners.len());
        assert!(
            owners.windows(2).all(|w| w[0] == w[1]),
            "one owner token for every attempt"
        );
    }

    #[tokio::test]
    async fn returns_the_guard_and_stops_on_a_permanent_error() {
        let guard = acquire_with_backoff("a", Duration::from_secs(5), |owner| async move {
            Ok(Some(LockGuard::new(
                "a",
                owner,
                FencingToken(7),
                Instant::now(),
                None,
            )))
        })
        .await
        .expect("free lock");
        assert_eq!(guard.fencing_token(), FencingToken(7));

        let mut calls = 0;
        let e = acquire_with_backoff("a", Duration::from_secs(5), |_| {
            calls += 1;
            async { Err(StateError::invalid_input("bad name")) }
        })
        .await
        .expect_err("permanent error");
        assert_eq!((e.kind(), calls), (ErrorKind::InvalidInput, 1));
    }
}
