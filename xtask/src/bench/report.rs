//! What a benchmark writes: the machine line, goal verdicts and BENCHMARKS.md sections.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::util;

/// Whether a measured figure meets its goal (`at_most`: the figure is a ceiling).
pub(super) fn met(x: f64, goal: f64, at_most: bool) -> bool {
    (at_most && x <= goal) || (!at_most && x >= goal)
}

/// The verdict of a measured ratio against its goal.
pub(super) fn verdict(x: f64, goal: f64, at_most: bool) -> &'static str {
    if met(x, goal, at_most) {
        "met"
    } else {
        "NOT met"
    }
}

pub(super) fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown memory".into());
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let rustc = command_line(
        &std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into()),
        &["--version"],
    );
    format!("Machine: {cores} cores (nproc), {cpu}, {mem_gib} memory; {rustc}; run {date}.")
}

pub(super) fn command_line(program: &str, args: &[&str]) -> String {
    util::capture(Command::new(program).args(args))
        .map(|out| out.trim().to_string())
        .unwrap_or_else(|| format!("({program} unavailable)"))
}

pub(super) const HEADER: &str = "# Benchmarks\n\n\
Written by `cargo xtask bench [embedded|redis|postgres|locks|overhead|checkpoint|compression|peers|all]`; each \
section is replaced when that part is measured. Every number is compared with the raw engine \
(`overhead`: with the bare backend) measured in the same run on the same machine, with the \
same value size, keyspace, concurrency and batch size (DESIGN.md, \"Performance method\"). \
Machines are shared and noisy: the ratios matter more than the absolute numbers.\n";

/// Replaces the `backend` section of BENCHMARKS.md (between its markers), keeping the others.
pub(super) fn write_section(root: &Path, backend: &str, body: &str) -> Result<()> {
    let path = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_else(|_| HEADER.to_string());
    let start = format!("<!-- bench:{backend}:start -->");
    let end = format!("<!-- bench:{backend}:end -->");
    let section = format!("{start}\n{body}{end}");
    let new = match (old.find(&start), old.find(&end)) {
        (Some(s), Some(e)) if e > s => format!("{}{section}{}", &old[..s], &old[e + end.len()..]),
        _ => format!("{}\n\n{section}\n", old.trim_end()),
    };
    std::fs::write(&path, new).with_context(|| format!("cannot write {}", path.display()))
}
