//! Group commit with the writer thread held busy, so that which calls share a group is
//! known exactly: every call queued while the writer is plugged forms the next group.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use state_core::{ErrorKind, FencingToken, StateBackend, StateError};
use tokio::task::JoinHandle;

use super::MAX_GROUP;
use crate::store::{SWEEP_BATCH, Store};
use crate::tables::EXPIRY;
use crate::{Durability, RedbBackend, RedbConfig, record};

type TestResult = Result<(), Box<dyn Error>>;

/// Bounds every wait of these tests.
const DEADLINE: Duration = Duration::from_secs(30);

fn open() -> Result<(tempfile::TempDir, RedbBackend), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let backend = RedbBackend::open(dir.path().join("group.redb"))?;
    Ok((dir, backend))
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) -> TestResult {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > DEADLINE {
            return Err(format!("timed out waiting until {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

/// A write call that holds the writer thread until released: whatever is queued meanwhile
/// forms the next group.
struct Plug {
    release: std::sync::mpsc::Sender<()>,
    call: JoinHandle<state_core::Result<()>>,
}

impl Plug {
    async fn insert(store: &Arc<Store>) -> Result<Plug, Box<dyn Error>> {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let started = Arc::new(AtomicBool::new(false));
        let flag = started.clone();
        let store = store.clone();
        let call = tokio::spawn(async move {
            store
                .write(0, move |_| {
                    flag.store(true, Ordering::SeqCst);
                    released
                        .recv_timeout(DEADLINE)
                        .map_err(|_| StateError::invalid_input("the plug was never released"))
                })
                .await
        });
        wait_until("the plug runs", || started.load(Ordering::SeqCst)).await?;
        Ok(Plug { release, call })
    }

    async fn release(self) -> TestResult {
        self.release.send(())?;
        Ok(self.call.await??)
    }
}

/// Spawns `call` and waits until it is queued, so that calls queue in the order spawned.
async fn queue<T: Send + 'static>(
    backend: &RedbBackend,
    call: impl Future<Output = T> + Send + 'static,
) -> Result<JoinHandle<T>, Box<dyn Error>> {
    let before = backend.store().queued();
    let handle = tokio::spawn(call);
    wait_until("the call is queued", || {
        backend.store().queued() == before + 1
    })
    .await?;
    Ok(handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_queued_behind_a_busy_writer_commit_in_groups_of_at_most_max_group() -> TestResult {
    let (_dir, backend) = open()?;
    let plug = Plug::insert(backend.store()).await?;
    let n = MAX_GROUP + 44;
    let mut calls = Vec::new();
    for i in 0..n {
        let b = backend.clone();
        let key = u32::try_from(i)?.to_be_bytes();
        calls.push(tokio::spawn(async move { b.put(&key, b"v").await }));
    }
    wait_until("every call is queued", || backend.store().queued() == n).await?;
    plug.release().await?;
    for call in calls {
        call.await??;
    }
    assert_eq!(backend.count(b"").await?, u64::try_from(n)?);
    let stats = backend.write_stats();
    // The plug, then one full group and the rest.
    assert_eq!(stats.calls, u64::try_from(n + 1)?, "{stats:?}");
    assert_eq!(stats.commits, 3, "{stats:?}");
    assert_eq!(stats.split_groups, 0, "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_runs_its_calls_in_arrival_order() -> TestResult {
    let (_dir, backend) = open()?;
    let plug = Plug::insert(backend.store()).await?;
    let b = backend.clone();
    let put = queue(&backend, async move { b.put(b"k", b"1").await }).await?;
    let b = backend.clone();
    let swap = queue(&backend, async move {
        b.compare_and_swap(b"k", Some(b"1"), b"2").await
    })
    .await?;
    let b = backend.clone();
    let taken = queue(&backend, async move { b.get_and_delete(b"k").await }).await?;
    let b = backend.clone();
    let last = queue(&backend, async move { b.put(b"k", b"3").await }).await?;
    plug.release().await?;
    put.await??;
    assert!(swap.await??, "the swap runs after the put");
    assert_eq!(taken.await??.as_deref(), Some(&b"2"[..]));
    last.await??;
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"3"[..]));
    let stats = backend.write_stats();
    assert_eq!((stats.calls, stats.commits), (5, 2), "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_call_fails_alone_and_the_rest_of_its_group_commits_in_order() -> TestResult {
    let (_dir, backend) = open()?;
    backend
        .put_fenced(b"fenced", b"token 10", FencingToken(10))
        .await?;
    backend.put(b"swap", b"old").await?;
    let plug = Plug::insert(backend.store()).await?;

    // One group, in this order.
    let b = backend.clone();
    let first = queue(&backend, async move { b.put(b"order", b"1").await }).await?;
    let b = backend.clone();
    let stale = queue(&backend, async move {
        b.put_fenced(b"fenced", b"token 5", FencingToken(5)).await
    })
    .await?;
    let store = backend.store().clone();
    let rec = record::encode(None, None, b"must be rolled back")?;
    let undone = queue(&backend, async move {
        store
            .write(SWEEP_BATCH, move |w| {
                w.put(b"undone", &rec, None)?;
                Err::<(), _>(StateError::invalid_input("this call fails after writing"))
            })
            .await
    })
    .await?;
    let b = backend.clone();
    let swapped = queue(&backend, async move {
        b.compare_and_swap(b"swap", Some(b"old"), b"new").await
    })
    .await?;
    let b = backend.clone();
    let second = queue(&backend, async move { b.put(b"order", b"2").await }).await?;
    let b = backend.clone();
    let lost = queue(&backend, async move {
        b.compare_and_swap(b"swap", Some(b"old"), b"newer").await
    })
    .await?;
    plug.release().await?;

    first.await??;
    let stale = stale.await?.err().map(|e| e.kind());
    assert_eq!(stale, Some(ErrorKind::Fenced));
    let undone = undone.await?.err().map(|e| e.kind());
    assert_eq!(undone, Some(ErrorKind::InvalidInput));
    assert!(swapped.await??, "the first compare-and-swap must win");
    second.await??;
    assert!(
        !lost.await??,
        "the second compare-and-swap runs after the first"
    );

    assert_eq!(backend.get(b"order").await?.as_deref(), Some(&b"2"[..]));
    assert_eq!(
        backend.get(b"fenced").await?.as_deref(),
        Some(&b"token 10"[..])
    );
    assert_eq!(backend.get(b"undone").await?, None, "a failed call's write");
    assert_eq!(backend.get(b"swap").await?.as_deref(), Some(&b"new"[..]));
    let stats = backend.write_stats();
    assert_eq!(stats.split_groups, 1, "{stats:?}");
    // Two set-up writes and the plug, then the group of six: four commit one by one.
    assert_eq!((stats.calls, stats.commits), (9, 7), "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_abandoned_before_its_group_starts_is_skipped() -> TestResult {
    let (_dir, backend) = open()?;
    let plug = Plug::insert(backend.store()).await?;
    let mut abandoned = backend.put(b"abandoned", b"v");
    // One poll queues the call; the writer is busy, so it cannot be answered yet.
    tokio::select! {
        biased;
        answered = &mut abandoned => {
            return Err(format!("answered while the writer was busy: {answered:?}").into());
        }
        () = std::future::ready(()) => {}
    }
    assert_eq!(backend.store().queued(), 1);
    drop(abandoned);
    let b = backend.clone();
    let kept = queue(&backend, async move { b.put(b"kept", b"v").await }).await?;
    plug.release().await?;
    kept.await??;
    assert_eq!(backend.get(b"abandoned").await?, None);
    assert!(backend.get(b"kept").await?.is_some());
    let stats = backend.write_stats();
    assert_eq!((stats.calls, stats.abandoned), (2, 1), "{stats:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_handle_dropped_with_calls_queued_closes_the_file() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("group.redb");
    let backend = RedbBackend::open(&path)?;
    backend.put(b"acknowledged", b"v").await?;
    let plug = Plug::insert(backend.store()).await?;
    for i in 0..10u8 {
        let key = [i];
        let mut call = backend.put(&key, b"v");
        tokio::select! {
            biased;
            _ = &mut call => return Err("answered while the writer was busy".into()),
            () = std::future::ready(()) => {}
        }
    }
    assert_eq!(backend.store().queued(), 10);
    // The plug's call holds the last reference: the store drops (and joins the writer,
    // which must get through the queue and exit) when it returns.
    drop(backend);
    tokio::time::timeout(DEADLINE, plug.release())
        .await
        .map_err(|_| "dropping the store hung")??;
    // Another durability than before: refused while the old store is still open.
    let reopened = RedbConfig::new(&path)
        .durability(Durability::eventual())
        .open()?;
    assert!(reopened.get(b"acknowledged").await?.is_some());
    assert_eq!(reopened.count(b"").await?, 1, "abandoned calls are skipped");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_of_the_group_transaction_is_every_call_error() -> TestResult {
    let (_dir, backend) = open()?;
    // A damaged expiry index entry, which the sweep of the next group's transaction meets
    // once an expiry is due: the transaction fails, whichever call came first.
    let txn = backend.store().db.begin_write()?;
    txn.open_table(EXPIRY)?.insert(&[0u8; 3][..], ())?;
    txn.commit()?;
    backend
        .put_with_ttl(b"soon", b"v", Duration::from_millis(50))
        .await?;
    testing::clock::sleep_past(Duration::from_millis(100)).await;

    let plug = Plug::insert(backend.store()).await?;
    let mut calls = Vec::new();
    for key in [&b"a"[..], b"b", b"c"] {
        let b = backend.clone();
        calls.push(queue(&backend, async move { b.put(key, b"v").await }).await?);
    }
    plug.release().await?;
    for call in calls {
        let err = call
            .await?
            .err()
            .ok_or("a put of the failed group succeeded")?;
        assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
        assert!(err.to_string().contains("expiry index"), "{err}");
    }
    for key in [&b"a"[..], b"b", b"c"] {
        assert_eq!(backend.get(key).await?, None);
    }
    let stats = backend.write_stats();
    assert_eq!((stats.commits, stats.split_groups), (2, 0), "{stats:?}");
    Ok(())
}
