//! The lock conformance suite: the executable definition of what every
//! [`DistributedLock`] promises (RELIABILITY.md, "Locks").
//!
//! A lock crate runs it with `testing::lock_conformance_suite!(my_factory);` where
//! `my_factory` is an `async fn() -> LockSubject`: two independent handles on the same lock
//! service (like two processes), what kind of lock it is, and a backend for fenced writes.
//! `testing::lock_property_suite!(my_factory);` adds the model-based property over random
//! interleavings, and [`run_all_in_one`] runs all of it in one test for costly topologies.
//!
//! Every case uses lock names of its own, so handles may be shared between cases. Both
//! handles must be configured to wait at most [`WAIT_TIMEOUT`] in `acquire`.

mod cases;
mod property;

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use state_core::{DistributedLock, StateBackend};

pub use cases::*;
pub use property::{PROPERTY_CASES_ENV, no_two_holders_and_tokens_never_go_back};

/// The `acquire` wait timeout the suite expects both handles to be configured with.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(2);

/// How a lock ends when its holder goes quiet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// A lease: the server frees the lock `ttl` after the last acquire or extend.
    Lease,
    /// A session lock (PostgreSQL advisory lock): held as long as the holder's connection,
    /// whatever the TTL; the TTL is only the guard's local deadline.
    Session,
}

/// Work to run after a case (dropping a schema…).
pub type Cleanup = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What the lock cases run against.
pub struct LockSubject {
    /// Handle A.
    pub lock: Arc<dyn DistributedLock>,
    /// Handle B: independent of A (its own connections), as another process would be.
    pub other: Arc<dyn DistributedLock>,
    /// Lease or session semantics.
    pub kind: LockKind,
    /// Where fenced writes go: a real backend on the same server, or a `MemoryBackend`.
    pub backend: Arc<dyn StateBackend>,
    /// Run after the case, pass or fail.
    pub cleanup: Option<Cleanup>,
}

impl fmt::Debug for LockSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockSubject")
            .field("lock", &self.lock)
            .field("other", &self.other)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The future a lock factory returns.
pub type SubjectFuture = Pin<Box<dyn Future<Output = LockSubject> + Send>>;

/// Builds a fresh [`LockSubject`].
pub type LockFactory = Arc<dyn Fn() -> SubjectFuture + Send + Sync>;

/// Wraps an `async fn() -> LockSubject` as a [`LockFactory`].
pub fn factory<F, Fut>(f: F) -> LockFactory
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = LockSubject> + Send + 'static,
{
    Arc::new(move || Box::pin(f()))
}

/// A lock name no other case or run uses, ending in `tag`.
pub fn unique_name(tag: &str) -> String {
    format!("{}{tag}", crate::conformance::unique_namespace())
}

/// Polls `check` every 20 ms until it is true; panics naming `what` after `bound`.
pub async fn eventually<F, Fut>(what: &str, bound: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "{what}: still not true after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs one case on a fresh subject, then its cleanup; fails the test naming the case.
pub fn run_case<C, Fut>(name: &'static str, factory: LockFactory, case: C)
where
    C: FnOnce(Arc<LockSubject>) -> Fut,
    Fut: Future<Output = state_core::Result<()>> + Send + 'static,
{
    crate::conformance::runtime().block_on(async move {
        let mut subject = factory().await;
        let cleanup = subject.cleanup.take();
        let subject = Arc::new(subject);
        let lock = format!("{:?}", subject.lock);
        // On a task, so that a failed assertion still lets the cleanup run.
        let outcome = tokio::spawn(case(Arc::clone(&subject))).await;
        if let Some(cleanup) = cleanup {
            cleanup().await;
        }
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!(
                "lock case `{name}` failed on {lock}: {e} [kind {:?}]",
                e.kind()
            ),
            Err(join) => {
                eprintln!("lock case `{name}` failed on {lock}");
                match join.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(join) => panic!("lock case `{name}` was cancelled: {join}"),
                }
            }
        }
    });
}

/// Runs one lock case against the subjects of a factory.
pub type LockCaseFn = fn(LockFactory);

/// The names of every case, in the order the macro expands them.
pub const LOCK_CASES: &[&str] = crate::__lock_cases!(__lock_names!());

/// Every case with its runner, in the order of [`LOCK_CASES`].
pub const LOCK_CASE_TABLE: &[(&str, LockCaseFn)] = crate::__lock_cases!(__lock_table!());

/// Runs every lock case one after another, then the property, all from ONE test; panics
/// naming each that failed (their own panics are printed above it). For costly
/// topologies (a Redis Cluster, Sentinels), which nextest would otherwise start per test.
pub fn run_all_in_one(factory: LockFactory) {
    let mut failed = Vec::new();
    let property: (&str, LockCaseFn) = (
        "no_two_holders_and_tokens_never_go_back",
        no_two_holders_and_tokens_never_go_back,
    );
    for &(name, case) in LOCK_CASE_TABLE.iter().chain(std::iter::once(&property)) {
        let factory = Arc::clone(&factory);
        // Each case builds its own runtime: run it off this thread's runtime, if any.
        let run = std::thread::spawn(move || catch_unwind(AssertUnwindSafe(|| case(factory))));
        if !matches!(run.join(), Ok(Ok(()))) {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "failed lock cases (see their panics above): {failed:?}"
    );
}

/// Runs every lock case as its own `#[test]`.
///
/// `$factory` is a path to an `async fn() -> LockSubject`. Invoke it once per test file or
/// module: the tests are named after the cases in [`LOCK_CASES`].
#[macro_export]
macro_rules! lock_conformance_suite {
    ($factory:path) => {
        $crate::__lock_cases!(__lock_tests!($factory));
    };
}

/// Runs the lock property (random interleavings of acquire, extend, release, drop and
/// pauses across several owners) as a `#[test]`.
#[macro_export]
macro_rules! lock_property_suite {
    ($factory:path) => {
        #[test]
        fn no_two_holders_and_tokens_never_go_back() {
            $crate::locks::no_two_holders_and_tokens_never_go_back($crate::locks::factory(
                $factory,
            ));
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lock_tests {
    ($factory:path ; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::locks::run_case(
                    stringify!($case),
                    $crate::locks::factory($factory),
                    |subject| async move { $crate::locks::$case(&subject).await },
                );
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lock_table {
    ($(;)? $($case:ident),* $(,)?) => {
        &[$(
            (
                stringify!($case),
                (|factory: $crate::locks::LockFactory| {
                    $crate::locks::run_case(stringify!($case), factory, |subject| async move {
                        $crate::locks::$case(&subject).await
                    })
                }) as $crate::locks::LockCaseFn,
            ),
        )*]
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __lock_names {
    ($(;)? $($case:ident),* $(,)?) => {
        &[$(stringify!($case)),*]
    };
}

/// The one list of lock cases; every other list is generated from it.
#[doc(hidden)]
#[macro_export]
macro_rules! __lock_cases {
    ($callback:ident ! ( $($args:tt)* )) => {
        $crate::$callback! { $($args)* ;
            exclusive_and_not_reentrant,
            one_winner_among_concurrent_acquirers,
            release_by_former_holder_is_not_owner,
            extend_after_expiry_fails_and_never_recreates,
            extend_moves_the_deadline,
            paused_holder_is_fenced,
            tokens_increase_across_holders,
            ambiguous_acquire_is_recognised,
            deadline_is_taken_before_the_request,
            drop_releases_inside_a_runtime,
            drop_outside_a_runtime_does_not_panic,
            explicit_release_is_not_repeated_by_drop,
            acquire_waits_for_release,
            acquire_times_out_with_timeout_kind,
            bad_names_and_ttls_are_invalid_input,
            names_are_independent,
        }
    };
}
