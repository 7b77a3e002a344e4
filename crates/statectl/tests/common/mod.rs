//! Helpers shared by the statectl integration tests that talk to real servers.

#![allow(dead_code)]

pub mod checkpoints;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

pub fn service_url(env: &str, default: &str) -> String {
    std::env::var(env)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A name no other test or run uses.
pub fn unique(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("statectl_{tag}_{}_{nanos:09}", std::process::id())
}

/// `url` with one more query parameter (`redis://h:p` becomes `redis://h:p/?name=value`).
pub fn with_param(url: &str, name: &str, value: &str) -> String {
    let has_path = url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    let separator = match (url.contains('?'), has_path) {
        (true, _) => "&",
        (false, true) => "?",
        (false, false) => "/?",
    };
    format!("{url}{separator}{name}={value}")
}

/// `statectl [--url URL] ARGS…` run in `dir`, with no `STATE_URL` from the environment.
pub fn statectl(dir: &Path, url: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_statectl"));
    cmd.current_dir(dir).env_remove("STATE_URL");
    if let Some(url) = url {
        cmd.arg("--url").arg(url);
    }
    cmd.args(args);
    cmd
}

/// What `cmd` printed and how it ended; a test failure if it could not be started.
pub fn output(mut cmd: Command, args: &[&str]) -> Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run statectl {args:?}: {e}"),
    }
}

/// Bytes a process printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks that `out` failed with `code`, one sentence on stderr and nothing on stdout;
/// that sentence.
pub fn one_sentence_failure(out: &Output, args: &[&str], code: i32) -> String {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr: {err}");
    assert!(err.starts_with("statectl: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "stdout: {}", text(&out.stdout));
    err
}
