//! The conformance suite: the executable definition of the semantics every
//! [`StateBackend`] shares.
//!
//! A backend crate runs it with one line in a test file,
//! `testing::conformance_suite!(my_factory);` (see the crate docs for a whole file),
//! where `my_factory` is an `async fn(namespace: String) -> Arc<dyn StateBackend>` that
//! returns a backend whose key prefix is `namespace`, over storage shared by every call (so
//! that isolation between namespaces can be tested). The macro expands to one `#[test]` per
//! case in [`CASES`]; each runs on its own two-worker tokio runtime, under a fresh random
//! namespace that is cleared afterwards.
//!
//! Cases pick their assertions from [`Capabilities`]: a backend without metadata is checked
//! to answer `Unsupported`, an unordered scan is compared as a set, and so on. No case
//! returns early without asserting something.

mod atomic;
mod basic;
mod batch;
mod fencing;
mod limits;
mod scan;
mod snapshot;
mod ttl;

use std::fmt::Debug;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use state_core::{
    BoxStream, Bytes, Capabilities, Entry, ErrorKind, Result, StateBackend, StateError,
};

pub use atomic::*;
pub use basic::*;
pub use batch::*;
pub use fencing::*;
pub use limits::*;
pub use scan::*;
pub use snapshot::*;
pub use ttl::*;

/// The future a backend factory returns.
pub type BackendFuture = Pin<Box<dyn Future<Output = Arc<dyn StateBackend>> + Send>>;

/// Builds a backend whose key prefix is the given namespace, over shared storage.
pub type Factory = Arc<dyn Fn(String) -> BackendFuture + Send + Sync>;

/// Wraps an `async fn(String) -> Arc<dyn StateBackend>` (or any such closure) as a
/// [`Factory`].
pub fn factory<F, Fut>(f: F) -> Factory
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn StateBackend>> + Send + 'static,
{
    Arc::new(move |namespace| Box::pin(f(namespace)))
}

/// A fresh namespace such as `t:5f0c2a9e41b7d3c8:`, unique within and across processes.
pub fn unique_namespace() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; time, pid and a counter separate calls.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    format!("t:{:016x}:", hasher.finish())
}

/// A two-worker multi-threaded runtime, as `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 2)]` would build; built here so backend crates need no tokio macros.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build the tokio runtime for the test: {e}"))
}

/// What one conformance case works with: a backend under a fresh namespace, its
/// capabilities, and the factory for sibling namespaces over the same storage.
pub struct Ctx {
    factory: Factory,
    namespace: String,
    backend: Arc<dyn StateBackend>,
    caps: Capabilities,
    siblings: Mutex<Vec<Arc<dyn StateBackend>>>,
}

impl Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("namespace", &self.namespace)
            .field("backend", &self.backend)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// A context with a backend under a fresh [`unique_namespace`].
    pub async fn new(factory: Factory) -> Ctx {
        let namespace = unique_namespace();
        let backend = factory(namespace.clone()).await;
        let caps = backend.capabilities();
        Ctx {
            factory,
            namespace,
            backend,
            caps,
            siblings: Mutex::new(Vec::new()),
        }
    }

    /// The backend under test.
    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.backend
    }

    /// Its capabilities, read once.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// The namespace (key prefix) of [`backend`](Self::backend).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Another backend over the same storage, under the namespace `t:<hex>/<name>:` (for
    /// the main namespace `t:<hex>:`, so neither is a prefix of the other); cleared by
    /// [`cleanup`](Self::cleanup) too.
    pub async fn sibling(&self, name: &str) -> Arc<dyn StateBackend> {
        let base = self.namespace.strip_suffix(':').unwrap_or(&self.namespace);
        let backend = (self.factory)(format!("{base}/{name}:")).await;
        self.siblings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&backend));
        backend
    }

    /// Clears every namespace this context made (keys and fencing marks).
    pub async fn cleanup(&self) -> Result<()> {
        let siblings: Vec<_> = self
            .siblings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut first_error = None;
        for backend in siblings.iter().chain(std::iter::once(&self.backend)) {
            if let Err(e) = backend.clear(b"").await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Scans `prefix`: checks ascending order where the backend claims
    /// [`Capabilities::ordered_scan`], and returns the entries sorted by key. An unordered
    /// scan is fuzzy and may repeat a key; repeats must be identical and are dropped.
    pub async fn scan(&self, backend: &dyn StateBackend, prefix: &[u8]) -> Result<Vec<Entry>> {
        let entries = state_core::stream::try_collect(backend.scan(prefix)).await?;
        Ok(self.normalize("scan", prefix, entries, self.caps.ordered_scan))
    }

    /// Exports `prefix`, with the same checks as [`scan`](Self::scan); a consistent
    /// snapshot must not repeat a key.
    pub async fn export(&self, backend: &dyn StateBackend, prefix: &[u8]) -> Result<Vec<Entry>> {
        let entries = state_core::stream::try_collect(backend.export(prefix)).await?;
        let strict = self.caps.ordered_scan || self.caps.consistent_snapshot;
        Ok(self.normalize("export", prefix, entries, strict))
    }

    fn normalize(
        &self,
        what: &str,
        prefix: &[u8],
        mut entries: Vec<Entry>,
        strict: bool,
    ) -> Vec<Entry> {
        for entry in &entries {
            assert!(
                entry.key.starts_with(prefix),
                "{what}({}) returned key {} outside the prefix",
                show(prefix),
                show(&entry.key)
            );
        }
        if self.caps.ordered_scan {
            for pair in entries.windows(2) {
                if let [a, b] = pair {
                    assert!(
                        a.key < b.key,
                        "{what}({}) claims ordered_scan but returned {} before {}",
                        show(prefix),
                        show(&a.key),
                        show(&b.key)
                    );
                }
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let before = entries.len();
        entries.dedup_by(|later, earlier| {
            let same_key = later.key == earlier.key;
            if same_key {
                assert_eq!(
                    later, earlier,
                    "{what} repeated a key with different contents"
                );
            }
            same_key
        });
        if strict {
            assert_eq!(
                before,
                entries.len(),
                "{what}({}) repeated a key",
                show(prefix)
            );
        }
        entries
    }
}

/// Runs one conformance case on a fresh [`Ctx`], clears its namespaces afterwards, and
/// fails the test (naming the case and the backend) if either fails.
pub fn run_case<C, Fut>(name: &'static str, factory: Factory, case: C)
where
    C: FnOnce(Arc<Ctx>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    runtime().block_on(async move {
        let ctx = Arc::new(Ctx::new(factory).await);
        // Run on a task so that a failed assertion still lets the namespace be cleared.
        let outcome = tokio::spawn(case(Arc::clone(&ctx))).await;
        let cleanup = ctx.cleanup().await;
        let backend = ctx.caps.backend;
        match outcome {
            Ok(Ok(())) => {
                if let Err(e) = cleanup {
                    panic!("conformance case `{name}` passed on `{backend}` but clearing its namespace failed: {e}");
                }
            }
            Ok(Err(e)) => panic!(
                "conformance case `{name}` failed on `{backend}` ({}): {e} [kind {:?}]",
                ctx.namespace,
                e.kind()
            ),
            Err(join) => {
                eprintln!("conformance case `{name}` failed on `{backend}` ({})", ctx.namespace);
                match join.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(join) => panic!("conformance case `{name}` was cancelled: {join}"),
                }
            }
        }
    });
}

/// Asserts that `result` failed with `kind`; returns the error for further checks.
#[track_caller]
pub fn expect_kind<T: Debug>(what: &str, result: Result<T>, kind: ErrorKind) -> StateError {
    match result {
        Ok(value) => panic!("{what}: expected a {kind:?} error, got Ok({value:?})"),
        Err(e) => {
            assert_eq!(
                e.kind(),
                kind,
                "{what}: expected a {kind:?} error, got: {e}"
            );
            e
        }
    }
}

/// The value of `key` as a `Vec`, for compact comparisons.
pub async fn value(backend: &dyn StateBackend, key: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(backend.get(key).await?.map(|v| v.to_vec()))
}

/// The keys of `entries`, in order.
pub fn keys(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries.iter().map(|e| e.key.to_vec()).collect()
}

/// `Some(bytes)` as an owned vector, for comparing with [`value`].
pub fn some(bytes: &[u8]) -> Option<Vec<u8>> {
    Some(bytes.to_vec())
}

/// Renders bytes as an escaped byte string, such as `b"a\xff*"`.
pub fn show(bytes: &[u8]) -> String {
    let escaped: String = bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    format!("b\"{escaped}\"")
}

/// Whether `a` and `b` are within `slack` of each other (absolute expiries after rounding).
pub fn close(a: SystemTime, b: SystemTime, slack: Duration) -> bool {
    let diff = a.duration_since(b).or_else(|_| b.duration_since(a));
    diff.is_ok_and(|d| d <= slack)
}

/// A stream of entries for `import`.
pub fn entries_stream(entries: Vec<Entry>) -> BoxStream<'static, Result<Entry>> {
    state_core::stream::iter(entries.into_iter().map(Ok))
}

/// `Bytes` from a slice (shorthand in cases).
pub fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

/// The names of every case, in the order the macro expands them.
pub const CASES: &[&str] = crate::__conformance_cases!(__conformance_names!());

/// Runs one conformance case against the backends of a factory.
pub type CaseFn = fn(Factory);

/// Every case with its runner, in the order of [`CASES`].
pub const CASE_TABLE: &[(&str, CaseFn)] = crate::__conformance_cases!(__conformance_table!());

/// Runs every conformance case, `parallel` at a time, then every property, all from ONE
/// test; panics naming each case that failed (their own panics are printed above it).
///
/// For backends whose server topology is costly to start (a Redis Cluster, Sentinels):
/// nextest runs each `#[test]` in its own process, so the one-test-per-case expansion of
/// [`conformance_suite!`](crate::conformance_suite) would start a topology per case.
pub fn run_all_in_one(factory: Factory, parallel: usize) {
    let properties: [(&str, CaseFn); 3] = [
        (
            "operations_agree_with_model",
            crate::model::operations_agree_with_model,
        ),
        (
            "export_import_round_trip",
            crate::model::export_import_round_trip,
        ),
        (
            "checkpoint_restore_round_trip",
            crate::model::checkpoint_restore_round_trip,
        ),
    ];
    let mut failed = Vec::new();
    for chunk in CASE_TABLE.chunks(parallel.max(1)) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|(name, case)| {
                    let factory = Arc::clone(&factory);
                    let run = move || catch_unwind(AssertUnwindSafe(|| case(factory)));
                    (*name, scope.spawn(run))
                })
                .collect();
            for (name, handle) in handles {
                if !matches!(handle.join(), Ok(Ok(()))) {
                    failed.push(name);
                }
            }
        });
    }
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

/// Runs every conformance case as its own `#[test]`.
///
/// `$factory` is a path to an `async fn(namespace: String) -> Arc<dyn StateBackend>`
/// returning backends that share storage and use `namespace` as their key prefix. Invoke it
/// once per test file (or module): the tests are named after the cases in [`CASES`].
#[macro_export]
macro_rules! conformance_suite {
    ($factory:path) => {
        $crate::__conformance_cases!(__conformance_tests!($factory));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($factory:path ; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case(
                    stringify!($case),
                    $crate::conformance::factory($factory),
                    |ctx| async move { $crate::conformance::$case(&ctx).await },
                );
            }
        )*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_table {
    ($(;)? $($case:ident),* $(,)?) => {
        &[$(
            (
                stringify!($case),
                (|factory: $crate::conformance::Factory| {
                    $crate::conformance::run_case(stringify!($case), factory, |ctx| async move {
                        $crate::conformance::$case(&ctx).await
                    })
                }) as $crate::conformance::CaseFn,
            ),
        )*]
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_names {
    ($(;)? $($case:ident),* $(,)?) => {
        &[$(stringify!($case)),*]
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
