//! Model-based property tests: random operation sequences applied to a backend and to a
//! plain `BTreeMap` model must agree at every step.
//!
//! A backend crate runs them with one line in a test file,
//! `testing::property_suite!(my_factory);`,
//! with the same factory as [`conformance_suite!`](crate::conformance_suite). Each property
//! runs `PROPTEST_CASES` cases (256 when unset) on one tokio runtime; each case gets a
//! fresh namespace, cleared afterwards. A failure is shrunk to a minimal operation sequence,
//! printed one step per line with the first step where backend and model disagree.
//! Failure persistence is off, so no regression files are written into the repository.
//!
//! Every case runs under [`CASE_TIMEOUT`]: a case that hangs (in the backend, or in
//! clearing its namespace) fails the property with the case's input, instead of hanging
//! the test run. Cases after a hang are not run and there is no shrinking, since each could
//! hang as long again.
//!
//! A case that fails while the wall clock was stepped (by [`CLOCK_STEP`] or more against
//! the monotonic clock) is drawn again instead: expiry follows the wall clock, so such a
//! step moves every TTL the case wrote, which the model cannot know. proptest counts these
//! as rejected cases (and fails the property past its limit of rejects); each is printed.
//!
//! Besides the random sequences, `edges_are_correct_or_clear_errors` (see [`edges`]) feeds
//! inputs at and past the limits: empty, binary, maximum-size and over-size keys and
//! values, TTLs of zero, 1 ms, the maximum and over it.

pub mod edges;
mod exec;
mod ops;
mod reference;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use state_core::{Entry, ImportMode, StateBackend};

use crate::clock::Stopwatch;
pub use crate::harness::CASE_TIMEOUT;
use crate::harness::{CaseFn, Factory, close, entries_stream, runtime, show, unique_namespace};

/// How far the wall clock may part from the monotonic one during a case before a failure
/// of that case is put down to the step: well above NTP's slewing (at most 0.5 ms per
/// second), well below the TTLs of milliseconds the cases wait out.
pub const CLOCK_STEP: Duration = Duration::from_millis(2);

pub use exec::{Outcome, apply_backend, apply_model, run_sequence};
pub use ops::{Blob, Expected, Op, Seed, key, op, ops, prefix, seeds, value};
pub use reference::{Model, Slot};

/// The proptest configuration of every property: proptest's defaults (so `PROPTEST_CASES`
/// and the other `PROPTEST_*` variables apply; 256 cases when unset), without failure
/// persistence.
pub fn config() -> Config {
    Config {
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `test` on `strategy`'s inputs with [`config`], each case on a backend from
/// `factory` under a fresh namespace and within [`CASE_TIMEOUT`]. Panics with the shrunk
/// input (rendered by `render`) if a case fails, or with the input of the first case that
/// hung.
pub fn check<S, F, Fut>(
    name: &str,
    factory: Factory,
    strategy: S,
    render: fn(&S::Value) -> String,
    test: F,
) where
    S: Strategy,
    F: Fn(Arc<dyn StateBackend>, S::Value) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let rt = runtime();
    let config = config();
    let wanted = config.cases;
    let mut runner = TestRunner::new(config);
    let runs = std::cell::Cell::new(0u64);
    let backend_name = std::cell::OnceCell::new();
    // The first case that hung: what hung, and its input.
    let hung: RefCell<Option<(String, String)>> = RefCell::new(None);
    let result = runner.run(&strategy, |input| {
        if hung.borrow().is_some() {
            // Fail fast: shrinking would run cases that may hang as long again.
            return Err(TestCaseError::fail("not run: an earlier case hung"));
        }
        runs.set(runs.get() + 1);
        let rendered = render(&input);
        let watch = Stopwatch::start();
        let outcome = rt.block_on(async {
            let Ok(backend) = tokio::time::timeout(CASE_TIMEOUT, factory(unique_namespace())).await
            else {
                return Err("opening the backend");
            };
            backend_name.get_or_init(|| backend.capabilities().backend);
            let outcome = tokio::time::timeout(CASE_TIMEOUT, test(Arc::clone(&backend), input))
                .await
                .map_err(|_| "the case")?;
            let cleared = tokio::time::timeout(CASE_TIMEOUT, backend.clear(b""))
                .await
                .map_err(|_| "clearing the namespace")?;
            match (outcome, cleared) {
                (Err(message), _) => Ok(Err(TestCaseError::fail(message))),
                (Ok(()), Err(e)) => Ok(Err(TestCaseError::fail(format!(
                    "clearing the namespace failed: {e}"
                )))),
                (Ok(()), Ok(_)) => Ok(Ok(())),
            }
        });
        let step = watch.wall_clock_step();
        match outcome {
            Ok(Err(TestCaseError::Fail(message))) if step >= CLOCK_STEP => {
                // Expiry follows the wall clock: a step under the case moves every TTL it
                // wrote, which the model cannot know. The case is drawn again, not passed.
                eprintln!(
                    "property `{name}`: the wall clock stepped by {step:?} during a failing \
                     case, drawn again: {message}"
                );
                Err(TestCaseError::reject(format!(
                    "wall clock stepped by {step:?}"
                )))
            }
            Ok(result) => result,
            Err(what) => {
                *hung.borrow_mut() = Some((what.to_string(), rendered));
                Err(TestCaseError::fail(format!("{what} hung")))
            }
        }
    });
    let backend_name = backend_name.get().copied().unwrap_or("?");
    let ran = runs.get();
    if let Some((what, input)) = hung.into_inner() {
        panic!(
            "property `{name}` on `{backend_name}`: {what} did not finish within \
             {CASE_TIMEOUT:?} (a hang) in run {ran}; input of that case:\n{input}"
        );
    }
    match result {
        Ok(()) => {
            eprintln!("property `{name}` on `{backend_name}`: {wanted} cases passed ({ran} run)")
        }
        Err(TestError::Fail(reason, minimal)) => panic!(
            "property `{name}` failed on `{backend_name}` after {ran} runs, shrinking included: {reason}\nminimal failing input:\n{}",
            render(&minimal)
        ),
        Err(TestError::Abort(reason)) => {
            panic!("property `{name}` on `{backend_name}` aborted: {reason}")
        }
    }
}

/// Renders an operation sequence one numbered step per line.
pub fn render_ops(ops: &[Op]) -> String {
    ops.iter()
        .enumerate()
        .map(|(i, op)| format!("  step {i}: {op:?}\n"))
        .collect()
}

fn render_debug<T: Debug>(value: &T) -> String {
    format!("{value:#?}")
}

/// Every property with its runner, in the order `conformance::run_all_in_one` runs them
/// after the cases.
pub const PROPERTIES: &[(&str, CaseFn<Factory>)] = &[
    ("operations_agree_with_model", operations_agree_with_model),
    ("export_import_round_trip", export_import_round_trip),
    (
        "checkpoint_restore_round_trip",
        checkpoint_restore_round_trip,
    ),
    (
        "edges_are_correct_or_clear_errors",
        edges_are_correct_or_clear_errors,
    ),
];

/// Property: keys, values and TTLs at and past the limits get the right answer or an
/// `InvalidInput` error that writes nothing (see [`edges`]).
pub fn edges_are_correct_or_clear_errors(factory: Factory) {
    check(
        "edges_are_correct_or_clear_errors",
        factory,
        edges::edge_cases(),
        render_debug,
        |backend, (largest, probes)| async move {
            let probes: Vec<edges::Probe> = largest.into_iter().chain(probes).collect();
            edges::run_edges(backend.as_ref(), &probes).await
        },
    );
}

/// Property: random sequences of every operation agree with the model step by step.
pub fn operations_agree_with_model(factory: Factory) {
    check(
        "operations_agree_with_model",
        factory,
        ops(),
        |ops| render_ops(ops),
        |backend, ops| async move { run_sequence(backend.as_ref(), &ops).await },
    );
}

/// Property: `export` then `import(Replace)` (after random noise) restores exactly the
/// exported entries, with their absolute expiries and metadata.
pub fn export_import_round_trip(factory: Factory) {
    let strategy = (seeds(), ops());
    check(
        "export_import_round_trip",
        factory,
        strategy,
        render_debug,
        |backend, (seeds, noise)| async move {
            snapshot_round_trip(backend.as_ref(), &seeds, &noise, Via::ExportImport).await
        },
    );
}

/// Property: `checkpoint` then `restore` (after random noise) brings back exactly the
/// checkpointed entries.
pub fn checkpoint_restore_round_trip(factory: Factory) {
    let strategy = (seeds(), ops());
    check(
        "checkpoint_restore_round_trip",
        factory,
        strategy,
        render_debug,
        |backend, (seeds, noise)| async move {
            snapshot_round_trip(backend.as_ref(), &seeds, &noise, Via::CheckpointRestore).await
        },
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    ExportImport,
    CheckpointRestore,
}

/// What a seeded key must look like in a snapshot.
struct Seeded {
    value: Vec<u8>,
    ttl: Option<Duration>,
    metadata: Option<serde_json::Value>,
}

async fn take_snapshot(
    b: &dyn StateBackend,
    via: Via,
    ordered: bool,
) -> Result<Vec<Entry>, String> {
    match via {
        Via::ExportImport => exec::export(b, ordered).await,
        Via::CheckpointRestore => {
            let checkpoint = b
                .checkpoint()
                .await
                .map_err(|e| format!("checkpoint failed: {e}"))?;
            let mut entries = checkpoint.into_entries();
            entries.sort_by(|x, y| x.key.cmp(&y.key));
            Ok(entries)
        }
    }
}

async fn snapshot_round_trip(
    b: &dyn StateBackend,
    seeds: &[Seed],
    noise: &[Op],
    via: Via,
) -> Result<(), String> {
    let caps = b.capabilities();
    let mut model: BTreeMap<Vec<u8>, Seeded> = BTreeMap::new();
    for seed in seeds {
        let (k, v) = (&seed.key.0[..], &seed.value.0[..]);
        let metadata = seed
            .metadata
            .filter(|_| caps.metadata)
            .map(serde_json::Value::from);
        let ttl = seed
            .ttl_secs
            .filter(|_| metadata.is_none())
            .map(Duration::from_secs);
        let written = match (&metadata, ttl) {
            (Some(meta), _) => b.put_with_metadata(k, v, meta.clone()).await,
            (None, Some(ttl)) => b.put_with_ttl(k, v, ttl).await,
            (None, None) => b.put(k, v).await,
        };
        written.map_err(|e| format!("seeding {} failed: {e}", show(k)))?;
        model.insert(
            k.to_vec(),
            Seeded {
                value: v.to_vec(),
                ttl,
                metadata,
            },
        );
    }

    let snapshot = take_snapshot(b, via, caps.ordered_scan).await?;
    let now = SystemTime::now();
    let got: Vec<&[u8]> = snapshot.iter().map(|e| &e.key[..]).collect();
    let want: Vec<&[u8]> = model.keys().map(|k| &k[..]).collect();
    if got != want {
        return Err(format!(
            "the {via:?} snapshot holds keys {:?}, the model {:?}",
            blobs(&got),
            blobs(&want)
        ));
    }
    for (entry, seeded) in snapshot.iter().zip(model.values()) {
        let key = show(&entry.key);
        if entry.value[..] != seeded.value[..] {
            return Err(format!(
                "{key}: snapshot value {} != model {}",
                show(&entry.value),
                show(&seeded.value)
            ));
        }
        if caps.metadata && entry.metadata != seeded.metadata {
            return Err(format!(
                "{key}: snapshot metadata {:?} != model {:?}",
                entry.metadata, seeded.metadata
            ));
        }
        match (entry.expires_at, seeded.ttl) {
            (None, None) => {}
            (Some(at), Some(ttl)) if at > now && at <= now + ttl + Duration::from_millis(2) => {}
            (at, ttl) => {
                return Err(format!(
                    "{key}: snapshot expiry {at:?} does not fit the TTL {ttl:?}"
                ));
            }
        }
    }

    let ordered = caps.ordered_scan;
    for (step, op) in noise.iter().enumerate() {
        let expected = match op {
            Op::CompareAndSwap {
                expected: Expected::Value(v),
                ..
            } => Some(v.0.clone()),
            _ => None,
        };
        apply_backend(b, ordered, op, expected.as_deref())
            .await
            .map_err(|e| format!("noise step {step} {op:?}: {e}"))?;
    }

    let count = snapshot.len();
    match via {
        Via::ExportImport => {
            let stream = entries_stream(snapshot.clone());
            let written = b
                .import(stream, ImportMode::Replace)
                .await
                .map_err(|e| format!("import failed: {e}"))?;
            if written != count as u64 {
                return Err(format!("import wrote {written} entries of {count}"));
            }
        }
        Via::CheckpointRestore => {
            let checkpoint =
                state_core::Checkpoint::new(snapshot.clone(), now, caps.consistent_snapshot);
            b.restore(checkpoint)
                .await
                .map_err(|e| format!("restore failed: {e}"))?;
        }
    }

    let again = take_snapshot(b, via, ordered).await?;
    if again.len() != count || snapshot.iter().zip(&again).any(|(x, y)| !same_entry(x, y)) {
        return Err(format!(
            "after the round trip the namespace holds\n{again:#?}\ninstead of\n{snapshot:#?}"
        ));
    }
    Ok(())
}

fn same_entry(x: &Entry, y: &Entry) -> bool {
    let expiry = match (x.expires_at, y.expires_at) {
        (None, None) => true,
        (Some(p), Some(q)) => close(p, q, Duration::from_millis(50)),
        _ => false,
    };
    x.key == y.key && x.value == y.value && x.metadata == y.metadata && expiry
}

fn blobs(keys: &[&[u8]]) -> Vec<Blob> {
    keys.iter().map(|k| Blob(k.to_vec())).collect()
}

/// Runs the model-based properties, each as its own `#[test]`:
/// `property_operations_agree_with_model`, `property_export_import_round_trip`,
/// `property_checkpoint_restore_round_trip` and `property_edges_are_correct_or_clear_errors`.
///
/// `$factory` is the same factory as for [`conformance_suite!`](crate::conformance_suite).
#[macro_export]
macro_rules! property_suite {
    ($factory:path) => {
        #[test]
        fn property_operations_agree_with_model() {
            $crate::model::operations_agree_with_model($crate::harness::factory($factory));
        }

        #[test]
        fn property_export_import_round_trip() {
            $crate::model::export_import_round_trip($crate::harness::factory($factory));
        }

        #[test]
        fn property_checkpoint_restore_round_trip() {
            $crate::model::checkpoint_restore_round_trip($crate::harness::factory($factory));
        }

        #[test]
        fn property_edges_are_correct_or_clear_errors() {
            $crate::model::edges_are_correct_or_clear_errors($crate::harness::factory($factory));
        }
    };
}
