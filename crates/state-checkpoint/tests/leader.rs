//! Leader-only checkpoints: two coordinators on one store and one lock; a stale leader's
//! checkpoint never becomes the latest; a leader killed mid-checkpoint leaves only an
//! orphan, which the sweep removes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use state_checkpoint::{
    CheckpointCoordinator, CheckpointId, CheckpointOptions, CheckpointStore, Compression, Manifest,
    MemoryStore, encode,
};
use state_core::layer::LockLayered;
use state_core::{DistributedLock, ErrorKind, MemoryBackend, StateBackend, stream};
use state_lock::MemoryLock;
use support::{Gate, RefuseExtends, eventually, seed, until_ok};

const WAIT: Duration = Duration::from_secs(20);

fn options(lock: &Arc<dyn DistributedLock>) -> CheckpointOptions {
    CheckpointOptions::new()
        .with_lock(lock.clone())
        .with_lock_name("checkpoints")
        .with_lock_ttl(Duration::from_millis(300))
        .with_interval(Duration::from_millis(20))
        .with_min_pause(Duration::ZERO)
        .with_keep(1000)
}

fn coordinator(
    backend: &Arc<dyn StateBackend>,
    store: &Arc<MemoryStore>,
    options: CheckpointOptions,
) -> Arc<CheckpointCoordinator> {
    let store: Arc<dyn CheckpointStore> = store.clone();
    Arc::new(CheckpointCoordinator::new(backend.clone(), store, options).expect("coordinator"))
}

async fn latest(store: &MemoryStore) -> Option<CheckpointId> {
    store
        .manifests()
        .await
        .expect("list")
        .latest()
        .map(|m| m.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lock_holder_writes_and_a_successor_takes_over() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    seed(backend.as_ref(), "k:", 10, "a").await;
    let store = Arc::new(MemoryStore::new());
    let lock: Arc<dyn DistributedLock> = Arc::new(MemoryLock::new());
    let a = coordinator(&backend, &store, options(&lock));
    let b = coordinator(&backend, &store, options(&lock));

    let first = a.checkpoint_now().await.expect("a leads");
    let err = b.checkpoint_now().await.expect_err("b follows");
    assert_eq!(err.kind(), ErrorKind::NotOwner, "{err}");
    assert_eq!(a.stats().leader_token, Some(first.id.token));
    assert_eq!(b.stats().leader_token, None);

    a.start().expect("start a");
    b.start().expect("start b");
    eventually("a's schedule", WAIT, || async { a.stats().completed >= 3 }).await;
    assert_eq!((b.stats().completed, b.stats().failed), (0, 0));
    let names = store.object_names();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with(&format!("{:020}-", first.id.token))),
        "only a's token: {names:?}"
    );

    // A steps down: B takes the lock at its next try, under a higher token.
    a.shutdown().await.expect("shutdown a");
    let a_done = a.stats().completed;
    eventually("b to take over", WAIT, || async {
        b.stats().completed >= 1
    })
    .await;
    let b_token = b.stats().leader_token.expect("b leads");
    assert!(b_token > first.id.token);
    assert_eq!(latest(&store).await.map(|id| id.token), Some(b_token));
    assert_eq!(
        a.stats().completed,
        a_done,
        "a wrote nothing after shutdown"
    );
    b.shutdown().await.expect("shutdown b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_leader_never_becomes_latest() {
    let backend: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    seed(backend.as_ref(), "k:", 10, "a").await;
    let store = Arc::new(MemoryStore::new());
    // Two lock services whose tokens differ stand for an old leader and a new one.
    let old: Arc<dyn DistributedLock> = Arc::new(MemoryLock::new());
    let new: Arc<dyn DistributedLock> = Arc::new(MemoryLock::new());
    for _ in 0..3 {
        let guard = new
            .try_acquire("checkpoints", Duration::from_secs(1))
            .await
            .expect("acquire")
            .expect("free");
        new.release(guard).await.expect("release");
    }
    let newer = coordinator(&backend, &store, options(&new));
    let stale = coordinator(&backend, &store, options(&old));
    let taken = newer.checkpoint_now().await.expect("the new leader");
    assert_eq!(taken.id.token, 4);

    // The stale leader sees the newer token in the store and writes nothing.
    let err = stale.checkpoint_now().await.expect_err("stale");
    assert_eq!(err.kind(), ErrorKind::Fenced, "{err}");
    assert_eq!(store.object_names().len(), 2, "{:?}", store.object_names());

    // Even a late commit by the stale leader (after the new one's, by the clock) is not
    // the latest: the store orders by token.
    let late = CheckpointId { token: 1, seq: 99 };
    let (chunks, summary) = encode(stream::iter(Vec::new()), Compression::Lz4);
    store.write_data(late, chunks).await.expect("write");
    let summary = summary.get().expect("summary");
    let manifest = Manifest::new(late, &summary, Compression::Lz4, "memory", true);
    assert!(store.commit(&manifest).await.expect("commit"));
    assert_eq!(latest(&store).await, Some(taken.id));
    let restored = stale.restore_latest().await.expect("restore");
    assert_eq!(restored.id, taken.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_mid_checkpoint_commits_nothing() {
    let memory: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    seed(memory.as_ref(), "k:", 10, "a").await;
    let store = Arc::new(MemoryStore::new());
    let refuse = RefuseExtends::default();
    let shared: Arc<dyn DistributedLock> = Arc::new(MemoryLock::new());
    let flaky: Arc<dyn DistributedLock> =
        Arc::new(LockLayered::new(refuse.clone(), shared.clone()));
    let gate = Gate::new(3);
    let a = coordinator(&gate.wrap(memory.clone()), &store, options(&flaky));
    let b = coordinator(&memory, &store, options(&shared));

    let held = tokio::spawn({
        let a = a.clone();
        async move { a.checkpoint_now().await }
    });
    gate.reached().await;
    let a_token = a.stats().leader_token.expect("a leads");
    refuse.trip();
    eventually("a to learn it lost the lease", WAIT, || async {
        a.stats().leader_token.is_none()
    })
    .await;
    let taken = until_ok("b to lead once a's lease ran out", WAIT, || {
        b.checkpoint_now()
    })
    .await;
    assert!(taken.id.token > a_token);

    gate.open();
    let err = held.await.expect("join").expect_err("a must not commit");
    assert_eq!(err.kind(), ErrorKind::NotOwner, "{err}");
    let listing = store.manifests().await.expect("list");
    assert_eq!(
        listing.valid.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![taken.id]
    );
    assert!(
        store.orphans().await.expect("orphans").is_empty(),
        "a's data was removed"
    );
    assert_eq!(a.stats().failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_mid_checkpoint_leaves_an_orphan_that_is_swept() {
    let memory: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    seed(memory.as_ref(), "k:", 10, "a").await;
    let store = Arc::new(MemoryStore::new());
    let lock: Arc<dyn DistributedLock> = Arc::new(MemoryLock::new());
    let gate = Gate::new(3);
    let a = coordinator(&gate.wrap(memory.clone()), &store, options(&lock));

    let killed = tokio::spawn({
        let a = a.clone();
        async move { a.checkpoint_now().await }
    });
    gate.reached().await;
    killed.abort();
    assert!(killed.await.is_err_and(|e| e.is_cancelled()));
    drop(a); // the process is gone: its lease is released, or runs out

    let listing = store.manifests().await.expect("list");
    assert!(listing.valid.is_empty() && listing.invalid.is_empty());
    let orphans = store.orphans().await.expect("orphans");
    assert_eq!(orphans.len(), 1);
    let orphan = orphans[0].0;

    let b = coordinator(
        &memory,
        &store,
        options(&lock).with_orphan_grace(Duration::ZERO),
    );
    let taken = until_ok("b to lead", WAIT, || b.checkpoint_now()).await;
    assert!(taken.id > orphan);
    assert!(store.orphans().await.expect("orphans").is_empty());
    assert_eq!(b.stats().swept, 1);
    let listing = store.manifests().await.expect("list");
    assert_eq!(
        listing.valid.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![taken.id]
    );
    b.shutdown().await.expect("shutdown");
}
