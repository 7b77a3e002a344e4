//! The conformance suite: the executable definition of the semantics every
//! [`StateBackend`](state_core::StateBackend) shares.
//!
//! A backend crate runs it with one line in a test file,
//! `testing::conformance_suite!(my_factory);` (see the crate docs for a whole file),
//! where `my_factory` is an `async fn(namespace: String) -> Arc<dyn StateBackend>` that
//! returns a backend whose key prefix is `namespace`, over storage shared by every call (so
//! that isolation between namespaces can be tested). The macro expands to one `#[test]` per
//! case in [`CASES`]; each runs on its own two-worker tokio runtime, under a fresh random
//! namespace that is cleared afterwards.
//!
//! Cases pick their assertions from [`Capabilities`](state_core::Capabilities): a backend
//! without metadata is checked to answer `Unsupported`, an unordered scan is compared as a
//! set, and so on. No case returns early without asserting something.

mod atomic;
mod basic;
mod batch;
mod ctx;
mod fencing;
mod limits;
mod scan;
mod snapshot;
mod ttl;

use std::future::Future;
use std::sync::Arc;

use state_core::Result;

use crate::harness;

pub use atomic::*;
pub use basic::*;
pub use batch::*;
pub use ctx::Ctx;
pub use fencing::*;
pub use limits::*;
pub use scan::*;
pub use snapshot::*;
pub use ttl::*;

// The shared machinery, at the paths backend crates have always used.
pub use crate::harness::{
    BackendFuture, Factory, bytes, close, entries_stream, expect_kind, factory, keys, runtime,
    show, some, unique_namespace, value,
};

/// Runs one conformance case on a fresh [`Ctx`], clears its namespaces afterwards, and
/// fails the test (naming the case and the backend) if either fails.
pub fn run_case<C, Fut>(name: &'static str, factory: Factory, case: C)
where
    C: FnOnce(Arc<Ctx>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    harness::run_case::<Ctx, _, _>(name, factory, case);
}

/// The names of every case, in the order the macro expands them.
pub const CASES: &[&str] = crate::__conformance_cases!(__suite_names!());

/// Runs one conformance case against the backends of a factory.
pub type CaseFn = harness::CaseFn<Factory>;

/// Every case with its runner, in the order of [`CASES`].
pub const CASE_TABLE: &[(&str, CaseFn)] = crate::__conformance_cases!(__suite_table!(conformance));

/// Runs every conformance case, `parallel` at a time, then every property
/// ([`model::PROPERTIES`](crate::model::PROPERTIES)), all from ONE test; panics naming each
/// case that failed (their own panics are printed above it).
///
/// For backends whose server topology is costly to start (a Redis Cluster, Sentinels):
/// nextest runs each `#[test]` in its own process, so the one-test-per-case expansion of
/// [`conformance_suite!`](crate::conformance_suite) would start a topology per case.
pub fn run_all_in_one(factory: Factory, parallel: usize) {
    harness::run_all_in_one::<Ctx>(CASE_TABLE, crate::model::PROPERTIES, factory, parallel);
}

/// Runs every conformance case as its own `#[test]`.
///
/// `$factory` is a path to an `async fn(namespace: String) -> Arc<dyn StateBackend>`
/// returning backends that share storage and use `namespace` as their key prefix. Invoke it
/// once per test file (or module): the tests are named after the cases in [`CASES`].
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::__conformance_cases!(__suite_tests!(conformance, $factory));
    };
}

/// The single list of cases, handed to `$callback` after its own arguments.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($callback:ident ! ($($args:tt)*)) => {
        $crate::$callback! { $($args)* ;
            // basic
            capabilities_describe_the_backend,
            health_check_reports_healthy,
            put_then_get_round_trips,
            get_of_missing_key_is_none,
            delete_reports_whether_a_live_key_existed,
            binary_keys_and_values_round_trip,
            empty_value_is_stored_not_missing,
            get_and_delete_returns_the_value_once,
            metadata_round_trips_or_is_unsupported,
            // ttl
            put_with_ttl_reports_remaining_within_ttl,
            ttl_reports_missing_persistent_and_remaining,
            one_millisecond_ttl_expires,
            sub_second_ttl_expires,
            put_clears_an_old_ttl,
            every_plain_write_clears_an_old_ttl,
            zero_and_oversized_ttls_are_invalid_input,
            expired_keys_are_invisible_to_every_read,
            expired_keys_do_not_count_as_deleted,
            // atomic
            set_if_not_exists_writes_only_when_absent,
            set_if_not_exists_with_ttl_sets_an_expiry,
            set_if_not_exists_treats_an_expired_key_as_absent,
            compare_and_swap_replaces_only_a_matching_value,
            compare_and_swap_with_none_expects_absence,
            compare_and_swap_tells_empty_from_missing,
            set_if_not_exists_race_has_one_winner,
            compare_and_swap_race_has_one_winner,
            get_and_delete_race_has_one_winner,
            // fencing
            put_fenced_rejects_a_lower_token_and_keeps_the_value,
            put_fenced_accepts_equal_and_higher_tokens,
            fences_are_per_key,
            fence_survives_put_delete_and_expiry,
            clear_and_replace_forget_fence_marks,
            // batch
            batch_get_keeps_order_and_reports_missing,
            batch_put_writes_every_entry,
            batch_put_last_duplicate_wins,
            batch_put_validates_every_entry_first,
            batch_delete_counts_live_keys,
            empty_batches_are_no_ops,
            // scan, count, clear
            scan_and_count_see_exactly_the_prefix,
            prefix_ending_in_0xff_scans_correctly,
            glob_and_like_metacharacters_are_literal,
            clear_returns_live_count_and_spares_other_prefixes,
            large_scan_streams_every_key,
            namespaces_are_isolated,
            // snapshots
            export_carries_absolute_expiry_and_prefix,
            export_import_keeps_ttl_fidelity,
            import_drops_entries_already_expired,
            import_replace_removes_other_keys,
            import_merge_keeps_other_keys,
            import_error_midway_leaves_old_state,
            import_rejects_invalid_entries,
            checkpoint_restore_round_trip_keeps_ttls,
            restore_replaces_everything_atomically,
            restore_never_revives_expired_entries,
            export_is_a_point_in_time_snapshot,
            // limits
            empty_key_is_invalid_input_everywhere,
            key_length_limit_is_enforced,
            value_length_limit_is_enforced,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_unique_and_at_least_forty() {
        let mut names: Vec<&str> = CASES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CASES.len(), "a case is listed twice");
        assert!(CASES.len() >= 40, "only {} cases", CASES.len());
    }

    #[test]
    fn namespaces_differ_and_end_with_a_separator() {
        let a = unique_namespace();
        let b = unique_namespace();
        assert_ne!(a, b);
        assert!(a.starts_with("t:") && a.ends_with(':'), "{a}");
    }

    #[test]
    fn show_escapes_binary() {
        assert_eq!(show(b"a\xff*\0"), r#"b"a\xff*\x00""#);
    }
}
