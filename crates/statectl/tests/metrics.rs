//! `statectl --metrics-addr`: the lock and backend operations of any command served as
//! Prometheus metrics while it runs, checked by `promtool check metrics`.

use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;
use testing::services::process::free_port;
use testing::services::promtool;

fn statectl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_statectl"))
        .current_dir(dir)
        .env_remove("STATE_URL")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run statectl {args:?}: {e}"))
}

#[test]
fn a_command_run_under_a_lock_can_scrape_the_metrics_of_its_own_statectl() {
    let dir = TempDir::new().expect("temp dir");
    let port = free_port().unwrap_or_else(|e| panic!("{e}"));
    let addr = format!("127.0.0.1:{port}");
    // The command under the lock scrapes statectl's endpoint (bash's /dev/tcp: no HTTP
    // client needed), so the scrape happens while statectl runs, by construction.
    let scrape = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port} && printf 'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\
         Connection: close\\r\\n\\r\\n' >&3 && cat <&3 > scrape.txt"
    );
    let out = statectl(
        dir.path(),
        &[
            "--url",
            "memory://",
            "--metrics-addr",
            &addr,
            "lock",
            "run",
            "job",
            "--",
            "bash",
            "-c",
            &scrape,
        ],
    );
    assert!(
        out.status.success(),
        "statectl lock run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let response = std::fs::read_to_string(dir.path().join("scrape.txt"))
        .unwrap_or_else(|e| panic!("no scrape was saved: {e}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        body.contains("state_lock_operations_total{operation=\"acquire\",outcome=\"ok\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("# TYPE state_lock_acquire_duration_seconds histogram"),
        "{body}"
    );

    promtool(dir.path(), &["check", "metrics"], Some(body)).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_bad_metrics_address_is_a_usage_error() {
    let dir = TempDir::new().expect("temp dir");
    let out = statectl(
        dir.path(),
        &[
            "--url",
            "memory://",
            "--metrics-addr",
            "nowhere",
            "get",
            "k",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--metrics-addr nowhere"), "{stderr}");
}
