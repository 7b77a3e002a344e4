//! statectl against the real Redis and PostgreSQL servers (DESIGN.md "Services"):
//! `STATE_TEST_REDIS_URL` / `STATE_TEST_POSTGRES_URL`, else the local defaults. Each test
//! works under its own key prefix or schema and removes it, also when it fails.

use std::process::{Command, Output};
use std::time::Instant;

use state_core::StateUrl;
use tempfile::TempDir;

mod common;

use common::{one_sentence_failure, output, service_url, statectl, text, unique, with_param};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const REDIS_DEFAULT: &str = "redis://127.0.0.1:6379";
const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).env_remove("STATE_URL");
    for (k, v) in env {
        cmd.env(k, v);
    }
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run {program} {args:?}: {e}"),
    }
}

/// statectl with `--url url`, run from a fresh directory so no default store is touched.
struct Cli {
    url: String,
    dir: TempDir,
}

impl Cli {
    fn new(url: String) -> Result<Self, std::io::Error> {
        Ok(Cli {
            url,
            dir: TempDir::new()?,
        })
    }

    fn out(&self, args: &[&str]) -> Output {
        output(statectl(self.dir.path(), Some(&self.url), args), args)
    }

    /// A command that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.out(args);
        assert!(
            out.status.success(),
            "statectl --url {} {args:?} failed ({:?}): {}",
            redacted(&self.url),
            out.status.code(),
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// A command that must fail with `code`, one sentence on stderr and nothing on stdout;
    /// that sentence.
    fn fails(&self, args: &[&str], code: i32) -> String {
        one_sentence_failure(&self.out(args), args, code)
    }
}

fn redacted(url: &str) -> String {
    testing::services::parse_url(url)
        .map(|u| u.redacted())
        .unwrap_or_else(|_| "(unparseable URL)".into())
}

// ---------------------------------------------------------------- Redis

/// redis-cli against the server of `STATE_TEST_REDIS_URL`.
struct RedisCli {
    args: Vec<String>,
    password: Option<String>,
}

impl RedisCli {
    fn new(url: &StateUrl) -> Self {
        let host = url.hosts().first();
        let mut args = vec![
            "-h".to_owned(),
            host.map_or_else(|| "127.0.0.1".to_owned(), |h| h.host.clone()),
            "-p".to_owned(),
            host.map_or(6379, |h| h.port).to_string(),
            "-n".to_owned(),
            url.path()
                .filter(|p| !p.is_empty())
                .unwrap_or("0")
                .to_owned(),
        ];
        if let Some(user) = url.username().filter(|u| !u.is_empty()) {
            args.extend(["--user".to_owned(), user.to_owned()]);
        }
        RedisCli {
            args,
            password: url.password().map(|p| p.expose().to_owned()),
        }
    }

    fn output(&self, command: &[&str]) -> Output {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.extend(command);
        // REDISCLI_AUTH keeps the password off the command line.
        let env: Vec<(&str, &str)> = self
            .password
            .as_deref()
            .map(|p| ("REDISCLI_AUTH", p))
            .into_iter()
            .collect();
        run("redis-cli", &args, &env)
    }

    fn call(&self, command: &[&str]) -> String {
        let out = self.output(command);
        assert!(
            out.status.success(),
            "redis-cli {command:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout).trim().to_owned()
    }

    fn pttl(&self, key: &str) -> i64 {
        let reply = self.call(&["PTTL", key]);
        match reply.parse() {
            Ok(ms) => ms,
            Err(_) => panic!("redis-cli PTTL {key} replied {reply:?}"),
        }
    }
}

/// Deletes the test's keys when the test ends, passed or failed.
struct RedisKeys<'a> {
    cli: &'a RedisCli,
    keys: Vec<String>,
}

impl Drop for RedisKeys<'_> {
    fn drop(&mut self) {
        let mut command = vec!["DEL"];
        command.extend(self.keys.iter().map(String::as_str));
        let _ = self.cli.output(&command);
    }
}

/// `put … --ttl` then PTTL, which must lie in [ttl - elapsed, ttl]: `elapsed` covers both
/// processes, so the check holds on a loaded machine too. A key that expired before PTTL
/// ran (only possible when more than `ttl` passed) is written again, a bounded number of times.
fn put_with_ttl_then_pttl(cli: &Cli, redis: &RedisCli, key: &str, full_key: &str, ttl_ms: i64) {
    let ttl_arg = format!("{ttl_ms}ms");
    for _ in 0..3 {
        let started = Instant::now();
        cli.ok(&["put", key, "v", "--ttl", &ttl_arg]);
        let pttl = redis.pttl(full_key);
        let elapsed = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        if pttl == -2 && elapsed >= ttl_ms {
            continue;
        }
        assert!(
            pttl > 0 && pttl <= ttl_ms && pttl >= ttl_ms - elapsed - 1,
            "PTTL {full_key} = {pttl} after --ttl {ttl_arg} ({elapsed} ms passed)"
        );
        return;
    }
    panic!("{full_key} expired before PTTL ran, three times: the machine is too loaded");
}

#[test]
fn redis_put_ttl_sets_the_server_pttl_and_a_plain_put_clears_it() -> TestResult {
    let url = service_url("STATE_TEST_REDIS_URL", REDIS_DEFAULT);
    let parsed = testing::services::parse_url(&url)?;
    let redis = RedisCli::new(&parsed);
    let prefix = format!("{}:", unique("redis"));
    let cli = Cli::new(with_param(&url, "prefix", &prefix))?;
    let _cleanup = RedisKeys {
        cli: &redis,
        keys: vec![format!("{prefix}k"), format!("{prefix}short")],
    };
    // The acceptance: the key lands under the URL's prefix with the TTL asked for.
    put_with_ttl_then_pttl(&cli, &redis, "k", &format!("{prefix}k"), 1500);
    assert_eq!(redis.call(&["GET", &format!("{prefix}k")]), "v");
    put_with_ttl_then_pttl(&cli, &redis, "short", &format!("{prefix}short"), 300);

    cli.ok(&["put", "k", "w"]);
    assert_eq!(redis.pttl(&format!("{prefix}k")), -1);
    assert_eq!(cli.ok(&["ttl", "k"]), "persistent\n");
    assert_eq!(cli.ok(&["get", "k"]), "w\n");
    assert_eq!(cli.ok(&["del", "k"]), "1\n");
    assert_eq!(redis.pttl(&format!("{prefix}k")), -2);
    cli.fails(&["get", "k"], 1);
    Ok(())
}

#[test]
fn redis_checkpoint_is_refused_with_exit_2() -> TestResult {
    let url = service_url("STATE_TEST_REDIS_URL", REDIS_DEFAULT);
    let err = Cli::new(url)?.fails(&["checkpoint", "list"], 2);
    assert!(err.contains("postgres://"), "{err}");
    Ok(())
}

// ---------------------------------------------------------------- PostgreSQL

/// Drops the test's schema when the test ends, passed or failed.
struct Schema {
    url: StateUrl,
    name: String,
}

impl Schema {
    fn drop_it(&self) -> Output {
        let host = self.url.hosts().first();
        let port = host.map_or(5432, |h| h.port).to_string();
        let sql = format!("drop schema if exists \"{}\" cascade", self.name);
        let env: Vec<(&str, &str)> = self
            .url
            .password()
            .map(|p| ("PGPASSWORD", p.expose()))
            .into_iter()
            .collect();
        run(
            "psql",
            &[
                "-h",
                host.map_or("127.0.0.1", |h| &h.host),
                "-p",
                &port,
                "-U",
                self.url.username().unwrap_or("postgres"),
                "-d",
                self.url.path().unwrap_or("test"),
                "-q",
                "-c",
                &sql,
            ],
            &env,
        )
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let out = self.drop_it();
        if !out.status.success() {
            eprintln!("could not drop schema {}: {}", self.name, text(&out.stderr));
        }
    }
}

#[test]
fn postgres_data_commands_and_checkpoints_round_trip() -> TestResult {
    let url = service_url("STATE_TEST_POSTGRES_URL", POSTGRES_DEFAULT);
    let schema = Schema {
        url: testing::services::parse_url(&url)?,
        name: unique("pg"),
    };
    let cli = Cli::new(with_param(&url, "schema", &schema.name))?;

    cli.ok(&["put", "a", "1"]);
    cli.ok(&["put", "b", "2"]);
    cli.ok(&["put", "t", "x", "--ttl", "10m"]);
    assert_eq!(cli.ok(&["get", "a"]), "1\n");
    assert_eq!(cli.ok(&["ttl", "a"]), "persistent\n");
    let left: u64 = cli.ok(&["ttl", "t"]).trim().parse()?;
    assert!(left > 0 && left <= 600_000, "ttl printed {left}");
    assert_eq!(cli.ok(&["scan"]), "a\nb\nt\n");
    assert_eq!(cli.ok(&["scan", "b", "--values"]), "b\t2\n");
    assert_eq!(cli.ok(&["count"]), "3\n");
    assert_eq!(cli.ok(&["count", "t"]), "1\n");
    cli.fails(&["get", "nope"], 1);

    assert_eq!(cli.ok(&["checkpoint", "list"]), "");
    let id = cli.ok(&["checkpoint", "create"]);
    let id: i64 = id.trim().parse()?;
    let listed = cli.ok(&["checkpoint", "list"]);
    let fields: Vec<&str> = listed.trim_end_matches('\n').split('\t').collect();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert_eq!(fields.len(), 4, "{listed}");
    assert_eq!(fields.first().copied(), Some(id.to_string().as_str()));
    let created = fields.get(1).copied().unwrap_or_default();
    assert!(
        created.len() >= 20 && created.ends_with('Z') && created.get(10..11) == Some("T"),
        "created_at {created} is not RFC 3339 UTC"
    );
    // Three entries of one-byte keys and one-byte values.
    assert_eq!(fields.get(2..), Some(&["3", "6"][..]), "{listed}");

    cli.ok(&["put", "a", "changed"]);
    assert_eq!(cli.ok(&["del", "b"]), "1\n");
    cli.ok(&["put", "c", "new"]);
    cli.ok(&["put", "t", "y"]);
    assert_eq!(cli.ok(&["ttl", "t"]), "persistent\n");

    assert_eq!(cli.ok(&["checkpoint", "restore", &id.to_string()]), "");
    assert_eq!(cli.ok(&["scan", "--values"]), "a\t1\nb\t2\nt\tx\n");
    let left: u64 = cli.ok(&["ttl", "t"]).trim().parse()?;
    assert!(left > 0 && left <= 600_000, "restored ttl printed {left}");
    cli.fails(&["get", "c"], 1);

    let second: i64 = cli.ok(&["checkpoint", "create"]).trim().parse()?;
    assert!(second > id, "ids grow: {id} then {second}");
    assert_eq!(cli.ok(&["checkpoint", "delete", &id.to_string()]), "");
    let listed = cli.ok(&["checkpoint", "list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with(&format!("{second}\t")), "{listed}");

    for command in ["restore", "delete"] {
        let err = cli.fails(&["checkpoint", command, &id.to_string()], 1);
        assert!(
            err.contains(&format!("checkpoint {id} does not exist")),
            "{err}"
        );
    }
    cli.fails(&["checkpoint", "restore", "not-a-number"], 2);
    // The failed restore changed nothing.
    assert_eq!(cli.ok(&["count"]), "3\n");
    Ok(())
}

#[test]
fn checkpoint_on_embedded_or_memory_stores_is_a_usage_error() -> TestResult {
    let dir = TempDir::new()?;
    let redb = format!("redb:{}", dir.path().join("s.redb").display());
    for url in [redb.as_str(), "memory://"] {
        let cli = Cli::new(url.to_owned())?;
        for args in [
            &["checkpoint", "create"][..],
            &["checkpoint", "restore", "1"],
        ] {
            let err = cli.fails(args, 2);
            assert!(
                err.contains("need a postgres:// URL") && err.contains("export()"),
                "{err}"
            );
        }
    }
    // Without --url or STATE_URL the default embedded store is refused the same way, and
    // no .statectl directory is created for it.
    let out = Command::new(env!("CARGO_BIN_EXE_statectl"))
        .current_dir(dir.path())
        .env_remove("STATE_URL")
        .args(["checkpoint", "list"])
        .output()?;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(!dir.path().join(".statectl").exists());
    Ok(())
}

#[test]
fn an_unreachable_postgres_is_exit_3() -> TestResult {
    // Port 1 on loopback: nothing listens there.
    let cli = Cli::new("postgres://postgres@127.0.0.1:1/test?connect_timeout=2s".into())?;
    cli.fails(&["checkpoint", "list"], 3);
    Ok(())
}
