//! The statectl binary, run as a user would: each command is its own process in a fresh
//! directory, so state that must survive between commands lives in the embedded store.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Runs statectl in `dir` with no `STATE_URL` unless `env` sets one.
fn statectl_env(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_statectl"));
    cmd.current_dir(dir).env_remove("STATE_URL").args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run statectl {args:?}: {e}"),
    }
}

fn statectl(dir: &Path, args: &[&str]) -> Output {
    statectl_env(dir, &[], args)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = statectl(dir, args);
    assert!(
        out.status.success(),
        "statectl {args:?} failed ({:?}): {}",
        out.status.code(),
        stderr(&out)
    );
    stdout(&out)
}

/// Asserts the command failed with `code` and one clear sentence on stderr; returns it.
fn fails(out: &Output, code: i32) -> String {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(err.starts_with("statectl: "), "{err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "stdout: {}", stdout(out));
    err
}

#[test]
fn put_then_get_in_another_process() -> TestResult {
    let dir = TempDir::new()?;
    assert_eq!(ok(dir.path(), &["put", "a", "1"]), "");
    assert_eq!(ok(dir.path(), &["get", "a"]), "1\n");
    // The default store is the embedded file under .statectl/.
    assert!(dir.path().join(".statectl/state.redb").is_file());
    Ok(())
}

#[test]
fn ttl_counts_down_expires_and_is_cleared_by_a_plain_put() -> TestResult {
    let dir = TempDir::new()?;
    let d = dir.path();
    ok(d, &["put", "t", "v", "--ttl", "1500ms"]);
    let left: u64 = ok(d, &["ttl", "t"]).trim().parse()?;
    assert!(left > 900 && left <= 1500, "ttl printed {left}");
    std::thread::sleep(Duration::from_millis(1600));
    let err = fails(&statectl(d, &["get", "t"]), 1);
    assert!(err.contains("`t` does not exist"), "{err}");
    fails(&statectl(d, &["ttl", "t"]), 1);
    ok(d, &["put", "t", "v2"]);
    assert_eq!(ok(d, &["ttl", "t"]), "persistent\n");
    assert_eq!(ok(d, &["get", "t"]), "v2\n");
    Ok(())
}

#[test]
fn scan_prefixes_are_literal_and_output_is_one_key_per_line() -> TestResult {
    let dir = TempDir::new()?;
    let d = dir.path();
    for key in ["a*", "a*b", "ab", "a", "b*", "a*\nx"] {
        ok(d, &["put", key, "v"]);
    }
    assert_eq!(ok(d, &["scan", "a*"]), "a*\na*\\nx\na*b\n");
    assert_eq!(ok(d, &["scan", "a*b", "--values"]), "a*b\tv\n");
    assert_eq!(ok(d, &["scan"]).lines().count(), 6);
    assert_eq!(ok(d, &["count", "a*"]), "3\n");
    assert_eq!(ok(d, &["count"]), "6\n");
    assert_eq!(ok(d, &["count", "zzz"]), "0\n");
    Ok(())
}

#[test]
fn del_prints_how_many_were_deleted() -> TestResult {
    let dir = TempDir::new()?;
    let d = dir.path();
    ok(d, &["put", "k", "v"]);
    assert_eq!(ok(d, &["del", "k"]), "1\n");
    assert_eq!(ok(d, &["del", "k"]), "0\n");
    fails(&statectl(d, &["get", "k"]), 1);
    Ok(())
}

#[test]
fn state_url_is_honoured_and_url_overrides_it() -> TestResult {
    let dir = TempDir::new()?;
    let d = dir.path();
    let env = [("STATE_URL", "redb:custom.redb")];
    let out = statectl_env(d, &env, &["put", "a", "from-env"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.join("custom.redb").is_file());
    assert!(!d.join(".statectl").exists());
    assert_eq!(stdout(&statectl_env(d, &env, &["get", "a"])), "from-env\n");
    // --url wins over STATE_URL, and the default store is another store.
    let out = statectl_env(d, &env, &["--url", "redb:other.redb", "get", "a"]);
    fails(&out, 1);
    fails(&statectl(d, &["get", "a"]), 1);
    let bad = statectl_env(d, &[("STATE_URL", "nosuch://x")], &["get", "a"]);
    assert!(fails(&bad, 2).contains("unknown URL scheme `nosuch`"));
    Ok(())
}

#[test]
fn bad_inputs_are_one_sentence_and_the_right_exit_code() -> TestResult {
    let dir = TempDir::new()?;
    let d = dir.path();

    let err = fails(
        &statectl(d, &["--url", "foo://user:hunter2@h", "get", "a"]),
        2,
    );
    assert!(err.contains("unknown URL scheme `foo`"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let err = fails(
        &statectl(d, &["--url", "memory://", "put", "k", "v", "--ttl", "soon"]),
        2,
    );
    assert!(err.contains("`soon` is not a duration"), "{err}");

    let err = fails(
        &statectl(d, &["--url", "memory://", "put", "k", "v", "--ttl", "0ms"]),
        2,
    );
    assert!(err.contains("invalid input"), "{err}");

    let err = fails(&statectl(d, &["--url", "memory://", "get", ""]), 2);
    assert!(err.contains("key is empty"), "{err}");

    let err = fails(&statectl(d, &["--url", "memory://", "get", "nope"]), 1);
    assert!(err.contains("`nope` does not exist"), "{err}");

    let err = fails(
        &statectl(d, &["--url", "memory://?colour=blue", "count"]),
        2,
    );
    assert!(err.contains("`colour`"), "{err}");
    Ok(())
}

#[test]
fn an_unusable_store_file_is_a_clear_error() -> TestResult {
    let dir = TempDir::new()?;
    let d = dir.path();
    std::fs::create_dir(d.join("a-directory"))?;
    let out = statectl(d, &["--url", "redb:a-directory", "get", "k"]);
    let code = out.status.code();
    let err = stderr(&out);
    assert!(matches!(code, Some(2) | Some(3)), "{code:?}: {err}");
    fails(&out, code.unwrap_or_default());
    assert!(err.contains("a-directory"), "the path is named: {err}");
    Ok(())
}

#[test]
fn a_store_held_by_another_process_is_a_clear_error() -> TestResult {
    let dir = TempDir::new()?;
    let path = dir.path().join("held.redb");
    // This test process holds the file; the statectl child cannot open it.
    let _held = state_embedded::RedbBackend::open(&path)?;
    let out = statectl(dir.path(), &["--url", "redb:held.redb", "get", "k"]);
    let err = fails(&out, 3);
    assert!(err.contains("already open"), "{err}");
    Ok(())
}

#[test]
fn bench_writes_json_with_every_op() -> TestResult {
    let dir = TempDir::new()?;
    let d = dir.path();
    let out = ok(
        d,
        &[
            "--url",
            "memory://",
            "bench",
            "--ops",
            "2000",
            "--keyspace",
            "500",
            "--concurrency",
            "4",
            "--json",
            "f.json",
        ],
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("f.json"))?)?;
    assert_eq!(json["url"], "memory://");
    let Some(results) = json["results"].as_array() else {
        panic!("no results array: {json}");
    };
    let ops: Vec<&str> = results.iter().filter_map(|r| r["op"].as_str()).collect();
    assert_eq!(
        ops,
        ["put", "batch-put", "get", "batch-get", "mixed", "cas"]
    );
    for r in results {
        assert_eq!(r["ops"], 2000, "{r}");
        for field in ["ops_per_sec", "p50_us", "p99_us", "p999_us"] {
            let v = r[field].as_f64();
            assert!(v.is_some_and(|v| v > 0.0), "{field} in {r}");
        }
        assert!(r["p50_us"].as_f64() <= r["p999_us"].as_f64(), "{r}");
    }
    assert_eq!(results[1]["batches"], 20);
    for op in ["put", "batch-put", "get", "batch-get", "mixed", "cas"] {
        assert!(
            out.lines().any(|l| l.starts_with(op)),
            "table lacks {op}: {out}"
        );
    }
    Ok(())
}

#[test]
fn bench_removes_its_keys_and_keeps_others() -> TestResult {
    let dir = TempDir::new()?;
    let d = dir.path();
    ok(d, &["put", "mine", "1"]);
    ok(
        d,
        &[
            "bench",
            "--workload",
            "batch-get",
            "--ops",
            "1000",
            "--keyspace",
            "300",
        ],
    );
    assert_eq!(ok(d, &["scan"]), "mine\n");
    let err = fails(&statectl(d, &["bench", "--workload", "nope"]), 2);
    assert!(err.contains("nope"), "{err}");
    Ok(())
}
