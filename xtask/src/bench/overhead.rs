//! `cargo xtask bench overhead`: what the observing layers cost, bare against layered,
//! measured by distributed-state's `overhead` example (release) and summarised here.
//!
//! The example opens every backend through the registry by URL (`memory://` and
//! `memory://?stats=true&metrics=true&tracing=true`, the same on the test Redis), with the
//! Prometheus recorder installed and no tracing subscriber, runs the pairs and prints every
//! run's figure as JSON; this file takes the medians, checks issue 14's goals and writes the
//! `overhead` section of BENCHMARKS.md. A missed goal is reported, not an error.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use super::measure::{json_numbers, median_of};
use super::options::Options;
use super::report::{machine, met, verdict, write_section};
use super::tools::target_dir;
use crate::util;

/// Tasks doing Redis gets at once: `statectl bench`'s default concurrency.
const CONCURRENCY: u64 = 16;
/// Goal: the three layers add at most this many ns per get on `memory://`.
const MEMORY_GOAL_NS: f64 = 150.0;
/// Goal: layered Redis gets per second are at least this share of bare ones.
const REDIS_GOAL_RATIO: f64 = 0.97;

/// A share of the cores busy just before the run above this means other work is running.
const BUSY: f64 = 0.25;

/// `memory://`: nanoseconds per get.
#[derive(Debug, PartialEq)]
struct MemorySummary {
    bare_ns: f64,
    layered_ns: f64,
    /// Each pair's layered − bare, in pair order.
    added: Vec<f64>,
    /// The median of `added` (not the difference of the two medians).
    added_ns: f64,
}

/// Redis: gets per second and CPU time per get.
#[derive(Debug, PartialEq)]
struct RedisSummary {
    bare_ops: f64,
    layered_ops: f64,
    /// Each pair's layered ÷ bare gets per second, in pair order.
    ratios: Vec<f64>,
    /// The median of `ratios`.
    ratio: f64,
    bare_cpu_us: f64,
    layered_cpu_us: f64,
    /// The median of each pair's bare ÷ layered CPU time per get (1 = free, 0 if unknown).
    cpu_ratio: f64,
}

/// Both sides' runs in pair order, checked to be pairs.
fn pairs<'a>(what: &str, bare: &'a [f64], layered: &'a [f64]) -> Result<Vec<(f64, f64)>> {
    ensure!(
        !bare.is_empty() && bare.len() == layered.len(),
        "{what}: {} bare runs and {} layered runs are not pairs",
        bare.len(),
        layered.len()
    );
    Ok(bare.iter().copied().zip(layered.iter().copied()).collect())
}

fn memory_summary(bare: &[f64], layered: &[f64]) -> Result<MemorySummary> {
    let added: Vec<f64> = pairs("memory://", bare, layered)?
        .iter()
        .map(|(b, l)| l - b)
        .collect();
    Ok(MemorySummary {
        bare_ns: median_of(bare.to_vec()),
        layered_ns: median_of(layered.to_vec()),
        added_ns: median_of(added.clone()),
        added,
    })
}

fn redis_summary(
    bare: &[f64],
    layered: &[f64],
    bare_cpu: &[f64],
    layered_cpu: &[f64],
) -> Result<RedisSummary> {
    let ratios: Vec<f64> = pairs("Redis", bare, layered)?
        .iter()
        .map(|(b, l)| if *b > 0.0 { l / b } else { 0.0 })
        .collect();
    let cpu_ratios = pairs("Redis CPU", bare_cpu, layered_cpu)?
        .iter()
        .map(|(b, l)| if *l > 0.0 { b / l } else { 0.0 })
        .collect();
    Ok(RedisSummary {
        bare_ops: median_of(bare.to_vec()),
        layered_ops: median_of(layered.to_vec()),
        ratio: median_of(ratios.clone()),
        ratios,
        bare_cpu_us: median_of(bare_cpu.to_vec()),
        layered_cpu_us: median_of(layered_cpu.to_vec()),
        cpu_ratio: median_of(cpu_ratios),
    })
}

/// The example's JSON, summarised.
fn parse(text: &str) -> Result<(MemorySummary, RedisSummary)> {
    let field = |key: &str| {
        json_numbers(text, key).with_context(|| format!("no `{key}` array in: {}", text.trim()))
    };
    let memory = memory_summary(&field("memory_bare_ns")?, &field("memory_layered_ns")?)?;
    let redis = redis_summary(
        &field("redis_bare_ops_per_sec")?,
        &field("redis_layered_ops_per_sec")?,
        &field("redis_bare_cpu_us_per_op")?,
        &field("redis_layered_cpu_us_per_op")?,
    )?;
    Ok((memory, redis))
}

fn pass(ok: bool) -> &'static str {
    if ok { "PASS" } else { "FAIL" }
}

/// `bench overhead`: the table and the two verdicts, against `$STATE_TEST_REDIS_URL` (else
/// the local default).
pub(super) fn run(root: &Path, opts: &Options) -> Result<()> {
    let built = util::run_shown(util::cargo().args([
        "build",
        "--release",
        "-p",
        "distributed-state",
        "--example",
        "overhead",
    ]))?;
    if !built.ok {
        bail!("cargo build --release -p distributed-state --example overhead failed");
    }
    let bin = target_dir(root).join("release/examples/overhead");
    let mut cmd = Command::new(&bin);
    cmd.args(["--calls", &opts.calls.to_string()])
        .args(["--runs", &opts.pairs.to_string()])
        .args(["--seconds", &opts.seconds.to_string()])
        .args(["--concurrency", &CONCURRENCY.to_string()]);
    println!("$ {}", util::show(&cmd));
    let busy_before = busy_share();
    // Progress goes to our stderr as it happens; the JSON comes on stdout.
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", bin.display()))?;
    if !out.status.success() {
        bail!("{} failed (its error is above)", bin.display());
    }
    let (memory, redis) = parse(&String::from_utf8_lossy(&out.stdout))?;
    let md = markdown(&memory, &redis, busy_before, opts);
    println!("\n{md}");
    println!(
        "overhead on memory://: {:+.1} ns per get, goal at most +{MEMORY_GOAL_NS:.0} ns: {}",
        memory.added_ns,
        pass(met(memory.added_ns, MEMORY_GOAL_NS, true))
    );
    println!(
        "overhead on Redis get: layered/bare {:.3}, goal at least {REDIS_GOAL_RATIO}: {}",
        redis.ratio,
        pass(met(redis.ratio, REDIS_GOAL_RATIO, false))
    );
    if opts.write && !opts.quick {
        write_section(root, "overhead", &md)?;
        println!("BENCHMARKS.md updated (section overhead).");
    } else {
        println!("BENCHMARKS.md left unchanged (--quick or --no-write).");
    }
    Ok(())
}

/// The busy and total jiffies of every core so far, from the `cpu` line of `/proc/stat`.
fn cpu_jiffies() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// The share of all cores busy during the second before the run (1 = all of them).
fn busy_share() -> Option<f64> {
    let (busy, total) = cpu_jiffies()?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (busy2, total2) = cpu_jiffies()?;
    let span = total2.checked_sub(total).filter(|t| *t > 0)?;
    Some(busy2.saturating_sub(busy) as f64 / span as f64)
}

fn list(values: &[f64], digits: usize, sign: bool) -> String {
    let items: Vec<String> = values
        .iter()
        .map(|v| {
            if sign {
                format!("{v:+.digits$}")
            } else {
                format!("{v:.digits$}")
            }
        })
        .collect();
    items.join(", ")
}

fn markdown(
    memory: &MemorySummary,
    redis: &RedisSummary,
    busy_before: Option<f64>,
    opts: &Options,
) -> String {
    let mut md = String::from("## Layers: what observing costs\n\n");
    let _ = write!(md, "{}", machine());
    if let Some(busy) = busy_before {
        let _ = write!(
            md,
            " Cores busy in the second before the run: {:.0}%.",
            busy * 100.0
        );
        if busy > BUSY {
            md.push_str(
                " **The machine was busy:** other work competed for the cores, so the Redis \
                 ratio is noisier than usual (the CPU per get is the steadier figure); rerun \
                 on an idle machine to compare with other runs.",
            );
        }
    }
    md.push_str("\n\n");
    let _ = writeln!(
        md,
        "Method: `cargo xtask bench overhead` runs `distributed-state`'s `overhead` example \
         (release). Both sides are opened through the registry by URL, so they measure \
         whatever the layers are: bare `memory://` against layered \
         `memory://?stats=true&metrics=true&tracing=true`, and the same two on the test Redis \
         (`$STATE_TEST_REDIS_URL`, else `redis://127.0.0.1:6379`; keys under a `prefix=` of \
         the run's own, removed afterwards). The real Prometheus recorder \
         (`state_metrics::prometheus::install` on 127.0.0.1, a free port) is installed \
         before the layered backends are opened; there is no tracing subscriber. {} pairs: \
         each pair runs bare and layered back to back, alternating which goes first.\n",
        opts.pairs
    );
    let _ = writeln!(
        md,
        "- `memory://`: one task, {} gets of one existing 64-byte value per run; \
         ns per get = wall time ÷ gets. **added** = the median of the per-pair differences \
         (layered − bare), not the difference of the two medians.",
        opts.calls
    );
    let _ = writeln!(
        md,
        "- Redis: point gets of 1000 existing 64-byte values by {CONCURRENCY} tokio tasks \
         on a multi-thread runtime (one worker per core), {} s per side and pair, run as \
         slices of 0.1 s with bare and layered slices alternating (so a burst of other \
         work lands on both sides); **layered/bare** = \
         the median of the per-pair ratios of gets per second. CPU µs per get = user + \
         system CPU time of the whole process per get; by CPU = the median of the per-pair \
         bare ÷ layered CPU per get (1 = free).\n",
        opts.seconds
    );
    let _ = writeln!(
        md,
        "| `memory://`, ns per get | bare | layered | added (median of pairs) | pairs |\n\
         |---|---:|---:|---:|---|\n\
         | stats + metrics + tracing | {:.1} | {:.1} | **{:+.1}** | {} |\n",
        memory.bare_ns,
        memory.layered_ns,
        memory.added_ns,
        list(&memory.added, 1, true)
    );
    let _ = writeln!(
        md,
        "| Redis get, {CONCURRENCY} tasks | bare | layered | layered/bare | pairs |\n\
         |---|---:|---:|---:|---|\n\
         | gets per second | {:.0} | {:.0} | **{:.3}** | {} |\n\
         | CPU µs per get | {:.2} | {:.2} | {:.3} by CPU | |\n",
        redis.bare_ops,
        redis.layered_ops,
        redis.ratio,
        list(&redis.ratios, 3, false),
        redis.bare_cpu_us,
        redis.layered_cpu_us,
        redis.cpu_ratio,
    );
    md.push_str("Goals (issue 14; measured, not asserted):\n\n");
    let _ = writeln!(
        md,
        "- `memory://`: the three layers add at most {MEMORY_GOAL_NS:.0} ns per get: \
         {:+.1} ns ({})",
        memory.added_ns,
        verdict(memory.added_ns, MEMORY_GOAL_NS, true)
    );
    let _ = writeln!(
        md,
        "- Redis get: layered ≥ {REDIS_GOAL_RATIO} × bare gets per second: {:.3} ({}); \
         for reference {:.3} by CPU",
        redis.ratio,
        verdict(redis.ratio, REDIS_GOAL_RATIO, false),
        redis.cpu_ratio
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{
  "calls": 2000000,
  "runs": 3,
  "memory_bare_ns": [80.5, 70.0, 90.0],
  "memory_layered_ns": [380.5, 200.0, 240.0],
  "concurrency": 16,
  "seconds": 3,
  "redis_keys": 1000,
  "redis_bare_ops_per_sec": [100000.0, 200000.0, 150000.0],
  "redis_layered_ops_per_sec": [99000.0, 190000.0, 120000.0],
  "redis_bare_cpu_us_per_op": [4.0, 5.0, 4.5],
  "redis_layered_cpu_us_per_op": [5.0, 5.0, 9.0]
}"#;

    #[test]
    fn summarises_pairs_by_their_differences_and_ratios() -> Result<()> {
        let (memory, redis) = parse(JSON)?;
        assert_eq!(memory.added, vec![300.0, 130.0, 150.0]);
        // The median of the differences, not 240 − 80.5.
        assert_eq!(memory.added_ns, 150.0);
        assert_eq!((memory.bare_ns, memory.layered_ns), (80.5, 240.0));
        assert_eq!(redis.ratios, vec![0.99, 0.95, 0.8]);
        assert_eq!(redis.ratio, 0.95);
        assert_eq!((redis.bare_ops, redis.layered_ops), (150000.0, 120000.0));
        assert_eq!(redis.cpu_ratio, 0.8);
        Ok(())
    }

    #[test]
    fn verdicts_at_the_goals() {
        assert!(met(150.0, MEMORY_GOAL_NS, true));
        assert!(!met(150.1, MEMORY_GOAL_NS, true));
        assert!(met(0.97, REDIS_GOAL_RATIO, false));
        assert!(!met(0.969, REDIS_GOAL_RATIO, false));
        assert_eq!((pass(true), pass(false)), ("PASS", "FAIL"));
    }

    #[test]
    fn refuses_runs_that_are_not_pairs() {
        assert!(memory_summary(&[1.0, 2.0], &[3.0]).is_err());
        assert!(memory_summary(&[], &[]).is_err());
        assert!(parse(r#"{"memory_bare_ns": [1], "memory_layered_ns": [2]}"#).is_err());
    }

    #[test]
    fn reads_number_arrays() {
        let text = r#"{"a": [1.5, -2, 3e2], "b":[], "c": 4, "d": [1, x]}"#;
        assert_eq!(json_numbers(text, "a"), Some(vec![1.5, -2.0, 300.0]));
        assert_eq!(json_numbers(text, "b"), Some(vec![]));
        assert_eq!(json_numbers(text, "c"), None);
        assert_eq!(json_numbers(text, "d"), None);
        assert_eq!(json_numbers(text, "e"), None);
    }
}
