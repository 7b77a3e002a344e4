//! Property: for any operations, a checkpoint, any more operations and a restore, the
//! backend holds what the model held at the checkpoint (under the coordinator's key
//! prefix; outside it, what the model holds now). On every backend, with the workspace's
//! model and operation strategies (`testing::model`); `PROPTEST_CASES` cases each.

mod support;

use std::sync::Arc;

use proptest::prelude::*;
use proptest::sample::select;
use state_checkpoint::{CheckpointCoordinator, CheckpointOptions, MemoryStore};
use state_core::{StateBackend, Ttl};
use support::Kind;
use testing::model::{Expected, Model, Op, apply_backend, apply_model, ops};

/// Applies `ops` to the backend and the model, checking every step agrees.
async fn apply(backend: &dyn StateBackend, model: &mut Model, ops: &[Op]) -> Result<(), String> {
    let ordered = backend.capabilities().ordered_scan;
    for (step, op) in ops.iter().enumerate() {
        let expected = match op {
            Op::CompareAndSwap { key, expected, .. } => match expected {
                Expected::Current => model.get(&key.0),
                Expected::Absent => None,
                Expected::Value(v) => Some(v.0.clone()),
            },
            _ => None,
        };
        let want = apply_model(model, op);
        let got = apply_backend(backend, ordered, op, expected.as_deref())
            .await
            .map_err(|e| format!("step {step} {op:?}: {e}"))?;
        if !want.admits(&got) {
            return Err(format!(
                "step {step} {op:?}: model {want:?}, backend {got:?}"
            ));
        }
    }
    Ok(())
}

async fn restore_matches_model(
    backend: Arc<dyn StateBackend>,
    (before, after, prefix): (Vec<Op>, Vec<Op>, Vec<u8>),
) -> Result<(), String> {
    let options = CheckpointOptions::new().with_key_prefix(prefix.clone());
    let coordinator =
        CheckpointCoordinator::new(backend.clone(), Arc::new(MemoryStore::new()), options)
            .map_err(|e| e.to_string())?;
    let mut model = Model::new();
    apply(backend.as_ref(), &mut model, &before).await?;
    let at_checkpoint = model.clone();
    let taken = coordinator
        .checkpoint_now()
        .await
        .map_err(|e| format!("checkpoint: {e}"))?;
    apply(backend.as_ref(), &mut model, &after).await?;
    coordinator
        .restore(taken.id)
        .await
        .map_err(|e| format!("restore: {e}"))?;

    let (inside, outside): (Vec<_>, Vec<_>) = (
        at_checkpoint.scan(&prefix),
        model
            .scan(b"")
            .into_iter()
            .filter(|(k, _)| !k.starts_with(&prefix))
            .collect(),
    );
    let mut want: Vec<(Vec<u8>, Vec<u8>)> = inside.into_iter().chain(outside).collect();
    want.sort();
    let mut got: Vec<(Vec<u8>, Vec<u8>)> = state_core::stream::try_collect(backend.export(b""))
        .await
        .map_err(|e| format!("export: {e}"))?
        .into_iter()
        .map(|e| (e.key.to_vec(), e.value.to_vec()))
        .collect();
    got.sort();
    if got != want {
        return Err(format!(
            "after the restore the backend holds {got:?}, the model {want:?}"
        ));
    }
    for (key, _) in &want {
        let slot_ttl = if key.starts_with(&prefix) {
            at_checkpoint.ttl(key)
        } else {
            model.ttl(key)
        };
        let ttl = backend.ttl(key).await.map_err(|e| format!("ttl: {e}"))?;
        let fits = match (slot_ttl, ttl) {
            (Some(None), Ttl::Persistent) => true,
            (Some(Some(most)), Ttl::Remaining(left)) => left <= most,
            _ => false,
        };
        if !fits {
            return Err(format!(
                "{key:?}: the model's TTL {slot_ttl:?}, the backend's {ttl:?}"
            ));
        }
    }
    Ok(())
}

fn strategy() -> impl Strategy<Value = (Vec<Op>, Vec<Op>, Vec<u8>)> {
    let prefixes = vec![Vec::new(), b"a".to_vec(), vec![0xff]];
    (ops(), ops(), select(prefixes))
}

fn run(kind: Kind) {
    let factory =
        testing::harness::factory(move |ns: String| async move { support::open(kind, &ns).await });
    testing::model::check(
        "checkpoint_restore_matches_model",
        factory,
        strategy(),
        |input| format!("{input:#?}"),
        restore_matches_model,
    );
}

#[test]
fn memory_restore_matches_model() {
    run(Kind::Memory);
}

#[test]
fn redb_restore_matches_model() {
    run(Kind::Redb);
}

#[test]
fn redis_restore_matches_model() {
    run(Kind::Redis);
}

#[test]
fn postgres_restore_matches_model() {
    run(Kind::Postgres);
}
