//! The snapshots point reads keep: dropped by the next commit, never older than a write
//! acknowledged before the read began, and gone before the file closes.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use state_core::StateBackend;

use crate::RedbBackend;

type TestResult = Result<(), Box<dyn Error>>;

fn open() -> Result<(tempfile::TempDir, RedbBackend), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let backend = RedbBackend::open(dir.path().join("snapshots.redb"))?;
    Ok((dir, backend))
}

fn kept(backend: &RedbBackend) -> usize {
    backend.store().core_snapshots().kept()
}

#[tokio::test]
async fn a_read_keeps_a_snapshot_and_the_next_commit_drops_it() -> TestResult {
    let (dir, backend) = open()?;
    backend.put(b"k", b"one").await?;
    assert_eq!(kept(&backend), 0, "a write keeps no snapshot");
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"one"[..]));
    assert_eq!(kept(&backend), 1, "the read kept its snapshot");
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"one"[..]));
    assert_eq!(kept(&backend), 1, "the second read used the same snapshot");

    backend.put(b"k", b"two").await?;
    assert_eq!(kept(&backend), 0, "the commit dropped the kept snapshot");
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"two"[..]));
    let got = backend.batch_get(&[&b"k"[..], &b"missing"[..]]).await?;
    assert_eq!(got, vec![Some(b"two".to_vec().into()), None]);
    assert_eq!(backend.ttl(b"k").await?, state_core::Ttl::Persistent);
    assert_eq!(kept(&backend), 1);

    // The file closes with the snapshot still kept, and opens again.
    let path = dir.path().join("snapshots.redb");
    drop(backend);
    let again = RedbBackend::open(&path)?;
    assert_eq!(again.get(b"k").await?.as_deref(), Some(&b"two"[..]));
    Ok(())
}

/// A writer bumps a counter key and publish each value once its write returned; readers on
/// other threads must never see less than what was published before their read began, nor
/// see the counter go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_sees_every_write_acknowledged_before_it_began() -> TestResult {
    const WRITES: u64 = 400;
    let (_dir, backend) = open()?;
    let backend = Arc::new(backend);
    let acked = Arc::new(AtomicU64::new(0));
    backend.put(b"counter", &0u64.to_be_bytes()).await?;

    let writer = {
        let (backend, acked) = (backend.clone(), acked.clone());
        tokio::spawn(async move {
            for n in 1..=WRITES {
                backend.put(b"counter", &n.to_be_bytes()).await?;
                acked.store(n, Ordering::SeqCst);
            }
            Ok::<_, state_core::StateError>(())
        })
    };
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (backend, acked) = (backend.clone(), acked.clone());
        readers.push(tokio::spawn(async move {
            let mut last = 0;
            while last < WRITES {
                let floor = acked.load(Ordering::SeqCst);
                let value = backend
                    .get(b"counter")
                    .await
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                let seen = u64::from_be_bytes(<[u8; 8]>::try_from(&value[..]).unwrap_or([0; 8]));
                if seen < floor || seen < last {
                    return Err(format!(
                        "read {seen} after {floor} was acknowledged and {last} was read"
                    ));
                }
                last = seen;
                tokio::task::yield_now().await;
            }
            Ok(())
        }));
    }
    writer.await??;
    for reader in readers {
        reader.await?.map_err(|e| -> Box<dyn Error> { e.into() })?;
    }
    Ok(())
}
