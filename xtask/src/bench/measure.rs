//! One measured comparison: the shape both sides run, each side's medians over paired
//! runs, and the ours/raw ratios.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::options::Options;

/// Values written by every workload, in bytes.
pub(super) const VALUE_SIZE: u64 = 64;
/// Keys every workload draws from.
pub(super) const KEYSPACE: u64 = 100_000;

/// One row of the comparison.
#[derive(Debug, Clone)]
pub(super) struct Case {
    pub(super) label: &'static str,
    pub(super) workload: &'static str,
    pub(super) ops: u64,
    pub(super) batch: u64,
}

pub(super) const fn case(
    label: &'static str,
    workload: &'static str,
    ops: u64,
    batch: u64,
) -> Case {
    Case {
        label,
        workload,
        ops,
        batch,
    }
}

/// The medians of one side of one case.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Stats {
    pub(super) ops_per_sec: f64,
    pub(super) p50_us: f64,
    pub(super) p99_us: f64,
    /// Process CPU time per key (all threads), 0 where unknown.
    pub(super) cpu_us_per_op: f64,
}

pub(super) struct Row {
    pub(super) case: Case,
    pub(super) ours: Stats,
    pub(super) raw: Stats,
    /// The median of the per-run ratios: each run's two sides ran back to back, so they saw
    /// the same load from whatever else shares the machine.
    pub(super) ratio: f64,
    /// The median of the per-run raw ÷ ours CPU time per key: our efficiency, which other
    /// programs on the machine do not move the way they move wall-clock throughput.
    pub(super) cpu_ratio: f64,
}

fn ratio(ours: &Stats, raw: &Stats) -> f64 {
    if raw.ops_per_sec > 0.0 {
        ours.ops_per_sec / raw.ops_per_sec
    } else {
        0.0
    }
}

fn cpu_ratio(ours: &Stats, raw: &Stats) -> f64 {
    if ours.cpu_us_per_op > 0.0 {
        raw.cpu_us_per_op / ours.cpu_us_per_op
    } else {
        0.0
    }
}

/// Runs each side `runs` times, alternating which goes first so neither always meets a
/// warmer (or busier) machine; `side(is_raw)` runs one side once.
pub(super) fn paired(
    label: &str,
    runs: usize,
    mut side: impl FnMut(bool) -> Result<Stats>,
) -> Result<(Vec<Stats>, Vec<Stats>)> {
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    for run in 0..runs {
        let mut sides = [false, true];
        if run % 2 == 1 {
            sides.reverse();
        }
        for is_raw in sides {
            let stats = side(is_raw)?;
            let name = if is_raw { "raw " } else { "ours" };
            println!(
                "  {label:<16} {name} run {}: {:>10.0} ops/s  p50 {:>9.1} µs  p99 {:>9.1} µs  \
                 CPU {:>6.2} µs/op",
                run + 1,
                stats.ops_per_sec,
                stats.p50_us,
                stats.p99_us,
                stats.cpu_us_per_op
            );
            if is_raw {
                raw.push(stats)
            } else {
                ours.push(stats)
            }
        }
    }
    Ok((ours, raw))
}

impl Row {
    /// The medians of both sides and of the per-run ratios.
    pub(super) fn new(case: Case, ours: &[Stats], raw: &[Stats]) -> Row {
        let ratios = ours.iter().zip(raw).map(|(o, r)| ratio(o, r)).collect();
        let cpu_ratios = ours.iter().zip(raw).map(|(o, r)| cpu_ratio(o, r)).collect();
        Row {
            case,
            ours: median(ours),
            raw: median(raw),
            ratio: median_of(ratios),
            cpu_ratio: median_of(cpu_ratios),
        }
    }
}

/// The `--workload … --json FILE` options both tools take, for one case.
pub(super) fn shape_args(case: &Case, ops: u64, concurrency: u64, json: &Path) -> Vec<String> {
    vec![
        "--workload".into(),
        case.workload.into(),
        "--ops".into(),
        ops.to_string(),
        "--concurrency".into(),
        concurrency.to_string(),
        "--value-size".into(),
        VALUE_SIZE.to_string(),
        "--keyspace".into(),
        KEYSPACE.to_string(),
        "--batch".into(),
        case.batch.to_string(),
        "--json".into(),
        json.display().to_string(),
    ]
}

/// `ops`, or a tenth of it (at least one batch) for `--quick`.
pub(super) fn scaled(case: &Case, opts: &Options) -> u64 {
    if opts.quick {
        (case.ops / 10).max(case.batch)
    } else {
        case.ops
    }
}

pub(super) fn run_one(cmd: &mut Command, json: &Path) -> Result<Stats> {
    let _ = std::fs::remove_file(json);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text =
        std::fs::read_to_string(json).with_context(|| format!("{cmd:?} wrote no JSON report"))?;
    let field = |key: &str| {
        json_number(&text, key).with_context(|| format!("no `{key}` in the JSON of {cmd:?}"))
    };
    let ops = field("ops")?;
    let cpu_ms = json_number(&text, "cpu_ms").unwrap_or(0.0);
    Ok(Stats {
        ops_per_sec: field("ops_per_sec")?,
        p50_us: field("p50_us")?,
        p99_us: field("p99_us")?,
        cpu_us_per_op: if ops > 0.0 { cpu_ms * 1e3 / ops } else { 0.0 },
    })
}

/// The first number stored under `"key"` in a JSON text (our reports hold one result row).
pub(super) fn json_number(text: &str, key: &str) -> Option<f64> {
    let quoted = format!("\"{key}\"");
    let after = &text[text.find(&quoted)? + quoted.len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let end = after
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(after.len());
    after[..end].parse().ok()
}

/// The first string stored under `"key"` in a JSON text (no escapes inside: our reports
/// write plain text there).
pub(super) fn json_string(text: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    let after = &text[text.find(&quoted)? + quoted.len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let inside = after.strip_prefix('"')?;
    Some(inside[..inside.find('"')?].to_string())
}

/// The array of numbers stored under `"key"` in a JSON text: `"key": [1.5, 2, 3e2]`.
pub(super) fn json_numbers(text: &str, key: &str) -> Option<Vec<f64>> {
    let quoted = format!("\"{key}\"");
    let after = &text[text.find(&quoted)? + quoted.len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let inside = &after.strip_prefix('[')?[..after.find(']')? - 1];
    if inside.trim().is_empty() {
        return Some(Vec::new());
    }
    inside.split(',').map(|n| n.trim().parse().ok()).collect()
}

pub(super) fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub(super) fn median(samples: &[Stats]) -> Stats {
    let pick = |f: fn(&Stats) -> f64| median_of(samples.iter().map(f).collect());
    Stats {
        ops_per_sec: pick(|s| s.ops_per_sec),
        p50_us: pick(|s| s.p50_us),
        p99_us: pick(|s| s.p99_us),
        cpu_us_per_op: pick(|s| s.cpu_us_per_op),
    }
}
