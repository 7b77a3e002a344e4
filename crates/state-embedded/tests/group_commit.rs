//! Group commit under real concurrency: every acknowledged write is there afterwards, in an
//! order consistent with when the calls were made; writes outside a runtime; dropping the
//! last handle while writes are in flight.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use state_core::{ErrorKind, FencingToken, StateBackend};
use state_embedded::{Durability, RedbBackend, RedbConfig};
use testing::conformance::runtime;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TASKS: usize = 32;
const ROUNDS: usize = 40;
/// Bounds every wait on a thread that might hang.
const DEADLINE: Duration = Duration::from_secs(60);

/// One write to the hot key: its value and when the call was made and answered.
struct Timed {
    value: Vec<u8>,
    start: Instant,
    end: Instant,
}

async fn writer_task(
    backend: RedbBackend,
    task: usize,
    hot: Arc<Mutex<Vec<Timed>>>,
) -> Result<(), state_core::StateError> {
    for round in 0..ROUNDS {
        let own = format!("own:{task}:{round}");
        backend.put(own.as_bytes(), b"v").await?;
        // Answered means committed: a read right after sees it.
        let seen = backend.get(own.as_bytes()).await?;
        assert_eq!(seen.as_deref(), Some(&b"v"[..]), "{own} after its put");
        backend
            .put(
                format!("last:{task}").as_bytes(),
                round.to_string().as_bytes(),
            )
            .await?;
        let value = format!("{task}:{round}").into_bytes();
        let start = Instant::now();
        backend.put(b"hot", &value).await?;
        let end = Instant::now();
        hot.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Timed { value, start, end });
        if round % 10 == 0 {
            let keys: Vec<String> = (0..10)
                .map(|j| format!("batch:{task}:{round}:{j}"))
                .collect();
            let entries: Vec<(&[u8], &[u8])> =
                keys.iter().map(|k| (k.as_bytes(), &b"b"[..])).collect();
            backend.batch_put(&entries).await?;
            // A counter every task increments: a compare-and-swap grouped after another
            // one of the same key must see that one's write.
            loop {
                let current = backend.get(b"counter").await?;
                let n: u64 = match current.as_deref() {
                    None => 0,
                    Some(bytes) => std::str::from_utf8(bytes)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("counter holds {bytes:?}")),
                };
                let next = (n + 1).to_string();
                if backend
                    .compare_and_swap(b"counter", current.as_deref(), next.as_bytes())
                    .await?
                {
                    break;
                }
            }
        }
    }
    Ok(())
}

fn concurrent_writers(durability: Durability) -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("group.redb");
    runtime().block_on(async {
        let backend = RedbConfig::new(&path).durability(durability).open()?;
        let hot = Arc::new(Mutex::new(Vec::new()));
        let tasks: Vec<_> = (0..TASKS)
            .map(|t| tokio::spawn(writer_task(backend.clone(), t, hot.clone())))
            .collect();
        for task in tasks {
            task.await??;
        }

        let puts = TASKS * ROUNDS;
        let batches = TASKS * ROUNDS.div_ceil(10);
        assert_eq!(backend.count(b"own:").await?, u64::try_from(puts)?);
        assert_eq!(
            backend.count(b"batch:").await?,
            u64::try_from(batches * 10)?
        );
        for t in 0..TASKS {
            let last = backend.get(format!("last:{t}").as_bytes()).await?;
            let expected = (ROUNDS - 1).to_string();
            assert_eq!(last.as_deref(), Some(expected.as_bytes()), "last:{t}");
        }
        let counter = backend.get(b"counter").await?;
        assert_eq!(counter.as_deref(), Some(batches.to_string().as_bytes()));

        // The hot key holds the value of a write that no other write followed entirely:
        // a write answered before another was made must not win over it.
        let hot = std::mem::take(&mut *hot.lock().unwrap_or_else(PoisonError::into_inner));
        let value = backend.get(b"hot").await?.ok_or("the hot key is missing")?;
        let winner = hot
            .iter()
            .find(|w| w.value == value)
            .ok_or("the hot key holds a value nobody wrote")?;
        let later = hot.iter().find(|w| w.start > winner.end);
        assert!(
            later.is_none(),
            "{:?} was answered before {:?} was written, yet won",
            String::from_utf8_lossy(&winner.value),
            later.map(|w| String::from_utf8_lossy(&w.value))
        );

        let stats = backend.write_stats();
        assert!(
            stats.calls >= u64::try_from(puts * 3 + batches * 2)?,
            "{stats:?}"
        );
        assert!(stats.commits < stats.calls, "no group formed: {stats:?}");
        assert_eq!(stats.split_groups, 0, "{stats:?}");
        drop(backend);

        // And all of it is in the file.
        let backend = RedbConfig::new(&path).durability(durability).open()?;
        assert_eq!(backend.count(b"own:").await?, u64::try_from(puts)?);
        Ok(())
    })
}

#[test]
fn concurrent_writers_are_grouped_and_every_acknowledged_write_stays_immediate() -> TestResult {
    concurrent_writers(Durability::Immediate)
}

#[test]
fn concurrent_writers_are_grouped_and_every_acknowledged_write_stays_eventual() -> TestResult {
    concurrent_writers(Durability::Eventual {
        flush_interval: Duration::from_millis(50),
    })
}

/// Drives a future on this thread, with no runtime anywhere.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[test]
fn writes_work_outside_any_runtime() -> TestResult {
    assert!(tokio::runtime::Handle::try_current().is_err());
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("group.redb");
    let backend = RedbBackend::open(&path)?;
    block_on(backend.put_fenced(b"fenced", b"high", FencingToken(10)))?;
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let backend = backend.clone();
            std::thread::spawn(move || -> Result<(), state_core::StateError> {
                for i in 0..50u8 {
                    block_on(backend.put(&[t, i], b"v"))?;
                }
                let fenced = block_on(backend.put_fenced(b"fenced", b"low", FencingToken(1)));
                assert_eq!(fenced.err().map(|e| e.kind()), Some(ErrorKind::Fenced));
                assert!(block_on(backend.set_if_not_exists(&[t], b"once", None))?);
                Ok(())
            })
        })
        .collect();
    for thread in threads {
        thread.join().map_err(|_| "a writing thread panicked")??;
    }
    block_on(backend.sync())?;
    assert_eq!(block_on(backend.count(b""))?, 4 * 50 + 4 + 1);
    assert_eq!(
        block_on(backend.get(b"fenced"))?.as_deref(),
        Some(&b"high"[..])
    );
    drop(backend);
    let backend = RedbBackend::open(&path)?;
    assert_eq!(block_on(backend.count(b""))?, 4 * 50 + 4 + 1);
    Ok(())
}

/// Writes from many tasks, then shuts the runtime down while they are still writing: the
/// last handle drops with calls in flight. Returns the keys whose writes were answered.
fn write_then_shut_down(path: &Path) -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let runtime = runtime();
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let backend = runtime.block_on(async {
        RedbConfig::new(path)
            .durability(Durability::Eventual {
                flush_interval: Duration::from_secs(3600),
            })
            .open()
    })?;
    for t in 0..TASKS {
        let backend = backend.clone();
        let acknowledged = acknowledged.clone();
        runtime.spawn(async move {
            for i in 0u32.. {
                let key = format!("{t}:{i}").into_bytes();
                if backend.put(&key, b"v").await.is_err() {
                    return;
                }
                acknowledged
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(key);
            }
        });
    }
    drop(backend);
    std::thread::sleep(Duration::from_millis(200));
    // Cancels every task mid-call; the last one to drop its handle closes the store.
    drop(runtime);
    let keys = std::mem::take(&mut *acknowledged.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(keys)
}

#[test]
fn dropping_the_last_handle_with_writes_in_flight_keeps_every_acknowledged_write() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("group.redb");
    let (tx, rx) = mpsc::channel();
    let writing = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(write_then_shut_down(&writing).map_err(|e| e.to_string()));
    });
    let acknowledged = rx
        .recv_timeout(DEADLINE)
        .map_err(|_| "dropping the backend with writes in flight hung")??;
    assert!(!acknowledged.is_empty(), "no write was answered");

    // Another durability than before: refused if the old store were still open.
    let backend = RedbBackend::open(&path)?;
    let present = runtime().block_on(async {
        let mut present = HashMap::new();
        for key in &acknowledged {
            present.insert(key.clone(), backend.get(key).await?.is_some());
        }
        Ok::<_, state_core::StateError>(present)
    })?;
    let missing: Vec<_> = present
        .iter()
        .filter(|(_, here)| !**here)
        .map(|(k, _)| String::from_utf8_lossy(k))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes lost: {missing:?} of {}",
        acknowledged.len()
    );
    Ok(())
}
