//! What only an embedded file store has to show: persistence across reopen, absolute TTLs,
//! the bounded sweep, durability modes under a crash, and the one-process-per-file lock.
//!
//! Crash and lock tests run a second process: this test binary re-executed on the same test,
//! with an environment variable naming the child's role.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use state_core::stream::try_collect;
use state_core::{ErrorKind, Registry, StateBackend, Ttl};
use state_embedded::{Durability, RedbBackend, RedbConfig, SWEEP_BATCH};
use testing::clock::sleep_past;
use testing::conformance::runtime;

const ROLE: &str = "STATE_EMBEDDED_TEST_ROLE";
const FILE: &str = "STATE_EMBEDDED_TEST_FILE";
/// Bounds every wait on a child process.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
    let path = dir.path().join("nested").join("dir").join("state.redb");
    (dir, path)
}

#[test]
fn data_survives_drop_and_reopen_and_parent_dirs_are_created() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let backend = RedbBackend::open(&path)?;
        backend.put(b"k", b"v").await?;
        backend
            .put_with_metadata(b"m", b"x", serde_json::json!({"owner": "a"}))
            .await?;
        backend.with_prefix("other:").put(b"k", b"w").await?;
        drop(backend);

        let backend = RedbBackend::open(&path)?;
        assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v"[..]));
        let other = backend.with_prefix("other:");
        assert_eq!(other.get(b"k").await?.as_deref(), Some(&b"w"[..]));
        let exported = try_collect(backend.export(b"m")).await?;
        assert_eq!(
            exported.first().and_then(|e| e.metadata.clone()),
            Some(serde_json::json!({"owner": "a"}))
        );
        Ok(())
    })
}

#[test]
fn ttl_is_absolute_and_survives_reopen() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let backend = RedbBackend::open(&path)?;
        backend
            .put_with_ttl(b"long", b"v", Duration::from_secs(600))
            .await?;
        backend
            .put_with_ttl(b"short", b"v", Duration::from_millis(30))
            .await?;
        let before = try_collect(backend.export(b"long")).await?;
        drop(backend);
        // The short entry expires while the file is closed.
        sleep_past(Duration::from_millis(80)).await;

        let backend = RedbBackend::open(&path)?;
        let after = try_collect(backend.export(b"long")).await?;
        assert_eq!(after, before, "same absolute expiry after reopen");
        assert!(after.first().is_some_and(|e| e.expires_at.is_some()));
        match backend.ttl(b"long").await? {
            Ttl::Remaining(left) => assert!(left <= Duration::from_secs(600), "{left:?}"),
            other => panic!("expected a remaining TTL, got {other:?}"),
        }
        assert_eq!(backend.get(b"short").await?, None);
        assert_eq!(backend.ttl(b"short").await?, Ttl::Missing);
        assert_eq!(backend.stored_records().await?, 2, "not reclaimed yet");
        assert_eq!(backend.sweep_expired(10).await?, 1);
        assert_eq!(backend.stored_records().await?, 1);
        Ok(())
    })
}

#[test]
fn writes_sweep_expired_entries_in_bounded_batches() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        // Everything expires together: one batch under a default TTL.
        let ttl = Duration::from_secs(1);
        let expiring = RedbConfig::new(&path).default_ttl(ttl).open()?;
        let plain = RedbBackend::open(&path)?; // the same database, no default TTL
        let n = SWEEP_BATCH * 3 + 5;
        let keys: Vec<[u8; 4]> = (0..n as u32).map(u32::to_be_bytes).collect();
        let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &b"v"[..])).collect();
        expiring.batch_put(&entries).await?;
        // Overwritten without a TTL: the sweep must not take it.
        plain.put_with_ttl(b"kept", b"v", ttl).await?;
        plain.put(b"kept", b"v2").await?;
        sleep_past(ttl + Duration::from_millis(200)).await;
        assert_eq!(
            plain.count(b"").await?,
            1,
            "expired keys are invisible at once"
        );
        let before = plain.stored_records().await?;
        assert_eq!(before, n as u64 + 1);

        plain.put(b"trigger", b"v").await?;
        let after = plain.stored_records().await?;
        assert_eq!(
            before + 1 - after,
            SWEEP_BATCH as u64,
            "one write sweeps one batch"
        );

        while plain.sweep_expired(SWEEP_BATCH).await? > 0 {}
        assert_eq!(plain.stored_records().await?, 2);
        assert_eq!(plain.get(b"kept").await?.as_deref(), Some(&b"v2"[..]));
        Ok(())
    })
}

#[test]
fn a_second_open_in_this_process_shares_the_database() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let first = RedbBackend::open(&path)?;
        let second = RedbConfig::new(&path).key_prefix("p:").open()?;
        second.put(b"k", b"v").await?;
        assert_eq!(first.get(b"p:k").await?.as_deref(), Some(&b"v"[..]));
        let err = RedbConfig::new(&path)
            .durability(Durability::eventual())
            .open()
            .err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Config));
        Ok(())
    })
}

#[test]
fn urls_open_through_the_registry() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let mut registry = Registry::new();
        state_embedded::register(&mut registry);
        let url = format!(
            "redb:{}?prefix=a:&ttl=1h&durability=eventual&flush_interval=10ms",
            path.display()
        );
        let backend = registry.connect(&url).await?;
        backend.put(b"k", b"v").await?;
        assert!(matches!(backend.ttl(b"k").await?, Ttl::Remaining(_)));
        assert!(backend.capabilities().consistent_snapshot);
        let bad = format!("redb:{}?colour=blue", path.display());
        let err = registry.connect(&bad).await.err();
        assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Config));
        Ok(())
    })
}

#[test]
fn a_file_that_is_not_a_database_is_an_error_not_a_panic() -> TestResult {
    let (_dir, path) = temp();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, vec![0x5a; 64 * 1024])?;
    let err = RedbBackend::open(&path).err();
    let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Corrupt), "{msg}");
    assert!(msg.contains("not a redb database"), "{msg}");
    assert!(msg.contains("state.redb"), "{msg}");
    Ok(())
}

#[test]
fn a_damaged_file_is_corrupt_when_checked_on_open() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let backend = RedbBackend::open(&path)?;
        let value = vec![0x42; 512];
        for chunk in 0..4u32 {
            let keys: Vec<[u8; 4]> = (chunk * 500..(chunk + 1) * 500)
                .map(u32::to_be_bytes)
                .collect();
            let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &value[..])).collect();
            backend.batch_put(&entries).await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    // Overwrite the stored values (and whatever lies between them) with garbage.
    let mut bytes = std::fs::read(&path)?;
    let mut damaged = 0;
    for window in bytes.chunks_mut(512) {
        if window.iter().filter(|&&b| b == 0x42).count() > 256 {
            window.fill(0x17);
            damaged += 1;
        }
    }
    assert!(damaged > 0, "found no stored value to damage");
    std::fs::write(&path, bytes)?;
    let err = RedbConfig::new(&path).check_integrity(true).open().err();
    let msg = err.as_ref().map(ToString::to_string).unwrap_or_default();
    assert_eq!(err.map(|e| e.kind()), Some(ErrorKind::Corrupt), "{msg}");
    Ok(())
}

#[test]
fn a_failed_import_of_many_entries_changes_nothing() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let backend = RedbBackend::open(&path)?;
        backend.put(b"old", b"v").await?;
        let entries = (0..2_000u32)
            .map(|i| {
                Ok(state_core::Entry::new(
                    i.to_be_bytes().to_vec(),
                    b"x".to_vec(),
                ))
            })
            .chain(std::iter::once(Err(state_core::StateError::corrupt(
                "stream broke",
            ))));
        let result = backend
            .import(
                state_core::stream::iter(entries),
                state_core::ImportMode::Replace,
            )
            .await;
        assert_eq!(result.err().map(|e| e.kind()), Some(ErrorKind::Corrupt));
        assert_eq!(backend.count(b"").await?, 1);
        assert_eq!(backend.get(b"old").await?.as_deref(), Some(&b"v"[..]));
        Ok(())
    })
}

#[test]
fn works_on_a_current_thread_runtime() -> TestResult {
    let (_dir, path) = temp();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let backend = RedbBackend::open(&path)?;
            backend.batch_put(&[(b"a", b"1"), (b"b", b"2")]).await?;
            let keys: Vec<_> = try_collect(backend.scan(b""))
                .await?
                .into_iter()
                .map(|e| e.key)
                .collect();
            assert_eq!(keys, [&b"a"[..], &b"b"[..]]);
            assert_eq!(try_collect(backend.export(b"")).await?.len(), 2);
            Ok(())
        })
}

// ---- tests with a second process ----

/// Runs this test again in a child process with `role`, on the database at `path`.
fn spawn_child(test: &str, role: &str, path: &Path) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(FILE, path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

/// Waits until the child prints `line`, within [`CHILD_DEADLINE`].
fn wait_for_line(child: &mut Child, line: &str) -> TestResult {
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let (tx, rx) = mpsc::channel();
    let wanted = line.to_string();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        // libtest prints "test NAME ... " before the test's own output, on the same line.
        let found = lines.any(|l| l.trim_end().ends_with(&wanted));
        let _ = tx.send(found);
        // Keep reading: a closed pipe would fail the child's later output.
        lines.for_each(drop);
    });
    match rx.recv_timeout(CHILD_DEADLINE) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!("the child exited without printing {line}").into()),
        Err(_) => Err(format!("the child did not print {line} within {CHILD_DEADLINE:?}").into()),
    }
}

/// Waits for the child to exit, within [`CHILD_DEADLINE`].
fn wait_exit(child: &mut Child) -> TestResult {
    let deadline = std::time::Instant::now() + CHILD_DEADLINE;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return if status.success() {
                Ok(())
            } else {
                Err(format!("the child failed: {status}").into())
            };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill()?;
    Err("the child did not exit in time".into())
}

/// The role this process plays, if it is a child.
fn child_role() -> Option<(String, PathBuf)> {
    let role = std::env::var(ROLE).ok()?;
    let path = std::env::var_os(FILE)?;
    Some((role, PathBuf::from(path)))
}

/// Child: open the file, say READY, and hold it until stdin closes (bounded).
fn hold(path: &Path) -> TestResult {
    let _backend = RedbBackend::open(path)?;
    println!("READY");
    std::io::stdout().flush()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_line(&mut String::new());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(CHILD_DEADLINE);
    Ok(())
}

/// Child: write under `durability`, then exit at once without closing the database, as a
/// crash would (no destructor runs).
fn write_and_crash(path: &Path, durability: Durability, wait_for_flush: bool) -> TestResult {
    let runtime = runtime();
    // The backend outlives the exit below: dropping it would close the file cleanly.
    let _backend = runtime.block_on(async {
        let backend = RedbConfig::new(path).durability(durability).open()?;
        backend.put(b"k", b"acknowledged").await?;
        if wait_for_flush {
            let deadline = std::time::Instant::now() + CHILD_DEADLINE;
            while backend.pending_flush() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(!backend.pending_flush(), "the flusher did not run");
        }
        Ok::<_, Box<dyn std::error::Error>>(backend)
    })?;
    println!("DONE");
    std::io::stdout().flush()?;
    std::process::exit(0);
}

#[test]
fn a_file_held_by_another_process_is_a_clear_error_not_a_hang() -> TestResult {
    if let Some((_, path)) = child_role() {
        return hold(&path);
    }
    let (_dir, path) = temp();
    let test = "a_file_held_by_another_process_is_a_clear_error_not_a_hang";
    let mut child = spawn_child(test, "hold", &path)?;
    let result = (|| -> TestResult {
        wait_for_line(&mut child, "READY")?;
        // In a thread, so that a hang fails the test instead of stalling it.
        let (tx, rx) = mpsc::channel();
        let opening = path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(RedbBackend::open(&opening).map(|_| ()));
        });
        let err = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => return Err("the second process opened a held file".into()),
            Ok(Err(e)) => e,
            Err(_) => return Err("opening a held file hung".into()),
        };
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("another process"), "{msg}");
        Ok(())
    })();
    drop(child.stdin.take());
    wait_exit(&mut child)?;
    result?;
    // Once the holder is gone the file opens.
    RedbBackend::open(&path)?;
    Ok(())
}

fn crash_then_read(test: &str, role: &str) -> Result<Option<Vec<u8>>, Box<dyn std::error::Error>> {
    let (_dir, path) = temp();
    let mut child = spawn_child(test, role, &path)?;
    wait_for_line(&mut child, "DONE")?;
    wait_exit(&mut child)?;
    let value = runtime().block_on(async {
        let backend = RedbBackend::open(&path)?;
        backend.get(b"k").await
    })?;
    Ok(value.map(|v| v.to_vec()))
}

fn crash_child() -> Option<TestResult> {
    let (role, path) = child_role()?;
    let hour = Duration::from_secs(3600);
    Some(match role.as_str() {
        "immediate" => write_and_crash(&path, Durability::Immediate, false),
        "eventual-unflushed" => write_and_crash(
            &path,
            Durability::Eventual {
                flush_interval: hour,
            },
            false,
        ),
        "eventual-flushed" => write_and_crash(
            &path,
            Durability::Eventual {
                flush_interval: Duration::from_millis(20),
            },
            true,
        ),
        other => Err(format!("unknown child role {other}").into()),
    })
}

#[test]
fn immediate_durability_keeps_every_acknowledged_write_through_a_crash() -> TestResult {
    if let Some(result) = crash_child() {
        return result;
    }
    let test = "immediate_durability_keeps_every_acknowledged_write_through_a_crash";
    let value = crash_then_read(test, "immediate")?;
    assert_eq!(value.as_deref(), Some(&b"acknowledged"[..]));
    Ok(())
}

#[test]
fn eventual_durability_keeps_what_the_flusher_flushed_through_a_crash() -> TestResult {
    if let Some(result) = crash_child() {
        return result;
    }
    let test = "eventual_durability_keeps_what_the_flusher_flushed_through_a_crash";
    let value = crash_then_read(test, "eventual-flushed")?;
    assert_eq!(value.as_deref(), Some(&b"acknowledged"[..]));
    Ok(())
}

#[test]
fn eventual_durability_loses_unflushed_writes_in_a_crash_as_documented() -> TestResult {
    if let Some(result) = crash_child() {
        return result;
    }
    let test = "eventual_durability_loses_unflushed_writes_in_a_crash_as_documented";
    let value = crash_then_read(test, "eventual-unflushed")?;
    assert_eq!(value, None, "an unflushed write came back after a crash");
    Ok(())
}

#[test]
fn eventual_durability_loses_nothing_on_a_clean_close() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let backend = RedbConfig::new(&path)
            .durability(Durability::Eventual {
                flush_interval: Duration::from_secs(3600),
            })
            .open()?;
        backend.put(b"k", b"v").await?;
        assert!(backend.pending_flush());
        backend.sync().await?;
        assert!(!backend.pending_flush());
        backend.put(b"k2", b"v").await?;
        drop(backend);
        let backend = RedbBackend::open(&path)?;
        assert_eq!(backend.count(b"").await?, 2);
        Ok(())
    })
}

/// `batch_get` returns small batches as slices of one buffer and large ones value by
/// value: both give each key its own value, `None` for absent and expired keys, in order,
/// and a kept value stays right after the batch is gone.
#[test]
fn batch_get_gives_each_key_its_value_in_small_and_large_batches() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let backend = RedbBackend::open(&path)?;
        let large = |fill: u8| vec![fill; 40 * 1024];
        backend.put(b"a", b"first").await?;
        backend.put(b"empty", b"").await?;
        backend.put(b"b", b"second value").await?;
        backend.put(b"big1", &large(1)).await?;
        backend.put(b"big2", &large(2)).await?;
        backend
            .put_with_ttl(b"gone", b"expired", Duration::from_millis(1))
            .await?;
        sleep_past(Duration::from_millis(20)).await;

        let small = backend
            .batch_get(&[b"b", b"missing", b"a", b"gone", b"empty", b"a"])
            .await?;
        let kept = small.first().cloned().flatten();
        assert_eq!(
            small,
            vec![
                Some(bytes::Bytes::from_static(b"second value")),
                None,
                Some(bytes::Bytes::from_static(b"first")),
                None,
                Some(bytes::Bytes::new()),
                Some(bytes::Bytes::from_static(b"first")),
            ]
        );
        drop(small);
        assert_eq!(kept.as_deref(), Some(&b"second value"[..]));

        // Over 64 KiB of live values: each copied on its own.
        let big = backend
            .batch_get(&[b"big2", b"a", b"gone", b"big1"])
            .await?;
        assert_eq!(big.len(), 4);
        assert_eq!(big[0].as_deref(), Some(&large(2)[..]));
        assert_eq!(big[1].as_deref(), Some(&b"first"[..]));
        assert_eq!(big[2], None);
        assert_eq!(big[3].as_deref(), Some(&large(1)[..]));
        Ok(())
    })
}
