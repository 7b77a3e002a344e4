//! The lock cases. Each returns `Err` for an unexpected error and panics (with a message
//! naming what was expected) on a wrong answer; none returns without asserting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use state_core::{ErrorKind, LockGuard, MAX_LOCK_NAME_LEN, Result, new_owner_token};

use super::subject::{LockKind, LockSubject, WAIT_TIMEOUT, eventually, unique_name};
use crate::clock::sleep_past;
use crate::harness::{expect_kind, value};

/// A lease that outlives every case.
const LONG: Duration = Duration::from_secs(30);
/// A lease that runs out during a case.
const SHORT: Duration = Duration::from_millis(300);
/// A lease that outlives the next request even on a loaded machine, and runs out in a
/// bearable wait.
const MID: Duration = Duration::from_millis(1500);
/// Past [`SHORT`], with room for a server that frees the lock a little after the holder's
/// own deadline (which is measured from before the request).
const PAST_SHORT: Duration = Duration::from_millis(500);
/// How long a freed lock may take to show as free (an asynchronous release on drop, a
/// closed connection noticed by the server).
const FREED_WITHIN: Duration = Duration::from_secs(5);

#[track_caller]
fn held(what: &str, guard: Option<LockGuard>) -> LockGuard {
    guard.unwrap_or_else(|| panic!("{what}: expected to get the lock, but it was busy"))
}

#[track_caller]
fn refused(what: &str, guard: Option<LockGuard>) {
    if let Some(guard) = guard {
        panic!("{what}: expected the lock to be busy, but got {guard:?}");
    }
}

/// One holder at a time, this handle included: a second `try_acquire` from the same
/// handle is refused (no re-entrance), and a release frees the lock for the other handle.
pub async fn exclusive_and_not_reentrant(s: &LockSubject) -> Result<()> {
    let name = unique_name("exclusive");
    assert!(!s.lock.is_locked(&name).await?, "a fresh lock is free");
    let a = held("first acquire", s.lock.try_acquire(&name, LONG).await?);
    assert_eq!(a.name(), name);
    assert!(!a.owner().is_empty(), "the guard names its owner");
    assert!(s.lock.is_locked(&name).await?, "held after acquire");
    assert!(
        s.other.is_locked(&name).await?,
        "the other handle sees it held"
    );
    refused("other handle", s.other.try_acquire(&name, LONG).await?);
    refused("same handle again", s.lock.try_acquire(&name, LONG).await?);
    s.lock.release(a).await?;
    assert!(!s.lock.is_locked(&name).await?, "free after release");
    let b = held("after release", s.other.try_acquire(&name, LONG).await?);
    s.other.release(b).await
}

/// Eight acquirers racing on two handles: exactly one wins.
pub async fn one_winner_among_concurrent_acquirers(s: &LockSubject) -> Result<()> {
    let name = Arc::new(unique_name("race"));
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let lock = Arc::clone(if i.is_multiple_of(2) {
            &s.lock
        } else {
            &s.other
        });
        let name = Arc::clone(&name);
        tasks.push(tokio::spawn(async move {
            let guard = lock.try_acquire(&name, LONG).await;
            (lock, guard)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (lock, guard) = task.await.unwrap_or_else(|e| panic!("acquirer task: {e}"));
        if let Some(guard) = guard? {
            winners.push((lock, guard));
        }
    }
    assert_eq!(winners.len(), 1, "exactly one of 8 racing acquirers wins");
    for (lock, guard) in winners {
        lock.release(guard).await?;
    }
    Ok(())
}

/// RELIABILITY 1. Lease: A's lease runs out, B takes the lock, A's release is `NotOwner`
/// and B still holds it. Session: the lock outlives the TTL until A releases it.
pub async fn release_by_former_holder_is_not_owner(s: &LockSubject) -> Result<()> {
    let name = unique_name("former");
    let a = held("A", s.lock.try_acquire(&name, SHORT).await?);
    sleep_past(PAST_SHORT).await;
    match s.kind {
        LockKind::Lease => {
            let b = held(
                "B after A's lease ran out",
                s.other.try_acquire(&name, LONG).await?,
            );
            expect_kind(
                "A's release after takeover",
                s.lock.release(a).await,
                ErrorKind::NotOwner,
            );
            assert!(
                s.other.is_locked(&name).await?,
                "B still holds after A's release"
            );
            refused(
                "A again while B holds",
                s.lock.try_acquire(&name, LONG).await?,
            );
            s.other.release(b).await
        }
        LockKind::Session => {
            refused(
                "B while A's session holds (a session lock outlives its TTL)",
                s.other.try_acquire(&name, LONG).await?,
            );
            s.lock.release(a).await?;
            let b = held(
                "B after A's release",
                s.other.try_acquire(&name, LONG).await?,
            );
            s.other.release(b).await
        }
    }
}

/// RELIABILITY 2. Lease: extend after expiry, and after takeover, is `NotOwner` and never
/// re-creates the lock. Session: extend still succeeds while the session holds it.
pub async fn extend_after_expiry_fails_and_never_recreates(s: &LockSubject) -> Result<()> {
    let name = unique_name("extend-late");
    let mut a = held("A", s.lock.try_acquire(&name, SHORT).await?);
    sleep_past(PAST_SHORT).await;
    match s.kind {
        LockKind::Lease => {
            let late = s.lock.extend(&mut a, LONG).await;
            expect_kind("extend after expiry", late, ErrorKind::NotOwner);
            assert!(
                !s.lock.is_locked(&name).await?,
                "a refused extend re-created the lock"
            );
            expect_kind(
                "release after expiry",
                s.lock.release(a).await,
                ErrorKind::NotOwner,
            );

            let mut a = held("A again", s.lock.try_acquire(&name, SHORT).await?);
            sleep_past(PAST_SHORT).await;
            let b = held("B after expiry", s.other.try_acquire(&name, LONG).await?);
            let late = s.lock.extend(&mut a, LONG).await;
            expect_kind("extend after takeover", late, ErrorKind::NotOwner);
            refused("A while B holds", s.lock.try_acquire(&name, LONG).await?);
            s.other.release(b).await
        }
        LockKind::Session => {
            s.lock.extend(&mut a, LONG).await?;
            assert!(!a.is_expired(), "extend moved the local deadline");
            assert!(s.lock.is_locked(&name).await?);
            s.lock.release(a).await
        }
    }
}

/// `extend` moves the guard's deadline (from before the request) and, for a lease, the
/// server's: the lock is still held after the original TTL.
pub async fn extend_moves_the_deadline(s: &LockSubject) -> Result<()> {
    let name = unique_name("extend");
    let mut a = held("A", s.lock.try_acquire(&name, MID).await?);
    let before = Instant::now();
    s.lock.extend(&mut a, LONG).await?;
    let after = Instant::now();
    assert!(
        a.deadline() >= before + LONG && a.deadline() <= after + LONG,
        "the deadline after extend is {LONG:?} from the extend request"
    );
    tokio::time::sleep(MID + (PAST_SHORT - SHORT)).await;
    assert!(!a.is_expired());
    assert!(s.lock.is_locked(&name).await?, "held past the first TTL");
    refused(
        "B after the extend",
        s.other.try_acquire(&name, LONG).await?,
    );
    s.lock.release(a).await
}

/// RELIABILITY 3. A holder stalls past its TTL (an in-process pause). Its successor writes
/// with a higher fencing token, and the stalled holder's late write is rejected as
/// `Fenced`. (Session locks do not run out: the successor comes after a release.)
pub async fn paused_holder_is_fenced(s: &LockSubject) -> Result<()> {
    let name = unique_name("paused");
    let key = format!("{name}/resource").into_bytes();
    let a = held("A", s.lock.try_acquire(&name, SHORT).await?);
    let token_a = a.fencing_token();
    s.backend.put_fenced(&key, b"a1", token_a).await?;

    sleep_past(PAST_SHORT).await; // A is paused here
    let b = match s.kind {
        LockKind::Lease => {
            let b = held("B after A's pause", s.other.try_acquire(&name, LONG).await?);
            drop(a); // its release on drop must not free B's lock
            b
        }
        LockKind::Session => {
            refused(
                "B while A's session holds",
                s.other.try_acquire(&name, LONG).await?,
            );
            s.lock.release(a).await?;
            held(
                "B after A's release",
                s.other.try_acquire(&name, LONG).await?,
            )
        }
    };
    assert!(
        b.fencing_token() > token_a,
        "B's token {:?} is not above A's {token_a:?}",
        b.fencing_token()
    );
    s.backend.put_fenced(&key, b"b1", b.fencing_token()).await?;
    let late = s.backend.put_fenced(&key, b"a2", token_a).await;
    expect_kind("A's write after its pause", late, ErrorKind::Fenced);
    assert_eq!(value(s.backend.as_ref(), &key).await?, Some(b"b1".to_vec()));
    assert!(s.other.is_locked(&name).await?, "B still holds");
    s.other.release(b).await?;
    s.backend.clear(&key).await?;
    Ok(())
}

/// RELIABILITY 4. Tokens increase strictly from one holder to the next: across handles,
/// after releases and (for leases) after expiry.
pub async fn tokens_increase_across_holders(s: &LockSubject) -> Result<()> {
    let name = unique_name("tokens");
    let mut last = None;
    for round in 0..10u32 {
        let lock = if round.is_multiple_of(2) {
            &s.lock
        } else {
            &s.other
        };
        let ttl = if round % 3 == 2 && s.kind == LockKind::Lease {
            SHORT
        } else {
            LONG
        };
        let guard = held("round", lock.try_acquire(&name, ttl).await?);
        let token = guard.fencing_token();
        if let Some(last) = last {
            assert!(
                token > last,
                "round {round}: token {token:?} after {last:?}"
            );
        }
        last = Some(token);
        if ttl == SHORT {
            // Let it run out instead of releasing it.
            sleep_past(PAST_SHORT).await;
            expect_kind(
                "release after expiry",
                lock.release(guard).await,
                ErrorKind::NotOwner,
            );
        } else {
            lock.release(guard).await?;
        }
    }
    Ok(())
}

/// RELIABILITY 5. An acquire whose reply was lost (the guard never reached the caller) is
/// retried with the same owner token: the retry recognises the lock it already holds
/// (lease: the same fencing token, from either handle) and no other owner gets it. A
/// session lock dies with the connection of the lost attempt; the retry then takes it anew.
pub async fn ambiguous_acquire_is_recognised(s: &LockSubject) -> Result<()> {
    let name = unique_name("ambiguous");
    let owner = new_owner_token();
    let mut first = held(
        "first attempt",
        s.lock.try_acquire_as(&name, LONG, &owner).await?,
    );
    let token = first.fencing_token();
    assert_eq!(first.owner(), owner);
    // The reply is "lost": forget the guard without releasing anything.
    drop(first.take_state());
    drop(first);
    let again = match s.kind {
        LockKind::Lease => {
            refused("another owner", s.other.try_acquire(&name, LONG).await?);
            let again = held(
                "retry, same owner",
                s.other.try_acquire_as(&name, LONG, &owner).await?,
            );
            assert_eq!(
                again.fencing_token(),
                token,
                "the retry recognised the lock it holds"
            );
            again
        }
        LockKind::Session => {
            eventually(
                "the lost attempt's session lock is freed",
                FREED_WITHIN,
                || async { !s.lock.is_locked(&name).await.unwrap_or(true) },
            )
            .await;
            let again = held(
                "retry, same owner",
                s.lock.try_acquire_as(&name, LONG, &owner).await?,
            );
            assert!(
                again.fencing_token() > token,
                "a new acquisition gets a new token"
            );
            again
        }
    };
    refused(
        "another owner while the retry holds",
        s.lock.try_acquire(&name, LONG).await?,
    );
    let handle = if s.kind == LockKind::Lease {
        &s.other
    } else {
        &s.lock
    };
    handle.release(again).await?;
    assert!(!s.lock.is_locked(&name).await?, "free after release");
    Ok(())
}

/// RELIABILITY 6. The guard's deadline is on the monotonic clock (an `Instant`, which a
/// wall-clock step cannot move) and is measured from before the request: it lies between
/// `before + ttl` and `after + ttl`, for acquire and for extend.
pub async fn deadline_is_taken_before_the_request(s: &LockSubject) -> Result<()> {
    let name = unique_name("deadline");
    let before = Instant::now();
    let mut a = held("A", s.lock.try_acquire(&name, LONG).await?);
    let after = Instant::now();
    assert!(
        a.deadline() >= before + LONG,
        "deadline earlier than the request + ttl"
    );
    assert!(
        a.deadline() <= after + LONG,
        "deadline later than the reply + ttl"
    );
    let remaining = a.remaining();
    assert!(
        remaining <= LONG && remaining > LONG / 2,
        "remaining {remaining:?}"
    );
    let before = Instant::now();
    s.lock.extend(&mut a, MID).await?;
    let after = Instant::now();
    assert!(a.deadline() >= before + MID && a.deadline() <= after + MID);
    s.lock.release(a).await
}

/// Dropping a guard inside a runtime releases the lock soon (long before its TTL).
pub async fn drop_releases_inside_a_runtime(s: &LockSubject) -> Result<()> {
    let name = unique_name("drop-in");
    let a = held("A", s.lock.try_acquire(&name, LONG).await?);
    drop(a);
    eventually(
        "the lock is free after its guard was dropped",
        FREED_WITHIN,
        || async { !s.other.is_locked(&name).await.unwrap_or(true) },
    )
    .await;
    let b = held("B after the drop", s.other.try_acquire(&name, LONG).await?);
    s.other.release(b).await
}

/// Dropping a guard on a thread without a runtime does not panic; the lock is freed at
/// the latest when its lease runs out (or its connection closes).
pub async fn drop_outside_a_runtime_does_not_panic(s: &LockSubject) -> Result<()> {
    let name = unique_name("drop-out");
    let ttl = Duration::from_secs(1);
    let a = held("A", s.lock.try_acquire(&name, ttl).await?);
    let dropped = std::thread::spawn(move || drop(a)).join();
    assert!(
        dropped.is_ok(),
        "dropping a guard outside a runtime panicked"
    );
    eventually(
        "the lock is free after the drop or the TTL",
        ttl + FREED_WITHIN,
        || async { !s.other.is_locked(&name).await.unwrap_or(true) },
    )
    .await;
    let b = held("B after the drop", s.other.try_acquire(&name, LONG).await?);
    s.other.release(b).await
}

/// An explicit release is not followed by a second one from `Drop`: the next holder keeps
/// the lock.
pub async fn explicit_release_is_not_repeated_by_drop(s: &LockSubject) -> Result<()> {
    let name = unique_name("release-once");
    let a = held("A", s.lock.try_acquire(&name, LONG).await?);
    s.lock.release(a).await?;
    let mut b = held("B", s.other.try_acquire(&name, LONG).await?);
    // Give a stray second release time to land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    refused("A while B holds", s.lock.try_acquire(&name, LONG).await?);
    s.other.extend(&mut b, LONG).await?;
    s.other.release(b).await
}

/// `acquire` waits while the lock is held and gets it once released, with a higher token.
pub async fn acquire_waits_for_release(s: &LockSubject) -> Result<()> {
    let name = unique_name("wait");
    let a = held("A", s.lock.try_acquire(&name, LONG).await?);
    let token_a = a.fencing_token();
    let releasing = Arc::new(AtomicBool::new(false));
    let releaser = {
        let (lock, releasing) = (Arc::clone(&s.lock), Arc::clone(&releasing));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            releasing.store(true, Ordering::SeqCst);
            lock.release(a).await
        })
    };
    let b = s.other.acquire(&name, LONG).await?;
    assert!(
        releasing.load(Ordering::SeqCst),
        "acquire returned while A still held the lock"
    );
    assert!(b.fencing_token() > token_a);
    releaser
        .await
        .unwrap_or_else(|e| panic!("releaser task: {e}"))?;
    s.other.release(b).await
}

/// `acquire` on a lock that stays held ends with a `Timeout` error naming the lock after
/// the configured wait.
pub async fn acquire_times_out_with_timeout_kind(s: &LockSubject) -> Result<()> {
    let name = unique_name("timeout");
    let a = held("A", s.lock.try_acquire(&name, LONG).await?);
    let started = Instant::now();
    let waited = s.other.acquire(&name, LONG).await;
    let e = expect_kind("acquire of a held lock", waited, ErrorKind::Timeout);
    assert!(
        e.to_string().contains(&name),
        "the error names the lock: {e}"
    );
    assert!(
        started.elapsed() >= WAIT_TIMEOUT / 2,
        "gave up long before the wait timeout"
    );
    s.lock.release(a).await
}

/// An empty or oversized name, a zero or absurd TTL: `InvalidInput` at once, never a wait.
pub async fn bad_names_and_ttls_are_invalid_input(s: &LockSubject) -> Result<()> {
    let long = "n".repeat(MAX_LOCK_NAME_LEN + 1);
    let name = unique_name("bad");
    let huge = Duration::from_secs(200 * 365 * 24 * 3600);
    expect_kind(
        "empty name",
        s.lock.try_acquire("", LONG).await,
        ErrorKind::InvalidInput,
    );
    expect_kind(
        "long name",
        s.lock.try_acquire(&long, LONG).await,
        ErrorKind::InvalidInput,
    );
    expect_kind(
        "acquire, empty name",
        s.lock.acquire("", LONG).await,
        ErrorKind::InvalidInput,
    );
    expect_kind(
        "is_locked, empty name",
        s.lock.is_locked("").await,
        ErrorKind::InvalidInput,
    );
    let zero = s.lock.try_acquire(&name, Duration::ZERO).await;
    expect_kind("zero TTL", zero, ErrorKind::InvalidInput);
    expect_kind(
        "200-year TTL",
        s.lock.try_acquire(&name, huge).await,
        ErrorKind::InvalidInput,
    );
    assert!(
        !s.lock.is_locked(&name).await?,
        "a refused acquire took the lock"
    );
    let mut a = held("valid", s.lock.try_acquire(&name, LONG).await?);
    let zero = s.lock.extend(&mut a, Duration::ZERO).await;
    expect_kind("extend by zero", zero, ErrorKind::InvalidInput);
    s.lock.release(a).await
}

/// Names are opaque: glob, hash-tag and separator characters, non-ASCII and the longest
/// allowed name lock only themselves.
pub async fn names_are_independent(s: &LockSubject) -> Result<()> {
    let base = unique_name("names/");
    let odd = ["a", "a:b", "{x}", "x}{", "*?[", "ünï", "with space", "%_\\"];
    let mut names: Vec<String> = odd.iter().map(|n| format!("{base}{n}")).collect();
    names.push("m".repeat(MAX_LOCK_NAME_LEN - 40) + &base);
    let mut guards = Vec::new();
    for name in &names {
        guards.push(held(name, s.lock.try_acquire(name, LONG).await?));
    }
    for name in &names {
        refused(name, s.other.try_acquire(name, LONG).await?);
        let sibling = format!("{name}.2");
        let g = held(&sibling, s.other.try_acquire(&sibling, LONG).await?);
        s.other.release(g).await?;
    }
    for guard in guards {
        s.lock.release(guard).await?;
    }
    for name in &names {
        assert!(!s.lock.is_locked(name).await?, "{name} free after release");
    }
    Ok(())
}
