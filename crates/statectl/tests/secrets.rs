//! RELIABILITY.md case 28 for the CLI: a password in the URL never shows in statectl's
//! stdout, stderr or `bench --json` report, whether the command succeeds or fails.
//!
//! Every URL form that carries a password is tried with a distinctive one: `:PW@` and
//! `user:PW@` user info on redis://, redis+sentinel:// and postgres:// URLs, the same in
//! `$STATE_URL`, and `?password=PW`, which no backend accepts (the refusal names the
//! parameter, never its value). The servers are private: a redis-server with
//! `requirepass`, and a PostgreSQL whose test user logs in with SCRAM (so a wrong password
//! is really refused; the shared server trusts every login).

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;

use common::{output, statectl, text};
use testing::services::{LocalPostgres, LocalPostgresOptions, LocalRedis, LocalRedisOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The password of the servers' users.
const SECRET: &str = "Sup3rS3cretXYZ";
/// A wrong one, as distinctive.
const WRONG: &str = "Wr0ngS3cretQRS";

/// Options that make a failing connection fail at once: no retries, no waiting for a
/// server that is away.
const QUICK: &str = "retries=0&failover_timeout=0s&connect_timeout=2s";

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> Result<u16, std::io::Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Runs statectl and checks that neither password appears in what it printed.
fn run(dir: &Path, url: &str, args: &[&str]) -> Output {
    let out = output(statectl(dir, Some(url), args), args);
    clean(args, &out);
    out
}

fn clean(args: &[&str], out: &Output) {
    for (name, stream) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let shown = text(stream);
        for secret in [SECRET, WRONG] {
            assert!(
                !shown.contains(secret),
                "statectl {args:?} printed the password on {name}: {shown}"
            );
        }
    }
}

#[track_caller]
fn succeeds(out: &Output, args: &[&str]) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "statectl {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[track_caller]
fn fails_with(out: &Output, args: &[&str], code: i32) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "statectl {args:?}: {err}");
    assert!(err.starts_with("statectl: "), "statectl {args:?}: {err}");
    err
}

/// put, get, count, scan, ttl, del, then a small bench with a JSON report: all succeed,
/// and neither the output nor the report holds the password.
fn data_commands_and_bench(dir: &Path, url: &str) -> TestResult {
    succeeds(&run(dir, url, &["put", "sec-key", "sec-value"]), &["put"]);
    let got = succeeds(&run(dir, url, &["get", "sec-key"]), &["get"]);
    assert_eq!(got.trim(), "sec-value");
    assert_eq!(
        succeeds(&run(dir, url, &["count", "sec-"]), &["count"]).trim(),
        "1"
    );
    succeeds(&run(dir, url, &["scan", "sec-", "--values"]), &["scan"]);
    succeeds(&run(dir, url, &["ttl", "sec-key"]), &["ttl"]);
    succeeds(&run(dir, url, &["del", "sec-key"]), &["del"]);

    let report = dir.join("bench.json");
    let report_arg = report.display().to_string();
    let args = [
        "bench",
        "--workload",
        "mixed",
        "--ops",
        "200",
        "--keyspace",
        "50",
        "--concurrency",
        "2",
        "--json",
        &report_arg,
    ];
    let table = succeeds(&run(dir, url, &args), &args);
    assert!(
        table.contains(":***@"),
        "the table names the server: {table}"
    );
    let json = std::fs::read_to_string(&report)?;
    for secret in [SECRET, WRONG] {
        assert!(
            !json.contains(secret),
            "bench --json holds the password: {json}"
        );
    }
    let parsed: serde_json::Value = serde_json::from_str(&json)?;
    let shown = parsed["url"].as_str().unwrap_or_default();
    assert!(shown.contains(":***@"), "the report's url: {json}");
    std::fs::remove_file(&report)?;
    Ok(())
}

#[test]
fn redis_passwords_stay_out_of_statectl_output() -> TestResult {
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(LocalRedis::start(LocalRedisOptions {
        password: Some(SECRET.into()),
        ..LocalRedisOptions::default()
    }))?;
    let port = server.port();
    let dir = tempfile::tempdir()?;
    let dir = dir.path();

    for url in [
        format!("redis://:{SECRET}@127.0.0.1:{port}/?prefix=sec:&{QUICK}"),
        format!("redis://default:{SECRET}@127.0.0.1:{port}/?prefix=sec:&{QUICK}"),
    ] {
        data_commands_and_bench(dir, &url)?;
    }

    // The URL in the environment instead of --url: --help does not show its value.
    let args = ["--help"];
    let mut cmd = statectl(dir, None, &args);
    cmd.env(
        "STATE_URL",
        format!("redis://:{SECRET}@127.0.0.1:{port}/?prefix=sec:"),
    );
    let out = output(cmd, &args);
    clean(&args, &out);
    succeeds(&out, &args);
    let mut cmd = statectl(dir, None, &["get", "absent"]);
    cmd.env(
        "STATE_URL",
        format!("redis://:{WRONG}@127.0.0.1:{port}/?{QUICK}"),
    );
    let out = output(cmd, &["get", "absent"]);
    clean(&["get (STATE_URL)"], &out);
    fails_with(&out, &["get (STATE_URL)"], 2);

    let closed = closed_port()?;
    let failing = [
        // A wrong password: refused by the server, a configuration error.
        (format!("redis://:{WRONG}@127.0.0.1:{port}/?{QUICK}"), 2),
        (
            format!("redis://default:{WRONG}@127.0.0.1:{port}/?{QUICK}"),
            2,
        ),
        // Nothing listens: a connection error.
        (format!("redis://:{SECRET}@127.0.0.1:{closed}/?{QUICK}"), 3),
        (
            format!("redis+sentinel://:{SECRET}@127.0.0.1:{closed}/mymaster?{QUICK}"),
            3,
        ),
        // Not a parameter any Redis URL takes.
        (
            format!("redis://127.0.0.1:{port}/?password={SECRET}&{QUICK}"),
            2,
        ),
        (format!("redis://127.0.0.1:{port}/?pass={SECRET}"), 2),
    ];
    for (url, code) in &failing {
        for args in [
            &["put", "k", "v"][..],
            &["get", "k"][..],
            &["scan"][..],
            &[
                "bench",
                "--ops",
                "10",
                "--keyspace",
                "10",
                "--concurrency",
                "1",
            ][..],
        ] {
            let out = run(dir, url, args);
            let err = fails_with(&out, args, *code);
            if url.contains("password=") {
                assert!(err.contains("`password`"), "{err}");
            }
        }
    }
    Ok(())
}

#[test]
fn postgres_passwords_stay_out_of_statectl_output() -> TestResult {
    let rt = tokio::runtime::Runtime::new()?;
    let server = rt.block_on(LocalPostgres::start(LocalPostgresOptions {
        hba: vec!["host all secuser 127.0.0.1/32 scram-sha-256".into()],
        ..LocalPostgresOptions::default()
    }))?;
    rt.block_on(server.psql(&format!(
        "SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE secuser LOGIN PASSWORD '{SECRET}'; \
         GRANT ALL ON SCHEMA public TO secuser; \
         GRANT CREATE ON DATABASE test TO secuser"
    )))?;
    let port = server.port();
    let dir = tempfile::tempdir()?;
    let dir = dir.path();

    let good = format!("postgres://secuser:{SECRET}@127.0.0.1:{port}/test?sslmode=disable&{QUICK}");
    data_commands_and_bench(dir, &good)?;

    let closed = closed_port()?;
    let failing = [
        (
            format!("postgres://secuser:{WRONG}@127.0.0.1:{port}/test?sslmode=disable&{QUICK}"),
            2,
        ),
        (
            format!("postgresql://secuser:{SECRET}@127.0.0.1:{closed}/test?{QUICK}"),
            3,
        ),
        (
            format!("postgres://secuser@127.0.0.1:{port}/test?password={SECRET}&{QUICK}"),
            2,
        ),
    ];
    for (url, code) in &failing {
        for args in [
            &["put", "k", "v"][..],
            &["get", "k"][..],
            &["count"][..],
            &[
                "bench",
                "--ops",
                "10",
                "--keyspace",
                "10",
                "--concurrency",
                "1",
            ][..],
        ] {
            let out = run(dir, url, args);
            fails_with(&out, args, *code);
        }
    }
    Ok(())
}
