//! `statectl checkpoint … --store URL`: checkpoints as files, on the embedded store, Redis
//! and PostgreSQL (the real servers of `STATE_TEST_REDIS_URL` / `STATE_TEST_POSTGRES_URL`,
//! else the local defaults). `checkpoint run` is in checkpoint_run.rs. Each test works in
//! its own temporary directory and under its own key prefix or schema, removed when it
//! ends, passed or failed.

use tempfile::TempDir;

mod common;

use common::checkpoints::{RedisPrefix, Schema, Statectl, entries, file_url, listed, short};
use common::text;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Put, checkpoint, change, verify, restore by id and `latest`, delete: the round trip
/// every backend must make. Leaves the state of the first checkpoint.
fn round_trip(cli: &Statectl, store: &str) {
    cli.ok(&["put", "a", "1"]);
    cli.ok(&["put", "b", "2"]);
    cli.ok(&["put", "t", "x", "--ttl", "10m"]);
    let first = cli.ok(&["checkpoint", "create", "--store", store]);
    let first = first.trim();
    assert_eq!(listed(cli, store), [first]);
    assert_eq!(
        cli.ok(&["checkpoint", "verify", first, "--store", store]),
        format!("{first}\tok\tkey_prefix=\n")
    );

    cli.ok(&["put", "a", "changed"]);
    assert_eq!(cli.ok(&["del", "b"]), "1\n");
    cli.ok(&["put", "c", "new"]);
    cli.ok(&["put", "t", "y"]);
    let second = cli.ok(&["checkpoint", "create", "--store", store]);
    let second = second.trim();
    assert!(second > first, "ids grow: {first} then {second}");
    assert_eq!(listed(cli, store), [first, second]);

    assert_eq!(
        cli.ok(&["checkpoint", "restore", first, "--store", store]),
        ""
    );
    assert_eq!(entries(cli), "a\t1\nb\t2\nt\tx\n");
    let left: u64 = cli.ok(&["ttl", "t"]).trim().parse().unwrap_or(0);
    assert!(left > 0 && left <= 600_000, "the restored TTL is {left} ms");

    assert_eq!(
        cli.ok(&["checkpoint", "restore", "latest", "--store", store]),
        format!("{second}\n")
    );
    assert_eq!(entries(cli), "a\tchanged\nc\tnew\nt\ty\n");

    // The short form of an id is the same id.
    assert_eq!(
        cli.ok(&["checkpoint", "delete", &short(second), "--store", store]),
        ""
    );
    assert_eq!(listed(cli, store), [first]);
    for command in ["restore", "delete", "verify"] {
        let err = cli.fails(&["checkpoint", command, second, "--store", store], 1);
        assert!(
            err.contains(&format!("checkpoint {second} does not exist")),
            "{err}"
        );
    }
    cli.fails(&["checkpoint", "restore", "not-an-id", "--store", store], 2);
    cli.ok(&["checkpoint", "restore", "latest", "--store", store]);
    assert_eq!(entries(cli), "a\t1\nb\t2\nt\tx\n");
}

// ---------------------------------------------------------------- embedded

#[test]
fn the_default_embedded_store_checkpoints_into_a_directory_and_back() -> TestResult {
    let dir = TempDir::new()?;
    let store = file_url(&dir.path().join("checkpoints"));
    // No --url: the default redb file, created for a --store command.
    let cli = Statectl::new(dir.path(), None);
    round_trip(&cli, &store);
    assert!(dir.path().join(".statectl/state.redb").is_file());
    Ok(())
}

#[test]
fn a_damaged_file_fails_verify_naming_it_and_restore_latest_falls_back() -> TestResult {
    let dir = TempDir::new()?;
    let store_dir = dir.path().join("checkpoints");
    let store = file_url(&store_dir);
    let cli = Statectl::new(dir.path(), Some("redb:s.redb"));
    cli.ok(&["put", "k", "old"]);
    let older = cli.ok(&["checkpoint", "create", "--store", &store]);
    let older = older.trim();
    cli.ok(&["put", "k", "new"]);
    let newer = cli.ok(&["checkpoint", "create", "--store", &store]);
    let newer = newer.trim();
    cli.ok(&["put", "k", "now"]);

    // One bit flipped in the middle of the newest data file.
    let data = store_dir.join(format!("{newer}.data"));
    let mut bytes = std::fs::read(&data)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&data, bytes)?;

    let err = cli.fails(&["checkpoint", "verify", newer, "--store", &store], 3);
    assert!(
        err.contains(&format!("{}", data.display())),
        "the file is named: {err}"
    );
    assert_eq!(
        cli.ok(&["checkpoint", "verify", older, "--store", &store]),
        format!("{older}\tok\tkey_prefix=\n")
    );
    // A failed restore changes nothing.
    cli.fails(&["checkpoint", "restore", newer, "--store", &store], 3);
    assert_eq!(cli.ok(&["get", "k"]), "now\n");

    let out = cli.out(&["checkpoint", "restore", "latest", "--store", &store]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(text(&out.stdout), format!("{older}\n"));
    assert!(
        err.starts_with("statectl: warning: ") && err.contains(newer) && err.contains("skipped"),
        "{err}"
    );
    assert_eq!(cli.ok(&["get", "k"]), "old\n");
    // Still listed (its manifest is intact): only reading the data tells.
    assert_eq!(listed(&cli, &store), [older, newer]);
    Ok(())
}

#[test]
fn bad_stores_and_no_store_are_one_sentence_naming_the_fix() -> TestResult {
    let dir = TempDir::new()?;
    let cli = Statectl::new(dir.path(), Some("memory://"));
    let err = cli.fails(
        &["checkpoint", "list", "--store", "s3://key:secret@bucket/x"],
        2,
    );
    assert!(!err.contains("secret"), "{err}");
    let err = cli.fails(&["checkpoint", "list", "--store", "s3://bucket/x"], 2);
    assert!(err.contains("state-checkpoint/aws"), "{err}");
    let err = cli.fails(&["checkpoint", "list", "--store", "file://relative/dir"], 2);
    assert!(err.contains("absolute"), "{err}");
    let err = cli.fails(&["checkpoint", "create"], 2);
    assert!(err.contains("--store"), "{err}");
    let err = cli.fails(&["checkpoint", "run", "--interval", "1s"], 2);
    assert!(err.contains("--store"), "{err}");
    let store = file_url(&dir.path().join("s"));
    let err = cli.fails(
        &[
            "checkpoint",
            "run",
            "--store",
            &store,
            "--lock-url",
            "memory://",
        ],
        2,
    );
    assert!(err.contains("redis://"), "{err}");
    let err = cli.fails(&["checkpoint", "run", "--store", &store, "--keep", "0"], 2);
    assert!(err.contains("keep"), "{err}");
    Ok(())
}

#[test]
fn redis_checkpoints_round_trip_through_a_directory() -> TestResult {
    let prefix = RedisPrefix::new("ckstore_redis");
    let dir = TempDir::new()?;
    let store = file_url(&dir.path().join("checkpoints"));
    let cli = Statectl::new(dir.path(), Some(&prefix.url));
    round_trip(&cli, &store);
    // Without --store Redis has nowhere to keep them: one sentence naming --store.
    let err = cli.fails(&["checkpoint", "create"], 2);
    assert!(
        err.contains("--store") && err.contains("postgres://"),
        "{err}"
    );
    Ok(())
}

// ---------------------------------------------------------------- PostgreSQL

#[test]
fn postgres_checkpoints_round_trip_through_a_directory_beside_server_side_ones() -> TestResult {
    let schema = Schema::new("ckstore_pg");
    let dir = TempDir::new()?;
    let store = file_url(&dir.path().join("checkpoints"));
    let cli = Statectl::new(dir.path(), Some(&schema.url()));
    round_trip(&cli, &store);

    // Server-side checkpoints are untouched by --store, and `restore latest` works there.
    assert_eq!(cli.ok(&["checkpoint", "list"]), "");
    let server: i64 = cli.ok(&["checkpoint", "create"]).trim().parse()?;
    cli.ok(&["put", "a", "after"]);
    assert_eq!(
        cli.ok(&["checkpoint", "restore", "latest"]),
        format!("{server}\n")
    );
    assert_eq!(cli.ok(&["get", "a"]), "1\n");
    let err = cli.fails(&["checkpoint", "verify", "1"], 2);
    assert!(err.contains("--store"), "{err}");

    // The file is portable: PostgreSQL's checkpoint restored into an embedded store.
    let id = listed(&cli, &store).pop().unwrap_or_default();
    let redb = Statectl::new(dir.path(), Some("redb:copy.redb"));
    redb.ok(&["checkpoint", "restore", &id, "--store", &store]);
    assert_eq!(entries(&redb), "a\t1\nb\t2\nt\tx\n");
    Ok(())
}
