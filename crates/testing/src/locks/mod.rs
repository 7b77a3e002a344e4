//! The lock conformance suite: the executable definition of what every
//! [`DistributedLock`](state_core::DistributedLock) promises (RELIABILITY.md, "Locks").
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
mod subject;

use std::future::Future;
use std::sync::Arc;

use crate::harness;

pub use cases::*;
pub use property::{PROPERTY_CASES_ENV, no_two_holders_and_tokens_never_go_back};
pub use subject::{
    Cleanup, LockFactory, LockKind, LockSubject, SubjectFuture, WAIT_TIMEOUT, eventually, factory,
    unique_name,
};

/// Runs one case on a fresh subject, then its cleanup; fails the test naming the case.
pub fn run_case<C, Fut>(name: &'static str, factory: LockFactory, case: C)
where
    C: FnOnce(Arc<LockSubject>) -> Fut,
    Fut: Future<Output = state_core::Result<()>> + Send + 'static,
{
    harness::run_case::<LockSubject, _, _>(name, factory, case);
}

/// Runs one lock case against the subjects of a factory.
pub type LockCaseFn = harness::CaseFn<LockFactory>;

/// The names of every case, in the order the macro expands them.
pub const LOCK_CASES: &[&str] = crate::__lock_cases!(__suite_names!());

/// Every case with its runner, in the order of [`LOCK_CASES`].
pub const LOCK_CASE_TABLE: &[(&str, LockCaseFn)] = crate::__lock_cases!(__suite_table!(locks));

/// The lock property with its runner, as [`run_all_in_one`] runs it after the cases.
pub const LOCK_PROPERTIES: &[(&str, LockCaseFn)] = &[(
    "no_two_holders_and_tokens_never_go_back",
    no_two_holders_and_tokens_never_go_back,
)];

/// Runs every lock case one after another, then the property, all from ONE test; panics
/// naming each that failed (their own panics are printed above it). For costly
/// topologies (a Redis Cluster, Sentinels), which nextest would otherwise start per test.
pub fn run_all_in_one(factory: LockFactory) {
    harness::run_all_in_one::<LockSubject>(LOCK_CASE_TABLE, LOCK_PROPERTIES, factory, 1);
}

/// Runs every lock case as its own `#[test]`.
///
/// `$factory` is a path to an `async fn() -> LockSubject`. Invoke it once per test file or
/// module: the tests are named after the cases in [`LOCK_CASES`].
#[macro_export]
macro_rules! lock_conformance_suite {
    ($factory:path) => {
        $crate::__lock_cases!(__suite_tests!(locks, $factory));
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
