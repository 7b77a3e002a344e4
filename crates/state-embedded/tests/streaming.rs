//! Exports and imports far larger than redb's page cache: a write transaction then writes
//! the pages it changed into the file before its commit, and the import must stay all or
//! nothing anyway, through an error in the stream and through a crash (RELIABILITY 22).
//!
//! The crash test runs a second process: this test binary re-executed on the same test,
//! with an environment variable naming the file.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use futures_core::Stream;
use state_core::stream::try_collect;
use state_core::{Entry, ErrorKind, ImportMode, Result as StateResult, StateBackend, StateError};
use state_embedded::{RedbBackend, RedbConfig};
use testing::conformance::runtime;

/// A cache of 16 pages: redb keeps at most 8 changed pages in memory, so every import below
/// writes nearly all of its pages into the file before committing.
const TINY_CACHE: usize = 64 * 1024;
/// Entries per import: megabytes of pages (the file grows to about 9 MB), 16 pages cached.
const ENTRIES: u32 = 50_000;
/// What the file holds before an import.
const OLD: u32 = 1_000;
const CHILD_FILE: &str = "STATE_EMBEDDED_STREAMING_FILE";
/// Bounds every wait on the child process.
const CHILD_DEADLINE: Duration = Duration::from_secs(60);

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
    let path = dir.path().join("state.redb");
    (dir, path)
}

fn open_tiny(path: &Path) -> StateResult<RedbBackend> {
    RedbConfig::new(path).cache_size(TINY_CACHE).open()
}

/// Entry `i` of an import: 64 B values, every third with a TTL, every fifth with metadata.
fn entry(i: u32) -> Entry {
    let mut entry = Entry::new(
        format!("new:{i:012}").into_bytes(),
        format!("{i:064}").into_bytes(),
    );
    if i.is_multiple_of(3) {
        // Whole milliseconds: the stored expiry's precision.
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(4_000_000_000_000 + u64::from(i));
        entry = entry.with_expiry(at);
    }
    if i.is_multiple_of(5) {
        entry = entry.with_metadata(serde_json::json!({ "i": i }));
    }
    entry
}

/// Fills the file with the `OLD` entries `old:…` a failed import must leave as they are.
async fn put_old(backend: &RedbBackend) -> StateResult<()> {
    let keys: Vec<Vec<u8>> = (0..OLD)
        .map(|i| format!("old:{i:06}").into_bytes())
        .collect();
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &b"kept"[..])).collect();
    backend.batch_put(&pairs).await
}

/// Fails unless the backend holds exactly the `OLD` entries of [`put_old`].
async fn assert_old_state(backend: &RedbBackend) -> TestResult {
    let all = try_collect(backend.export(b"")).await?;
    assert_eq!(
        all.len(),
        OLD as usize,
        "the file holds other entries than before"
    );
    for (i, e) in (0..OLD).zip(&all) {
        assert_eq!(e.key.as_ref(), format!("old:{i:06}").as_bytes());
        assert_eq!(e.value.as_ref(), b"kept");
    }
    Ok(())
}

/// Fails at the first entry that differs, without printing thousands of them.
fn assert_same(exported: &[Entry], expected: &[Entry]) -> TestResult {
    if let Some((i, (got, want))) = exported
        .iter()
        .zip(expected)
        .enumerate()
        .find(|(_, (got, want))| got != want)
    {
        return Err(format!("entry {i} differs: exported {got:?}, imported {want:?}").into());
    }
    assert_eq!(
        exported.len(),
        expected.len(),
        "exported as many as imported"
    );
    Ok(())
}

#[test]
fn an_import_and_an_export_many_times_the_cache_round_trip_exactly() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let backend = open_tiny(&path)?;
        put_old(&backend).await?;
        let entries = (0..ENTRIES).map(|i| Ok(entry(i)));
        let written = backend
            .import(state_core::stream::iter(entries), ImportMode::Replace)
            .await?;
        assert_eq!(written, u64::from(ENTRIES));
        let expected: Vec<Entry> = (0..ENTRIES).map(entry).collect();
        assert_same(&try_collect(backend.export(b"")).await?, &expected)?;
        drop(backend);
        // From the file alone, through a cache far smaller than what it reads.
        let backend = open_tiny(&path)?;
        assert_same(&try_collect(backend.export(b"")).await?, &expected)?;
        assert_eq!(backend.stored_records().await?, u64::from(ENTRIES));
        println!(
            "file after the import: {} bytes",
            std::fs::metadata(&path)?.len()
        );
        Ok(())
    })
}

#[test]
fn an_import_many_times_the_cache_that_fails_at_its_end_leaves_the_old_state() -> TestResult {
    let (_dir, path) = temp();
    runtime().block_on(async {
        let backend = open_tiny(&path)?;
        put_old(&backend).await?;
        let entries = (0..ENTRIES)
            .map(|i| Ok(entry(i)))
            .chain(std::iter::once(Err(StateError::corrupt("stream broke"))));
        let result = backend
            .import(state_core::stream::iter(entries), ImportMode::Replace)
            .await;
        assert_eq!(result.err().map(|e| e.kind()), Some(ErrorKind::Corrupt));
        assert_old_state(&backend).await?;
        // The pages written before the failure are free space, reused by the next import.
        let entries = (0..ENTRIES).map(|i| Ok(entry(i)));
        backend
            .import(state_core::stream::iter(entries), ImportMode::Merge)
            .await?;
        assert_eq!(backend.count(b"").await?, u64::from(OLD + ENTRIES));
        drop(backend);
        let backend = open_tiny(&path)?;
        assert_eq!(backend.count(b"old:").await?, u64::from(OLD));
        assert_eq!(backend.count(b"new:").await?, u64::from(ENTRIES));
        Ok(())
    })
}

// ---- the crash test, with a second process ----

/// Yields the import's entries, says SPILLED once it has yielded them all, and then never
/// ends: the import waits for more until the process is killed.
struct EntriesThenHang {
    next: u32,
}

impl Stream for EntriesThenHang {
    type Item = StateResult<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.next < ENTRIES {
            let i = self.next;
            self.next += 1;
            return Poll::Ready(Some(Ok(entry(i))));
        }
        if self.next == ENTRIES {
            self.next += 1;
            // The writer has taken all but the last IMPORT_BUFFER (256) entries by now.
            println!("SPILLED");
            let _ = std::io::stdout().flush();
        }
        Poll::Pending
    }
}

/// Child: the old state, committed; then an import that writes nearly all its pages to the
/// file and waits, uncommitted, to be killed.
fn import_until_killed(path: &Path) -> TestResult {
    runtime().block_on(async {
        let backend = open_tiny(path)?;
        put_old(&backend).await?;
        let stream = Box::pin(EntriesThenHang { next: 0 });
        let import = backend.import(stream, ImportMode::Replace);
        match tokio::time::timeout(CHILD_DEADLINE, import).await {
            Ok(result) => Err(format!("the hanging import ended: {result:?}").into()),
            Err(_) => Err("the parent did not kill this process".into()),
        }
    })
}

#[test]
fn a_crash_during_an_import_many_times_the_cache_leaves_the_old_state() -> TestResult {
    if let Some(path) = std::env::var_os(CHILD_FILE) {
        return import_until_killed(Path::new(&path));
    }
    let (_dir, path) = temp();
    let test = "a_crash_during_an_import_many_times_the_cache_leaves_the_old_state";
    let mut child = Command::new(std::env::current_exe()?)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_FILE, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("the child has no stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
        // libtest prints "test NAME ... " before the test's own output, on the same line.
        let _ = tx.send(lines.any(|l| l.trim_end().ends_with("SPILLED")));
        lines.for_each(drop);
    });
    let spilled = rx.recv_timeout(CHILD_DEADLINE);
    // SIGKILL: no destructor runs, the file is left as a crash leaves it.
    child.kill()?;
    child.wait()?;
    match spilled {
        Ok(true) => {}
        Ok(false) => return Err("the child exited before its import was under way".into()),
        Err(_) => return Err(format!("the child's import stalled for {CHILD_DEADLINE:?}").into()),
    }
    println!(
        "file at the crash: {} bytes",
        std::fs::metadata(&path)?.len()
    );
    runtime().block_on(async {
        // The open repairs the file: it was not closed.
        let backend = open_tiny(&path)?;
        assert_old_state(&backend).await?;
        assert_eq!(backend.stored_records().await?, u64::from(OLD));
        Ok(())
    })
}
