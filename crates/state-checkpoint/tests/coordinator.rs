//! The coordinator on one process: checkpoint and restore, the key prefix, expiry, the
//! schedule and its failures, one checkpoint at a time, shutdown, retention and the sweep.

mod support;

use std::sync::Arc;
use std::time::Duration;

use state_checkpoint::{
    CheckpointCoordinator, CheckpointId, CheckpointOptions, CheckpointStore, DirStore, MemoryStore,
    NO_LOCK_TOKEN,
};
use state_core::{Entry, ErrorKind, MemoryBackend, StateBackend, stream};
use support::{Gate, assert_same, churn, eventually, outside, seed, state, under};

const SLACK: Duration = Duration::from_millis(2);
const WAIT: Duration = Duration::from_secs(20);

fn coordinator(
    backend: Arc<dyn StateBackend>,
    store: Arc<dyn CheckpointStore>,
    options: CheckpointOptions,
) -> CheckpointCoordinator {
    CheckpointCoordinator::new(backend, store, options).expect("a coordinator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_brings_back_the_state_at_the_checkpoint() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(dir.path()).expect("dir store"));
    let c = coordinator(backend.clone(), store, CheckpointOptions::new());

    seed(backend.as_ref(), "k:", 40, "a").await;
    backend
        .put_with_metadata(b"meta", b"m", serde_json::json!({"owner": "svc", "n": 3}))
        .await
        .expect("metadata");
    let at_checkpoint = state(backend.as_ref()).await;
    let taken = c.checkpoint_now().await.expect("checkpoint");
    assert_eq!(
        taken.id,
        CheckpointId {
            token: NO_LOCK_TOKEN,
            seq: 1
        }
    );
    assert_eq!(taken.entries, 41);
    assert!(taken.consistent, "memory exports are snapshots");
    assert_eq!(taken.source_backend, "memory");

    churn(backend.as_ref(), "k:").await;
    backend.put(b"later", b"x").await.expect("put");
    let restored = c.restore(taken.id).await.expect("restore");
    assert_eq!((restored.id, restored.entries), (taken.id, 41));
    assert!(restored.atomic && !restored.fell_back());
    assert_same(&state(backend.as_ref()).await, &at_checkpoint, SLACK);

    let stats = c.stats();
    assert_eq!((stats.completed, stats.failed), (1, 0));
    assert_eq!(stats.last_id, Some(taken.id));
    assert_eq!(stats.last_entries, Some(41));
    assert!(stats.last_bytes.is_some_and(|b| b > 0));
    assert!(stats.last_duration.is_some() && stats.last_success.is_some());
    assert!(!stats.in_progress);
    assert_eq!(stats.leader_token, Some(NO_LOCK_TOKEN));
    c.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_prefix_limits_the_checkpoint_and_the_restore() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let options = CheckpointOptions::new().with_key_prefix("in:");
    let c = coordinator(backend.clone(), Arc::new(MemoryStore::new()), options);
    seed(backend.as_ref(), "in:", 12, "a").await;
    seed(backend.as_ref(), "out:", 12, "a").await;
    let before = state(backend.as_ref()).await;
    let taken = c.checkpoint_now().await.expect("checkpoint");
    assert_eq!(taken.entries, 12, "only the keys under the prefix");

    churn(backend.as_ref(), "in:").await;
    churn(backend.as_ref(), "out:").await;
    let churned = state(backend.as_ref()).await;
    c.restore(taken.id).await.expect("restore");
    let after = state(backend.as_ref()).await;
    assert_same(&under(&after, b"in:"), &under(&before, b"in:"), SLACK);
    assert_same(&outside(&after, b"in:"), &outside(&churned, b"in:"), SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_of_other_keys_is_refused_and_changes_nothing() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let store = Arc::new(MemoryStore::new());
    let whole = coordinator(backend.clone(), store.clone(), CheckpointOptions::new());
    seed(backend.as_ref(), "in:", 3, "a").await;
    seed(backend.as_ref(), "out:", 3, "a").await;
    let taken = whole.checkpoint_now().await.expect("checkpoint");
    churn(backend.as_ref(), "in:").await;
    let churned = state(backend.as_ref()).await;

    let narrow = coordinator(
        backend.clone(),
        store.clone(),
        CheckpointOptions::new().with_key_prefix("in:"),
    );
    // The manifest says what the checkpoint covers: refused before anything is read.
    assert_eq!(taken.key_prefix.as_deref(), Some(&b""[..]));
    for err in [
        narrow.restore(taken.id).await.expect_err("another prefix"),
        narrow.verify(taken.id).await.expect_err("another prefix"),
    ] {
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
        let message = err.message();
        assert!(
            message.contains("taken under the key prefix b\"\"")
                && message.contains("restores the key prefix b\"in:\""),
            "{err}"
        );
    }
    assert_same(&state(backend.as_ref()).await, &churned, SLACK);

    // A manifest written before prefixes were recorded: each entry is checked instead.
    let name = format!("{}.manifest.json", taken.id);
    let mut old: serde_json::Value =
        serde_json::from_slice(&store.object(&name).expect("the manifest")).expect("json");
    old.as_object_mut()
        .expect("an object")
        .remove("key_prefix_hex");
    store.put_object(&name, serde_json::to_vec(&old).expect("json"));
    let err = narrow.restore(taken.id).await.expect_err("keys outside");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.message().contains("outside the key prefix"), "{err}");
    assert_same(&state(backend.as_ref()).await, &churned, SLACK);
    let unrecorded = whole
        .verify(taken.id)
        .await
        .expect("verify an old manifest");
    assert_eq!(unrecorded.key_prefix, None);
    let restored = whole
        .restore(taken.id)
        .await
        .expect("restore an old manifest");
    assert_eq!(restored.manifest.key_prefix, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_records_the_prefix_and_a_narrower_one_is_not_restored_wider() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let store = Arc::new(MemoryStore::new());
    let eu = coordinator(
        backend.clone(),
        store.clone(),
        CheckpointOptions::new().with_key_prefix("orders:eu:"),
    );
    seed(backend.as_ref(), "orders:eu:", 3, "a").await;
    seed(backend.as_ref(), "orders:us:", 3, "a").await;
    let taken = eu.checkpoint_now().await.expect("checkpoint");
    assert_eq!(taken.key_prefix.as_deref(), Some(&b"orders:eu:"[..]));
    assert_eq!(
        eu.verify(taken.id).await.expect("verify").key_prefix,
        taken.key_prefix
    );
    let restored = eu.restore(taken.id).await.expect("restore");
    assert_eq!(restored.manifest.key_prefix, taken.key_prefix);

    // Every key is under `orders:`, but restoring there would delete the `us` keys.
    let before = state(backend.as_ref()).await;
    let wider = coordinator(
        backend.clone(),
        store,
        CheckpointOptions::new().with_key_prefix("orders:"),
    );
    let err = wider.restore(taken.id).await.expect_err("a wider prefix");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.message().contains("orders:eu:"), "{err}");
    assert_same(&state(backend.as_ref()).await, &before, SLACK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_entries_are_not_revived() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let c = coordinator(
        backend.clone(),
        Arc::new(MemoryStore::new()),
        CheckpointOptions::new(),
    );
    backend
        .put_with_ttl(b"short", b"v", Duration::from_millis(200))
        .await
        .expect("put");
    backend.put(b"long", b"v").await.expect("put");
    let taken = c.checkpoint_now().await.expect("checkpoint");
    assert_eq!(taken.entries, 2, "taken while both lived");
    eventually("the short key to expire", WAIT, || async {
        backend.get(b"short").await.ok().flatten().is_none()
    })
    .await;
    backend.delete(b"long").await.expect("delete");
    let restored = c.restore(taken.id).await.expect("restore");
    assert_eq!(restored.entries, 1);
    assert_eq!(backend.get(b"short").await.expect("get"), None);
    assert!(backend.get(b"long").await.expect("get").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_checkpoints_keeps_going_after_failures_and_stops() {
    let memory: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let gate = Gate::new(usize::MAX);
    let backend = gate.wrap(memory.clone());
    let store = Arc::new(MemoryStore::new());
    let min_pause = Duration::from_millis(30);
    let options = CheckpointOptions::new()
        .with_interval(Duration::from_millis(10))
        .with_min_pause(min_pause)
        .with_keep(100);
    let c = coordinator(backend, store.clone(), options);
    seed(memory.as_ref(), "k:", 5, "a").await;
    c.start().expect("start");
    c.start().expect("a second start does nothing");
    eventually("two scheduled checkpoints", WAIT, || async {
        c.stats().completed >= 2
    })
    .await;

    gate.fail_exports(true);
    eventually("two failures", WAIT, || async { c.stats().failed >= 2 }).await;
    let stats = c.stats();
    assert!(
        stats
            .last_error
            .is_some_and(|e| e.contains("planted export failure"))
    );
    let completed = stats.completed;
    gate.fail_exports(false);
    eventually("the schedule to recover", WAIT, || async {
        c.stats().completed > completed
    })
    .await;
    c.shutdown().await.expect("shutdown");

    let stats = c.stats();
    assert!(!stats.in_progress);
    let listing = c.list().await.expect("list");
    assert_eq!(listing.valid.len() as u64, stats.completed);
    assert!(store.orphans().await.expect("orphans").is_empty());
    // Scheduled checkpoints are at least the minimum pause apart, start to start.
    for pair in listing.valid.windows(2) {
        let apart = pair[1].created_at_ms - pair[0].created_at_ms;
        assert!(
            u128::from(apart) + 1 >= min_pause.as_millis(),
            "{apart}ms apart"
        );
    }
    let err = c.checkpoint_now().await.expect_err("shut down");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(c.start().is_err());
    c.shutdown().await.expect("a second shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkpoint_at_a_time_and_the_second_waits() {
    let memory: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    seed(memory.as_ref(), "k:", 10, "a").await;
    let gate = Gate::new(3);
    let store = Arc::new(MemoryStore::new());
    let c = Arc::new(coordinator(
        gate.wrap(memory.clone()),
        store.clone(),
        CheckpointOptions::new(),
    ));
    let first = tokio::spawn({
        let c = c.clone();
        async move { c.checkpoint_now().await }
    });
    gate.reached().await;
    assert!(c.stats().in_progress);
    let second = tokio::spawn({
        let c = c.clone();
        async move { c.checkpoint_now().await }
    });
    // However long the first is held, the second does not start beside it.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let writing = store
        .object_names()
        .iter()
        .filter(|n| n.contains(".tmp-"))
        .count();
    assert_eq!(writing, 1, "{:?}", store.object_names());
    assert!(!second.is_finished());
    gate.open();
    let first = first.await.expect("join").expect("first");
    let second = second.await.expect("join").expect("second");
    assert_eq!((first.id.seq, second.id.seq), (1, 2));
    assert_eq!(c.stats().completed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_aborts_a_stuck_checkpoint_leaving_only_an_orphan() {
    let memory: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    seed(memory.as_ref(), "k:", 10, "a").await;
    let gate = Gate::new(3);
    let store = Arc::new(MemoryStore::new());
    let options = CheckpointOptions::new()
        .with_interval(Duration::from_millis(5))
        .with_shutdown_timeout(Duration::from_millis(100));
    let c = coordinator(gate.wrap(memory), store.clone(), options);
    c.start().expect("start");
    gate.reached().await;
    c.shutdown().await.expect("shutdown");
    assert!(c.list().await.expect("list").valid.is_empty());
    assert_eq!(store.orphans().await.expect("orphans").len(), 1);
    let stats = c.stats();
    assert_eq!(
        (stats.completed, stats.failed, stats.in_progress),
        (0, 1, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_the_newest_and_the_sweep_waits_out_its_grace() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(dir.path()).expect("dir store"));
    let options = CheckpointOptions::new().with_keep(2);
    let c = coordinator(backend.clone(), store.clone(), options.clone());
    let mut ids = Vec::new();
    for i in 0..5 {
        backend
            .put(b"k", format!("{i}").as_bytes())
            .await
            .expect("put");
        ids.push(c.checkpoint_now().await.expect("checkpoint").id);
    }
    let kept = listed(&c).await;
    assert_eq!(kept, ids[3..].to_vec());
    assert_eq!(c.stats().deleted, 3);

    // keep(1) never deletes the newest.
    let one = coordinator(backend.clone(), store.clone(), options.clone().with_keep(1));
    let cleanup = one.cleanup().await.expect("cleanup");
    assert_eq!(cleanup.deleted, vec![ids[3]]);
    let kept = listed(&c).await;
    assert_eq!(kept, vec![ids[4]]);

    // An orphan younger than the grace period stays; with no grace it goes.
    let orphan = CheckpointId {
        token: NO_LOCK_TOKEN,
        seq: 50,
    };
    let entries = vec![Ok(Entry::new("x", "y"))];
    let (chunks, _) = state_checkpoint::encode(stream::iter(entries), Default::default());
    store
        .write_data(orphan, chunks)
        .await
        .expect("plant an orphan");
    let cleanup = c.cleanup().await.expect("cleanup");
    assert!(cleanup.swept.is_empty());
    assert_eq!(store.orphans().await.expect("orphans").len(), 1);
    // The orphan's id is not reused.
    assert_eq!(c.checkpoint_now().await.expect("checkpoint").id.seq, 51);
    let eager = coordinator(
        backend.clone(),
        store.clone(),
        options.with_orphan_grace(Duration::ZERO),
    );
    assert_eq!(eager.cleanup().await.expect("cleanup").swept, vec![orphan]);
    assert!(store.orphans().await.expect("orphans").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cleanups_tolerate_files_already_deleted() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(DirStore::open(dir.path()).expect("dir store"));
    let many = coordinator(
        backend.clone(),
        store.clone(),
        CheckpointOptions::new().with_keep(100),
    );
    for _ in 0..6 {
        many.checkpoint_now().await.expect("checkpoint");
    }
    let options = CheckpointOptions::new().with_keep(2);
    let a = coordinator(backend.clone(), store.clone(), options.clone());
    let b = coordinator(backend.clone(), store.clone(), options);
    let (x, y) = tokio::join!(a.cleanup(), b.cleanup());
    let (x, y) = (x.expect("cleanup a"), y.expect("cleanup b"));
    assert!(x.deleted.len() + y.deleted.len() >= 4);
    assert_eq!(many.list().await.expect("list").valid.len(), 2);
    // A data file removed by hand: its checkpoint is listed invalid, never restored.
    let newest = many.list().await.expect("list").valid[1].id;
    std::fs::remove_file(dir.path().join(format!("{newest}.data"))).expect("remove");
    let restored = many.restore_latest().await.expect("restore latest");
    assert!(restored.id < newest);
    assert_eq!(restored.skipped.len(), 1);
}

/// The ids of the valid checkpoints `c` lists, oldest first.
async fn listed(c: &CheckpointCoordinator) -> Vec<CheckpointId> {
    c.list()
        .await
        .expect("list")
        .valid
        .iter()
        .map(|m| m.id)
        .collect()
}
