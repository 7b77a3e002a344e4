//! The one case runner of every suite: a fresh subject per case on its own runtime, torn
//! down pass or fail, and the failure named after the case and the subject.

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;

use state_core::Result;

/// How long one property case may take, its teardown included, before it counts as a
/// hang and fails the property with its input. Far above what a case needs (under a
/// second; a few for a value of the maximum size on a loaded two-core machine).
pub const CASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A two-worker multi-threaded runtime, as `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 2)]` would build; built here so backend crates need no tokio macros.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build the tokio runtime for the test: {e}"))
}

/// What a suite's cases run against, built fresh for each case by the suite's factory.
pub trait Subject: Send + Sync + Sized + 'static {
    /// What builds a subject: handed to every case, cloned for each.
    type Factory: Clone + Send + 'static;

    /// The suite's name in failure messages (`conformance`, `lock`).
    const SUITE: &'static str;

    /// A fresh subject for one case, with its name and its teardown.
    fn open(factory: Self::Factory) -> impl Future<Output = Opened<Self>>;
}

/// Work after a case, run pass or fail. `Err` says what went wrong ("clearing its namespace
/// failed: …") and fails a case that passed.
pub type Teardown = Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send>>;

/// A subject ready for one case.
pub struct Opened<S> {
    /// What the case runs against.
    pub subject: Arc<S>,
    /// Names the subject in failure messages, after "failed on".
    pub on: String,
    /// Run after the case, pass or fail.
    pub teardown: Teardown,
}

impl<S> fmt::Debug for Opened<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("on", &self.on)
            .finish_non_exhaustive()
    }
}

/// Runs one case against what a factory builds (it builds its own runtime).
pub type CaseFn<F> = fn(F);

/// A case table entry: the case's name and its runner.
pub type Case<F> = (&'static str, CaseFn<F>);

/// Runs one case on a fresh subject of `S`, on its own [`runtime`], then its teardown; fails
/// the test naming the suite, the case and the subject if either fails.
pub fn run_case<S, C, Fut>(name: &'static str, factory: S::Factory, case: C)
where
    S: Subject,
    C: FnOnce(Arc<S>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let suite = S::SUITE;
    runtime().block_on(async move {
        let Opened {
            subject,
            on,
            teardown,
        } = S::open(factory).await;
        // On a task, so that a failed assertion still lets the teardown run.
        let outcome = tokio::spawn(case(subject)).await;
        let torn_down = teardown.await;
        match outcome {
            Ok(Ok(())) => {
                if let Err(e) = torn_down {
                    panic!("{suite} case `{name}` passed on {on} but {e}");
                }
            }
            Ok(Err(e)) => panic!(
                "{suite} case `{name}` failed on {on}: {e} [kind {:?}]",
                e.kind()
            ),
            Err(join) => {
                eprintln!("{suite} case `{name}` failed on {on}");
                match join.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(join) => panic!("{suite} case `{name}` was cancelled: {join}"),
                }
            }
        }
    });
}

/// Runs every case of a suite, `parallel` at a time, then every property one after
/// another, all from ONE test; panics naming each that failed (their own panics are
/// printed above it). Each runs on a thread of its own, since each builds its own runtime.
///
/// For subjects whose server topology is costly to start (a Redis Cluster, Sentinels):
/// nextest runs each `#[test]` in its own process, so the one-test-per-case expansion of a
/// suite's macro would start a topology per case.
pub fn run_all_in_one<S: Subject>(
    cases: &[Case<S::Factory>],
    properties: &[Case<S::Factory>],
    factory: S::Factory,
    parallel: usize,
) {
    let mut failed = run_chunks(cases, parallel, &factory);
    failed.extend(run_chunks(properties, 1, &factory));
    assert!(
        failed.is_empty(),
        "failed {} cases (see their panics above): {failed:?}",
        S::SUITE
    );
}

/// Runs `cases`, `parallel` at a time, each on a thread of its own (each builds its own
/// runtime); returns the names of those that failed.
pub(crate) fn run_chunks<F: Clone + Send>(
    cases: &[Case<F>],
    parallel: usize,
    factory: &F,
) -> Vec<&'static str> {
    let mut failed = Vec::new();
    for chunk in cases.chunks(parallel.max(1)) {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .map(|&(name, case)| {
                    let factory = factory.clone();
                    let run = move || catch_unwind(AssertUnwindSafe(|| case(factory)));
                    (name, scope.spawn(run))
                })
                .collect();
            for (name, handle) in handles {
                if !matches!(handle.join(), Ok(Ok(()))) {
                    failed.push(name);
                }
            }
        });
    }
    failed
}

/// One `#[test]` per case, each running `$crate::$suite::$case` through
/// `$crate::$suite::run_case` on a subject from `$crate::$suite::factory($factory)`.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_tests {
    ($suite:ident, $factory:path ; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::$suite::run_case(
                    stringify!($case),
                    $crate::$suite::factory($factory),
                    |subject| async move { $crate::$suite::$case(&subject).await },
                );
            }
        )*
    };
}

/// The case table of suite `$suite`: `&[(name, runner)]`, in the order of the list.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_table {
    ($suite:ident ; $($case:ident),* $(,)?) => {
        &[$(
            (
                stringify!($case),
                (|factory| {
                    $crate::$suite::run_case(stringify!($case), factory, |subject| async move {
                        $crate::$suite::$case(&subject).await
                    })
                }) as $crate::harness::CaseFn<_>,
            ),
        )*]
    };
}

/// The names of a case list, in order.
#[doc(hidden)]
#[macro_export]
macro_rules! __suite_names {
    ($(;)? $($case:ident),* $(,)?) => {
        &[$(stringify!($case)),*]
    };
}
