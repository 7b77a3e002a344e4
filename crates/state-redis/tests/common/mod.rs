//! Runs the shared suites inside ONE test against a topology started once per process.
//!
//! nextest runs every `#[test]` in its own process, so the one-test-per-case expansion of
//! `testing::conformance_suite!` would start a Cluster or Sentinel topology per case. Here
//! the cases run from a single test, four at a time, each still on its own runtime and
//! namespace via `testing::conformance::run_case`; the list is checked against
//! `testing::conformance::CASES` so that a new case cannot be missed.

#![allow(dead_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use testing::conformance::{Factory, run_case};

type Case = (&'static str, fn(Factory));

macro_rules! cases {
    ($($case:ident),* $(,)?) => {
        &[$(
            (stringify!($case), |factory: Factory| {
                run_case(stringify!($case), factory, |ctx| async move {
                    testing::conformance::$case(&ctx).await
                })
            }),
        )*]
    };
}

const CASES: &[Case] = cases![
    capabilities_describe_the_backend,
    health_check_reports_healthy,
    put_then_get_round_trips,
    get_of_missing_key_is_none,
    delete_reports_whether_a_live_key_existed,
    binary_keys_and_values_round_trip,
    empty_value_is_stored_not_missing,
    get_and_delete_returns_the_value_once,
    metadata_round_trips_or_is_unsupported,
    put_with_ttl_reports_remaining_within_ttl,
    ttl_reports_missing_persistent_and_remaining,
    one_millisecond_ttl_expires,
    sub_second_ttl_expires,
    put_clears_an_old_ttl,
    every_plain_write_clears_an_old_ttl,
    zero_and_oversized_ttls_are_invalid_input,
    expired_keys_are_invisible_to_every_read,
    expired_keys_do_not_count_as_deleted,
    set_if_not_exists_writes_only_when_absent,
    set_if_not_exists_with_ttl_sets_an_expiry,
    set_if_not_exists_treats_an_expired_key_as_absent,
    compare_and_swap_replaces_only_a_matching_value,
    compare_and_swap_with_none_expects_absence,
    compare_and_swap_tells_empty_from_missing,
    set_if_not_exists_race_has_one_winner,
    compare_and_swap_race_has_one_winner,
    get_and_delete_race_has_one_winner,
    put_fenced_rejects_a_lower_token_and_keeps_the_value,
    put_fenced_accepts_equal_and_higher_tokens,
    fences_are_per_key,
    fence_survives_put_delete_and_expiry,
    clear_and_replace_forget_fence_marks,
    batch_get_keeps_order_and_reports_missing,
    batch_put_writes_every_entry,
    batch_put_last_duplicate_wins,
    batch_put_validates_every_entry_first,
    batch_delete_counts_live_keys,
    empty_batches_are_no_ops,
    scan_and_count_see_exactly_the_prefix,
    prefix_ending_in_0xff_scans_correctly,
    glob_and_like_metacharacters_are_literal,
    clear_returns_live_count_and_spares_other_prefixes,
    large_scan_streams_every_key,
    namespaces_are_isolated,
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
    empty_key_is_invalid_input_everywhere,
    key_length_limit_is_enforced,
    value_length_limit_is_enforced,
];

/// A factory over `url` (a redis+cluster or redis+sentinel URL) with the namespace as prefix.
pub fn factory(url: &'static str) -> Factory {
    testing::conformance::factory(move |namespace: String| async move {
        let config = RedisConfig::builder()
            .url(url)
            .key_prefix(namespace)
            .build()
            .unwrap_or_else(|e| panic!("bad test config: {e}"));
        let backend = RedisStateBackend::new(config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Arc::new(backend) as Arc<dyn StateBackend>
    })
}

/// Runs every conformance case (four at a time), then every property; panics listing
/// every case that failed.
pub fn run_suites(factory: Factory) {
    let mut names: Vec<&str> = CASES.iter().map(|(name, _)| *name).collect();
    let mut expected: Vec<&str> = testing::conformance::CASES.to_vec();
    names.sort_unstable();
    expected.sort_unstable();
    assert_eq!(
        names, expected,
        "tests/common/mod.rs lists other cases than the suite"
    );

    let mut failed = Vec::new();
    for chunk in CASES.chunks(4) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(name, case)| {
                    let factory = Arc::clone(&factory);
                    (
                        name,
                        scope.spawn(move || catch_unwind(AssertUnwindSafe(|| case(factory)))),
                    )
                })
                .collect();
            for (name, handle) in handles {
                if !matches!(handle.join(), Ok(Ok(()))) {
                    failed.push(*name);
                }
            }
        });
    }
    let properties: [Case; 3] = [
        (
            "operations_agree_with_model",
            testing::model::operations_agree_with_model,
        ),
        (
            "export_import_round_trip",
            testing::model::export_import_round_trip,
        ),
        (
            "checkpoint_restore_round_trip",
            testing::model::checkpoint_restore_round_trip,
        ),
    ];
    for (name, property) in properties {
        let factory = Arc::clone(&factory);
        if catch_unwind(AssertUnwindSafe(|| property(factory))).is_err() {
            failed.push(name);
        }
    }
    assert!(
        failed.is_empty(),
        "failed cases (see their panics above): {failed:?}"
    );
}

/// A runtime for starting topologies and for the mode-specific checks.
pub fn runtime() -> tokio::runtime::Runtime {
    testing::conformance::runtime()
}
