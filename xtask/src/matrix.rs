//! `cargo xtask test-all --matrix`: the conformance suite and the model-based properties
//! across backends and topologies × layers, one process per cell (the `matrix` test of
//! `testing`, which starts the cell's servers through the fixtures), then one table.
//!
//! A cell that fails is shown with the cases that failed and the first panics from its
//! log (target/matrix/CELL-LAYERS.log), and fails the run: no cell is skipped or hidden.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::docker::DockerEnv;
use crate::util::{self, Outcome, cargo, human};

/// The cells, in the table's order; the `matrix` test of `testing` knows the same names.
pub const CELLS: &[&str] = &[
    "memory",
    "redb-immediate",
    "redb-eventual",
    "redis",
    "redis-sentinel",
    "redis-sentinel-replicas",
    "redis-cluster",
    "redis-cluster-replicas",
    "redis-tls",
    "redis-container",
    "postgres",
    "postgres-pgbouncer",
    "postgres-replica-reads",
    "postgres-container",
];

/// The layer sets: none, and every layer of state-core and state-metrics.
pub const LAYERS: &[&str] = &["bare", "full"];

/// One row of the table.
#[derive(Debug)]
struct Row {
    cell: String,
    cases: u64,
    passed: u64,
    seconds: f64,
    failed: Vec<String>,
    /// Why the cell did not run its suites (its servers did not start, say).
    problem: Option<String>,
}

/// The matrix's arguments, from `test-all`'s.
#[derive(Debug, Clone)]
pub struct Selection {
    pub cells: Vec<String>,
    pub layers: Vec<String>,
    pub cases: u32,
}

/// Runs the selected cells; one table; `ok` only if every cell passed.
pub fn run(
    selection: &Selection,
    env: &[(&str, String)],
    docker: Result<&DockerEnv, &anyhow::Error>,
) -> Result<Outcome> {
    for cell in &selection.cells {
        if !CELLS.contains(&cell.as_str()) {
            bail!("no matrix cell {cell}; the cells are {}", CELLS.join(", "));
        }
    }
    for layers in &selection.layers {
        if !LAYERS.contains(&layers.as_str()) {
            bail!("no layer set {layers}; use {}", LAYERS.join(" or "));
        }
    }
    let start = Instant::now();
    let dir = util::workspace_root().join("target").join("matrix");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let binary = build(env)?;
    let base = || {
        // The binary built once, run directly: no cargo between cells, and the same build
        // for all of them even if sources change meanwhile.
        let mut cmd = Command::new(&binary);
        cmd.current_dir(util::workspace_root().join("crates").join("testing"))
            .args(["--test-threads", "1", "--nocapture"]);
        for (name, value) in env {
            cmd.env(name, value);
        }
        cmd.env("PROPTEST_CASES", selection.cases.to_string());
        if let Ok(docker) = docker {
            docker.apply(&mut cmd);
        }
        cmd
    };
    let mut rows = Vec::new();
    for cell in &selection.cells {
        for layers in &selection.layers {
            let name = format!("{cell}/{layers}");
            if cell.ends_with("-container")
                && let Err(e) = docker
            {
                rows.push(Row::broken(name, format!("no Docker engine: {e:#}")));
                continue;
            }
            let stem = dir.join(format!("{cell}-{layers}"));
            let mut cmd = base();
            cmd.env("STATE_MATRIX_CELL", cell)
                .env("STATE_MATRIX_LAYERS", layers)
                .env("STATE_MATRIX_REPORT", stem.with_extension("report"));
            let row = run_cell(name, &mut cmd, &stem)?;
            println!("{}", row.line());
            rows.push(row);
        }
    }
    print_table(&rows, selection.cases);
    Ok(Outcome {
        ok: rows.iter().all(Row::ok),
        elapsed: start.elapsed(),
    })
}

/// Builds the `matrix` test of `testing` (feature `containers`); the path of its binary.
fn build(env: &[(&str, String)]) -> Result<std::path::PathBuf> {
    let mut cmd = cargo();
    cmd.args(["test", "-p", "testing", "--features", "containers"])
        .args(["--test", "matrix", "--no-run", "--message-format", "json"]);
    for (name, value) in env {
        cmd.env(name, value);
    }
    println!("$ {}", util::show(&cmd));
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!("the matrix test did not build");
    }
    // One JSON object a line; the test's artifact is the one with an executable.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"name\":\"matrix\"")
        })
        .find_map(|l| {
            let rest = l.split("\"executable\":\"").nth(1)?;
            Some(std::path::PathBuf::from(rest.split('"').next()?))
        })
        .context("cargo built the matrix test but named no executable")
}

/// Runs one cell with its output in `STEM.log`; its row from `STEM.report`.
fn run_cell(name: String, cmd: &mut Command, stem: &Path) -> Result<Row> {
    let report = stem.with_extension("report");
    let log_path = stem.with_extension("log");
    let _ = std::fs::remove_file(&report);
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("cannot run {}", util::show(cmd)))?;
    let seconds = start.elapsed().as_secs_f64();
    let mut row = match std::fs::read_to_string(&report) {
        Ok(line) => Row::parse(name, &line),
        Err(_) => Row::broken(name, first_panics(&log_path)),
    };
    row.seconds = seconds;
    if !status.success() && row.problem.is_none() && row.failed.is_empty() {
        row.problem = Some(first_panics(&log_path));
    }
    if !row.ok() {
        println!("{}", indent(&first_panics(&log_path)));
        println!("    (whole log: {})", log_path.display());
    }
    Ok(row)
}

impl Row {
    fn broken(cell: String, problem: String) -> Row {
        Row {
            cell,
            cases: 0,
            passed: 0,
            seconds: 0.0,
            failed: Vec::new(),
            problem: Some(problem),
        }
    }

    /// From `cases=N passed=M millis=T failed=a,b`.
    fn parse(cell: String, line: &str) -> Row {
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .unwrap_or_default()
        };
        let number = |key| field(key).parse::<u64>().ok();
        match (number("cases"), number("passed")) {
            (Some(cases), Some(passed)) => Row {
                cell,
                cases,
                passed,
                seconds: 0.0,
                failed: field("failed")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                problem: None,
            },
            _ => Row::broken(cell, format!("unreadable report {line:?}")),
        }
    }

    fn ok(&self) -> bool {
        self.problem.is_none() && self.failed.is_empty() && self.cases > 0
    }

    fn line(&self) -> String {
        let verdict = if self.ok() { "ok" } else { "FAILED" };
        format!(
            "matrix     {:<32} {verdict} ({}/{} in {})",
            self.cell,
            self.passed,
            self.cases,
            human(std::time::Duration::from_secs_f64(self.seconds))
        )
    }
}

/// Each of the first three `panicked at` lines of a log with the three lines after it
/// (the message, and an assertion's left and right), for the console.
fn first_panics(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains("panicked at") {
            let message: Vec<&str> = lines
                .iter()
                .skip(i + 1)
                .take(3)
                .take_while(|l| !l.starts_with("stack backtrace") && !l.starts_with("note:"))
                .map(|l| l.trim())
                .collect();
            let mut text = format!("{} {}", line.trim(), message.join(" "));
            if let Some((cut, _)) = text.char_indices().nth(400) {
                text.truncate(cut);
                text.push('…');
            }
            out.push(text);
            if out.len() == 3 {
                break;
            }
        }
    }
    if out.is_empty() {
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        return format!("no panic in the log; it ends: {tail}");
    }
    out.join("\n")
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn print_table(rows: &[Row], cases: u32) {
    println!("\nmatrix (PROPTEST_CASES={cases}; a case is a conformance case or a property case)");
    println!(
        "{:<32} {:>6} {:>7} {:>8}  result",
        "cell", "cases", "passed", "time"
    );
    for row in rows {
        let result = match (&row.problem, row.failed.is_empty()) {
            (Some(problem), _) => {
                format!("NOT RUN: {}", problem.lines().next().unwrap_or_default())
            }
            (None, true) => "ok".to_owned(),
            (None, false) if row.failed.len() > 4 => format!(
                "FAILED: {} and {} more",
                row.failed[..4].join(", "),
                row.failed.len() - 4
            ),
            (None, false) => format!("FAILED: {}", row.failed.join(", ")),
        };
        println!(
            "{:<32} {:>6} {:>7} {:>7.1}s  {result}",
            row.cell, row.cases, row.passed, row.seconds
        );
    }
    let passed = rows.iter().filter(|r| r.ok()).count();
    let seconds: f64 = rows.iter().map(|r| r.seconds).sum();
    println!("{passed} of {} cells passed in {:.0}s", rows.len(), seconds);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read_back_and_failures_fail_the_row() {
        let row = Row::parse(
            "redis/full".into(),
            "cases=106 passed=105 millis=1356 failed=empty_key\n",
        );
        assert_eq!((row.cases, row.passed), (106, 105));
        assert_eq!(row.failed, vec!["empty_key".to_owned()]);
        assert!(!row.ok());
        let clean = Row::parse(
            "memory/bare".into(),
            "cases=106 passed=106 millis=9 failed=",
        );
        assert!(clean.ok());
        assert!(!Row::parse("x".into(), "garbage").ok());
    }
}
