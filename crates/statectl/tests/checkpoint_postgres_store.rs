//! `statectl checkpoint … --store postgres://…`: checkpoint files kept in a table of the
//! test PostgreSQL, taken from one backend and restored into another (redb → PostgreSQL
//! store → redb and the PostgreSQL backend), beside the server-side checkpoints of the
//! PostgreSQL backend, which stay apart. Each test works in a schema of its own (the
//! store's table and the backend's), dropped when it ends, passed or failed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::channel;
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod common;

use common::checkpoints::{Schema, Statectl, entries, listed};
use common::with_param;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[test]
fn redb_checkpoints_into_postgres_and_restores_into_redb_and_postgres() -> TestResult {
    let schema = Schema::new("ckpgstore");
    let store = with_param(&schema.url(), "table", "files");
    let dir = TempDir::new()?;
    let redb = Statectl::new(dir.path(), Some("redb:a.redb"));
    redb.ok(&["put", "a", "1"]);
    redb.ok(&["put", "b", "2"]);
    redb.ok(&["put", "t", "x", "--ttl", "10m"]);
    let first = redb.ok(&["checkpoint", "create", "--store", &store]);
    let first = first.trim();
    assert_eq!(listed(&redb, &store), [first]);
    assert_eq!(
        redb.ok(&["checkpoint", "verify", first, "--store", &store]),
        format!("{first}\tok\tkey_prefix=\n")
    );

    redb.ok(&["put", "a", "changed"]);
    redb.ok(&["del", "b"]);
    let second = redb.ok(&["checkpoint", "create", "--store", &store]);
    let second = second.trim();
    assert_eq!(listed(&redb, &store), [first, second]);

    redb.ok(&["checkpoint", "restore", first, "--store", &store]);
    assert_eq!(entries(&redb), "a\t1\nb\t2\nt\tx\n");
    let left: u64 = redb.ok(&["ttl", "t"]).trim().parse().unwrap_or(0);
    assert!(left > 0 && left <= 600_000, "the restored TTL is {left} ms");

    // Into the PostgreSQL backend (its own table in the same schema), from the same store.
    let postgres = Statectl::new(dir.path(), Some(&schema.url()));
    postgres.ok(&["put", "z", "gone after the restore"]);
    assert_eq!(
        postgres.ok(&["checkpoint", "restore", "latest", "--store", &store]),
        format!("{second}\n")
    );
    assert_eq!(entries(&postgres), "a\tchanged\nt\tx\n");
    // The server-side checkpoints are another thing: none was taken.
    assert_eq!(postgres.ok(&["checkpoint", "list"]), "");
    let server = postgres.ok(&["checkpoint", "create"]);
    assert!(server.trim().parse::<i64>().is_ok(), "{server}");
    assert_eq!(listed(&postgres, &store), [first, second]);

    postgres.ok(&["checkpoint", "delete", second, "--store", &store]);
    assert_eq!(listed(&redb, &store), [first]);
    let err = redb.fails(&["checkpoint", "restore", second, "--store", &store], 1);
    assert!(
        err.contains(&format!("checkpoint {second} does not exist")),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_bad_postgres_store_is_one_sentence_without_the_password() -> TestResult {
    let dir = TempDir::new()?;
    let cli = Statectl::new(dir.path(), Some("memory://"));
    let err = cli.fails(
        &[
            "checkpoint",
            "list",
            "--store",
            "postgres://u:hunter2@127.0.0.1:5432/test?table=a;b",
        ],
        2,
    );
    assert!(
        err.contains("identifier") && !err.contains("hunter2"),
        "{err}"
    );
    // Nothing listens on port 1: the backend failed (exit 3), and the password stays out.
    let err = cli.fails(
        &[
            "checkpoint",
            "list",
            "--store",
            "postgres://u:hunter2@127.0.0.1:1/test",
        ],
        3,
    );
    assert!(
        err.contains("postgres://127.0.0.1:1/test") && !err.contains("hunter2"),
        "{err}"
    );
    Ok(())
}

/// `checkpoint run` into a PostgreSQL store: checkpoints on schedule, retention keeps the
/// newest two, and SIGINT stops it with exit 0.
#[test]
fn run_checkpoints_into_postgres_and_keeps_the_newest() -> TestResult {
    let schema = Schema::new("ckpgrun");
    let store = with_param(&schema.url(), "table", "files");
    let dir = TempDir::new()?;
    let cli = Statectl::new(dir.path(), Some("redb:s.redb"));
    cli.ok(&["put", "k", "v"]);
    let mut runner = cli
        .command(&[
            "checkpoint",
            "run",
            "--store",
            &store,
            "--interval",
            "200ms",
            "--min-pause",
            "0s",
            "--keep",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let (tx, rx) = channel();
    let stdout = runner.stdout.take().ok_or("no stdout")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while printed.len() < 3 && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            printed.push(line);
        }
    }
    let interrupted = Command::new("kill")
        .args(["-INT", &runner.id().to_string()])
        .status()?;
    assert!(interrupted.success());
    let stop_deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = runner.try_wait()? {
            break Some(status);
        }
        if Instant::now() > stop_deadline {
            let _ = runner.kill();
            let _ = runner.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(printed.len(), 3, "checkpoints printed in time: {printed:?}");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "exit after SIGINT");
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
        printed.push(line);
    }
    let listed = listed(&cli, &store);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed.last(), printed.last(), "printed {printed:?}");
    Ok(())
}
