//! The lock property: random interleavings of acquire, extend, release, drop and pauses
//! across several owners never give two live holders at once, never refuse a lock nobody
//! can hold, and never hand out a token that is not above every earlier one.
//!
//! Each case must finish within [`CASE_TIMEOUT`]: a hang fails the property with that
//! case's steps instead of hanging the run.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use state_core::{DistributedLock, ErrorKind, FencingToken, LockGuard};

use super::subject::{LockFactory, LockKind, LockSubject, unique_name};
use crate::clock::sleep_past;
use crate::harness::{CASE_TIMEOUT, runtime};

/// Overrides the number of cases (default 12: each case sleeps through leases).
pub const PROPERTY_CASES_ENV: &str = "LOCK_PROPERTY_CASES";

const OWNERS: usize = 3;
/// Long enough that a loaded CI machine gets a request through well within it.
const TTL: Duration = Duration::from_millis(600);
/// A lease or a dropped guard may stay on the server this long after the holder's own
/// deadline (or the drop): a release in flight, a connection the server has not yet
/// noticed closing. A refusal is only a failure when no guard is within it.
const SLACK: Duration = Duration::from_secs(2);
/// An extend or release of a guard with at least this much left must succeed.
const MARGIN: Duration = Duration::from_millis(300);

/// One step of an interleaving.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    Acquire(usize),
    Extend(usize),
    Release(usize),
    Drop(usize),
    /// Sleep this many milliseconds, less than a lease: leases get close to their end.
    Wait(u64),
    /// Sleep past every lease.
    Pause,
}

impl fmt::Debug for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Acquire(o) => write!(f, "owner {o}: try_acquire"),
            Step::Extend(o) => write!(f, "owner {o}: extend"),
            Step::Release(o) => write!(f, "owner {o}: release"),
            Step::Drop(o) => write!(f, "owner {o}: drop guard"),
            Step::Wait(ms) => write!(f, "wait {ms} ms"),
            Step::Pause => write!(f, "pause past the TTL"),
        }
    }
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let owner = 0..OWNERS;
    let step = prop_oneof![
        4 => owner.clone().prop_map(Step::Acquire),
        2 => owner.clone().prop_map(Step::Extend),
        2 => owner.clone().prop_map(Step::Release),
        1 => owner.prop_map(Step::Drop),
        2 => (1..6u64).prop_map(|n| Step::Wait(n * 100)),
        1 => Just(Step::Pause),
    ];
    proptest::collection::vec(step, 1..24)
}

/// What the model knows about one owner.
#[derive(Default)]
struct Owner {
    guard: Option<LockGuard>,
    /// Until when a guard this owner gave up (dropped, or past its deadline) may still
    /// hold the lock on the server.
    maybe_until: Option<Instant>,
}

/// Property: see the module docs. Owners alternate between the subject's two handles.
pub fn no_two_holders_and_tokens_never_go_back(factory: LockFactory) {
    let cases = std::env::var(PROPERTY_CASES_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let rt = runtime();
    let mut subject = rt.block_on(factory());
    let cleanup = subject.cleanup.take();
    let subject = Arc::new(subject);
    let config = Config {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    // The steps of the first case that hung: later cases (shrinking too) are not run, since
    // each could hang as long again.
    let hung: std::cell::RefCell<Option<String>> = std::cell::RefCell::new(None);
    let result = runner.run(&steps(), |steps| {
        if hung.borrow().is_some() {
            return Err(TestCaseError::fail("not run: an earlier case hung"));
        }
        let shown = format!("{steps:#?}");
        // Built inside the runtime: a timer needs one.
        let timed =
            rt.block_on(async { tokio::time::timeout(CASE_TIMEOUT, run(&subject, &steps)).await });
        match timed {
            Ok(outcome) => outcome.map_err(TestCaseError::fail),
            Err(_) => {
                *hung.borrow_mut() = Some(shown);
                Err(TestCaseError::fail("the case hung"))
            }
        }
    });
    let lock = format!("{:?}", subject.lock);
    if let Some(cleanup) = cleanup {
        rt.block_on(cleanup());
    }
    if let Some(steps) = hung.into_inner() {
        panic!(
            "lock property on {lock}: a case did not finish within {CASE_TIMEOUT:?} (a hang); \
             its steps:\n{steps}"
        );
    }
    match result {
        Ok(()) => eprintln!("lock property on {lock}: {cases} cases passed"),
        Err(TestError::Fail(reason, minimal)) => {
            let steps: String = minimal
                .iter()
                .enumerate()
                .map(|(i, s)| format!("  step {i}: {s:?}\n"))
                .collect();
            panic!("lock property failed on {lock}: {reason}\nminimal failing input:\n{steps}")
        }
        Err(TestError::Abort(reason)) => panic!("lock property on {lock} aborted: {reason}"),
    }
}

async fn run(s: &LockSubject, steps: &[Step]) -> Result<(), String> {
    let name = unique_name("property");
    let mut owners: Vec<Owner> = (0..OWNERS).map(|_| Owner::default()).collect();
    let mut last_token: Option<FencingToken> = None;
    let handle = |o: usize| -> &Arc<dyn DistributedLock> {
        if o.is_multiple_of(2) {
            &s.lock
        } else {
            &s.other
        }
    };
    let live = |owner: &Owner, now: Instant| {
        owner
            .guard
            .as_ref()
            .is_some_and(|g| s.kind == LockKind::Session || g.deadline() > now)
    };
    let outcome = async {
        for (i, step) in steps.iter().enumerate() {
            let at = |what: String| format!("step {i} ({step:?}): {what}");
            match *step {
                Step::Acquire(o) => {
                    let got = handle(o)
                        .try_acquire(&name, TTL)
                        .await
                        .map_err(|e| at(format!("unexpected error {e}")))?;
                    let now = Instant::now();
                    match got {
                        Some(guard) => {
                            for (j, other) in owners.iter().enumerate() {
                                if live(other, now) {
                                    return Err(at(format!("granted while owner {j} holds it")));
                                }
                            }
                            let token = guard.fencing_token();
                            if last_token.is_some_and(|last| token <= last) {
                                return Err(at(format!("token {token:?} after {last_token:?}")));
                            }
                            last_token = Some(token);
                            let mine = &mut owners[o];
                            if let Some(old) = mine.guard.replace(guard) {
                                // Long expired (it was not live): dropping it releases nothing.
                                drop(old);
                            }
                            mine.maybe_until = None;
                        }
                        None => {
                            let could_hold = owners.iter().any(|w| {
                                w.guard.as_ref().is_some_and(|g| {
                                    s.kind == LockKind::Session || g.deadline() + SLACK > now
                                }) || w.maybe_until.is_some_and(|t| t > now)
                            });
                            if !could_hold {
                                return Err(at("refused although nobody can hold it".into()));
                            }
                        }
                    }
                }
                Step::Extend(o) => {
                    let Some(guard) = owners[o].guard.as_mut() else {
                        continue;
                    };
                    let safe = s.kind == LockKind::Session || guard.remaining() > MARGIN;
                    match handle(o).extend(guard, TTL).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::NotOwner && !safe => {
                            let lost = owners[o].guard.take();
                            owners[o].maybe_until = lost.map(|g| g.deadline() + SLACK);
                        }
                        Err(e) => return Err(at(format!("extend of a live guard failed: {e}"))),
                    }
                }
                Step::Release(o) => {
                    let Some(guard) = owners[o].guard.take() else {
                        continue;
                    };
                    let safe = s.kind == LockKind::Session || guard.remaining() > MARGIN;
                    let deadline = guard.deadline();
                    match handle(o).release(guard).await {
                        Ok(()) => owners[o].maybe_until = None,
                        Err(e) if e.kind() == ErrorKind::NotOwner && !safe => {
                            owners[o].maybe_until = Some(deadline + SLACK);
                        }
                        Err(e) => return Err(at(format!("release of a live guard failed: {e}"))),
                    }
                }
                Step::Drop(o) => {
                    if let Some(guard) = owners[o].guard.take() {
                        let deadline = guard.deadline();
                        drop(guard);
                        let freed_by = Instant::now() + SLACK;
                        owners[o].maybe_until = Some(match s.kind {
                            LockKind::Session => freed_by,
                            LockKind::Lease => freed_by.min(deadline + SLACK),
                        });
                    }
                }
                Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Step::Pause => sleep_past(TTL + Duration::from_millis(50)).await,
            }
        }
        Ok(())
    }
    .await;
    // Free whatever is still held, so the next case starts clean.
    for (o, owner) in owners.iter_mut().enumerate() {
        if let Some(guard) = owner.guard.take() {
            let _ = handle(o).release(guard).await;
        }
    }
    outcome
}
