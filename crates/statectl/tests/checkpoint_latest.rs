//! `statectl checkpoint latest [--store URL]`: the newest valid checkpoint, printed as
//! `checkpoint list` prints its row, or exit 1 with one sentence when there is none; for a
//! directory store (redb), a PostgreSQL store (the test server, a table of the test's own)
//! and PostgreSQL's server-side checkpoints (a schema of the test's own), each removed when
//! the test ends, passed or failed.

use tempfile::TempDir;

mod common;

use common::checkpoints::{Schema, Statectl, file_url, listed};
use common::{text, with_param};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The last row `checkpoint list` prints (the newest), whole.
fn last_row(cli: &Statectl, store: Option<&str>) -> String {
    let mut args = vec!["checkpoint", "list"];
    if let Some(store) = store {
        args.extend(["--store", store]);
    }
    let listed = cli.ok(&args);
    let last = listed.lines().last().unwrap_or_default();
    assert!(!last.is_empty(), "nothing is listed");
    format!("{last}\n")
}

/// `latest` on an empty store, then after each of two checkpoints, then after deleting
/// the newest and the last: the row tracks the newest, and an empty store is exit 1.
fn latest_tracks_the_newest(cli: &Statectl, store: &str) {
    let latest = ["checkpoint", "latest", "--store", store];
    let err = cli.fails(&latest, 1);
    assert!(err.contains("no valid checkpoint"), "{err}");

    cli.ok(&["put", "a", "1"]);
    let first = cli.ok(&["checkpoint", "create", "--store", store]);
    let first = first.trim();
    let row = cli.ok(&latest);
    assert!(row.starts_with(&format!("{first}\t")), "{row}");
    assert_eq!(row, last_row(cli, Some(store)));
    // rows and bytes: one entry, of a few bytes.
    let fields: Vec<&str> = row.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 4, "{row}");
    assert_eq!(fields[2], "1", "{row}");

    cli.ok(&["put", "b", "2"]);
    let second = cli.ok(&["checkpoint", "create", "--store", store]);
    let second = second.trim();
    let row = cli.ok(&latest);
    assert!(row.starts_with(&format!("{second}\t")), "{row}");
    assert_eq!(row, last_row(cli, Some(store)));
    assert_eq!(listed(cli, store), [first, second]);

    cli.ok(&["checkpoint", "delete", second, "--store", store]);
    let row = cli.ok(&latest);
    assert!(row.starts_with(&format!("{first}\t")), "{row}");

    cli.ok(&["checkpoint", "delete", first, "--store", store]);
    cli.fails(&latest, 1);
}

#[test]
fn latest_of_a_directory_store_is_the_newest_row_of_list() -> TestResult {
    let dir = TempDir::new()?;
    let store = file_url(&dir.path().join("checkpoints"));
    let cli = Statectl::new(dir.path(), Some("redb:s.redb"));
    latest_tracks_the_newest(&cli, &store);
    Ok(())
}

#[test]
fn latest_passes_over_a_damaged_manifest_with_a_warning() -> TestResult {
    let dir = TempDir::new()?;
    let store_dir = dir.path().join("checkpoints");
    let store = file_url(&store_dir);
    let cli = Statectl::new(dir.path(), Some("memory://"));
    // memory:// dies with each process: every checkpoint holds no entry, which is fine here.
    let older = cli.ok(&["checkpoint", "create", "--store", &store]);
    let older = older.trim();
    let newer = cli.ok(&["checkpoint", "create", "--store", &store]);
    let newer = newer.trim();
    std::fs::write(
        store_dir.join(format!("{newer}.manifest.json")),
        b"{not json",
    )?;

    let out = cli.out(&["checkpoint", "latest", "--store", &store]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let row = text(&out.stdout);
    assert!(row.starts_with(&format!("{older}\t")), "{row}");
    assert!(
        err.starts_with("statectl: warning: ") && err.contains(newer),
        "the damaged manifest is named: {err}"
    );
    Ok(())
}

#[test]
fn latest_without_store_needs_postgres_and_bad_stores_are_usage_errors() -> TestResult {
    let dir = TempDir::new()?;
    let cli = Statectl::new(dir.path(), Some("memory://"));
    let err = cli.fails(&["checkpoint", "latest"], 2);
    assert!(err.contains("--store"), "{err}");
    let err = cli.fails(&["checkpoint", "latest", "--store", "ftp://h/x"], 2);
    assert!(err.contains("not a checkpoint store"), "{err}");
    Ok(())
}

#[test]
fn latest_of_server_side_postgres_checkpoints_is_the_newest_row_of_list() -> TestResult {
    let schema = Schema::new("cklatest_pg");
    let dir = TempDir::new()?;
    let cli = Statectl::new(dir.path(), Some(&schema.url()));
    let err = cli.fails(&["checkpoint", "latest"], 1);
    assert!(err.contains("no checkpoint exists"), "{err}");

    cli.ok(&["put", "a", "1"]);
    let first: i64 = cli.ok(&["checkpoint", "create"]).trim().parse()?;
    cli.ok(&["put", "b", "2"]);
    let second: i64 = cli.ok(&["checkpoint", "create"]).trim().parse()?;
    assert!(second > first);
    let row = cli.ok(&["checkpoint", "latest"]);
    assert!(row.starts_with(&format!("{second}\t")), "{row}");
    assert_eq!(row, last_row(&cli, None));
    let fields: Vec<&str> = row.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 4, "{row}");
    assert_eq!(fields[2], "2", "{row}");

    cli.ok(&["checkpoint", "delete", &second.to_string()]);
    let row = cli.ok(&["checkpoint", "latest"]);
    assert!(row.starts_with(&format!("{first}\t")), "{row}");
    cli.ok(&["checkpoint", "delete", &first.to_string()]);
    cli.fails(&["checkpoint", "latest"], 1);
    Ok(())
}

#[test]
fn latest_of_a_postgres_store_is_the_newest_row_of_list() -> TestResult {
    let schema = Schema::new("cklatest_pgstore");
    let dir = TempDir::new()?;
    let store = with_param(&schema.url(), "table", "checkpoints");
    let cli = Statectl::new(dir.path(), Some("redb:s.redb"));
    latest_tracks_the_newest(&cli, &store);
    Ok(())
}
