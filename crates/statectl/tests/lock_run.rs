//! `statectl lock run` against the real Redis and PostgreSQL servers: RELIABILITY 7 (8
//! processes × 25 iterations of a read-sleep-write increment end at exactly 200), the
//! fencing token handed to the command, exit codes.

use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

mod common;

use common::{service_url, unique, with_param};

const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";
const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";
const PROCESSES: usize = 8;
const ITERATIONS: usize = 25;

fn statectl(dir: &Path, url: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_statectl"));
    cmd.current_dir(dir)
        .env_remove("STATE_URL")
        .arg("--url")
        .arg(url)
        .args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run statectl {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The increment of RELIABILITY 7: read the counter, sleep, write it back plus one; and
/// append the fencing token, in holder order.
const CRITICAL_SECTION: &str = r#"n=$(cat counter); sleep 0.01; echo $((n + 1)) > counter; echo "$STATE_FENCING_TOKEN" >> tokens"#;

/// Runs PROCESSES × ITERATIONS `lock run`s and checks the count and the tokens.
fn contend(url: &str) {
    let dir = TempDir::new().expect("temp dir");
    std::fs::write(dir.path().join("counter"), "0\n").expect("counter file");
    let name = unique("lockrun_counter");
    std::thread::scope(|scope| {
        for _ in 0..PROCESSES {
            scope.spawn(|| {
                for _ in 0..ITERATIONS {
                    let out = statectl(
                        dir.path(),
                        url,
                        &[
                            "lock",
                            "run",
                            &name,
                            "--ttl",
                            "10s",
                            "--wait",
                            "120s",
                            "--",
                            "sh",
                            "-c",
                            CRITICAL_SECTION,
                        ],
                    );
                    assert!(
                        out.status.success(),
                        "lock run failed ({:?}): {}",
                        out.status.code(),
                        text(&out.stderr)
                    );
                }
            });
        }
    });
    let count = std::fs::read_to_string(dir.path().join("counter")).expect("counter");
    assert_eq!(
        count.trim(),
        (PROCESSES * ITERATIONS).to_string(),
        "lost increments"
    );
    let tokens: Vec<u64> = std::fs::read_to_string(dir.path().join("tokens"))
        .expect("tokens")
        .lines()
        .map(|l| l.parse().unwrap_or_else(|e| panic!("token `{l}`: {e}")))
        .collect();
    assert_eq!(tokens.len(), PROCESSES * ITERATIONS);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens did not increase from holder to holder: {tokens:?}"
    );
}

/// Exit codes: the command's status passes through; a busy lock past --wait is 75 with
/// one sentence; a missing command is 127.
fn exit_codes(url: &str) {
    let dir = TempDir::new().expect("temp dir");
    let name = unique("lockrun_codes");
    let out = statectl(
        dir.path(),
        url,
        &["lock", "run", &name, "--", "sh", "-c", "exit 7"],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));

    let holder = Command::new(env!("CARGO_BIN_EXE_statectl"))
        .current_dir(dir.path())
        .env_remove("STATE_URL")
        .args([
            "--url",
            url,
            "lock",
            "run",
            &name,
            "--",
            "sh",
            "-c",
            "echo held; sleep 3",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("holder");
    let mut holder = holder;
    // Wait until the holder's command runs, i.e. the lock is held.
    let mut line = String::new();
    let stdout = holder.stdout.take().expect("holder stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
    assert_eq!(line.trim(), "held");
    let out = statectl(
        dir.path(),
        url,
        &["lock", "run", &name, "--wait", "300ms", "--", "true"],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.starts_with("statectl: ") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(err.contains(&name), "{err}");
    let status = holder.wait().expect("holder exit");
    assert!(status.success());

    let out = statectl(
        dir.path(),
        url,
        &["lock", "run", &name, "--", "no-such-command-here"],
    );
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
}

/// A key prefix of this test's on the test Redis; its keys (the locks' fencing counters
/// outlive the locks by design) are deleted when the value goes out of scope.
struct RedisPrefix {
    base: String,
    prefix: String,
}

impl RedisPrefix {
    fn new() -> RedisPrefix {
        RedisPrefix {
            base: service_url("STATE_TEST_REDIS_URL", REDIS_DEFAULT),
            prefix: format!("{}:", unique("lockrun_redis")),
        }
    }

    fn url(&self) -> String {
        with_param(&self.base, "prefix", &self.prefix)
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        let pattern = format!("{}*", self.prefix);
        let keys = Command::new("redis-cli")
            .args(["-u", &self.base, "--scan", "--pattern", &pattern])
            .output();
        if let Ok(keys) = keys {
            for key in text(&keys.stdout)
                .lines()
                .filter(|k| k.starts_with(&self.prefix))
            {
                let _ = Command::new("redis-cli")
                    .args(["-u", &self.base, "del", key])
                    .output();
            }
        }
    }
}

/// A schema of this test's, dropped when the value goes out of scope.
struct Schema {
    base: String,
    name: String,
}

impl Schema {
    fn new(tag: &str) -> Schema {
        let base = service_url("STATE_TEST_POSTGRES_URL", POSTGRES_DEFAULT);
        let name = unique(tag);
        psql(&base, &format!("CREATE SCHEMA \"{name}\""));
        Schema { base, name }
    }

    fn url(&self, mode: &str) -> String {
        let separator = if self.base.contains('?') { "&" } else { "?" };
        format!(
            "{}{separator}schema={}&lock_mode={mode}",
            self.base, self.name
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        psql(
            &self.base,
            &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
        );
    }
}

fn psql(url: &str, sql: &str) {
    let out = Command::new("psql")
        .args([url, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
    assert!(out.status.success(), "psql {sql}: {}", text(&out.stderr));
}

#[test]
fn redis_eight_processes_count_to_200() {
    let prefix = RedisPrefix::new();
    contend(&prefix.url());
}

#[test]
fn redis_exit_codes() {
    let prefix = RedisPrefix::new();
    exit_codes(&prefix.url());
}

#[test]
fn postgres_session_eight_processes_count_to_200() {
    let schema = Schema::new("session");
    contend(&schema.url("session"));
}

#[test]
fn postgres_lease_eight_processes_count_to_200() {
    let schema = Schema::new("lease");
    contend(&schema.url("lease"));
}

#[test]
fn postgres_exit_codes() {
    let schema = Schema::new("codes");
    exit_codes(&schema.url("lease"));
}

#[test]
fn the_embedded_default_is_refused() {
    let dir = TempDir::new().expect("temp dir");
    let out = Command::new(env!("CARGO_BIN_EXE_statectl"))
        .current_dir(dir.path())
        .env_remove("STATE_URL")
        .args(["lock", "run", "x", "--", "true"])
        .output()
        .expect("statectl");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("redis://") && err.contains("postgres://"),
        "{err}"
    );
    assert!(
        !dir.path().join(".statectl").exists(),
        "no store was created"
    );
}
