//! `cargo xtask bench compression`: what state-core's `CompressionLayer` does to 16 KiB
//! and 256 KiB values, compressible (JSON-like text) and random, on the test Redis and
//! PostgreSQL: put and get throughput bare, under lz4 and under zstd (level 3), and the
//! bytes stored.
//!
//! The measuring is done by the `compression_bench` test of the `testing` crate, built in
//! release (it links the backends, which xtask does not): one task, one call at a time,
//! `OPS` calls per case (a quarter of them for 256 KiB values), each case `--runs` times
//! (default 3). It writes one tab-separated line per case and run; this file takes the
//! medians, the ratios against the bare backend and writes the `compression` section of
//! BENCHMARKS.md. Its keys live under a prefix of their own on Redis and in a schema of
//! its own on PostgreSQL, both removed by the test.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use super::measure::median_of;
use super::options::Options;
use super::report::{machine, write_section};
use super::tools::scratch_dir;
use crate::util;

/// Calls per case and operation at 16 KiB (256 KiB: a quarter): about 20 s on an idle machine.
const OPS: usize = 300;

/// One case: backend, value size, data, mode.
type Case = (String, u64, String, String);

/// The medians of one case.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Medians {
    put_ops: f64,
    get_ops: f64,
    stored: f64,
    footprint: f64,
}

pub(super) fn run(root: &Path, opts: &Options) -> Result<()> {
    let ops = if opts.quick { OPS / 10 } else { OPS };
    let dir = scratch_dir("compression")?;
    let out = dir.join("cases.tsv");
    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--release",
        "-p",
        "testing",
        "--test",
        "compression_bench",
    ])
    .args(["--", "--nocapture"])
    .env("COMPRESSION_BENCH_OPS", ops.to_string())
    .env("COMPRESSION_BENCH_RUNS", opts.runs.to_string())
    .env("COMPRESSION_BENCH_OUT", &out);
    let load_before = load_average();
    let ran = util::run_shown(&mut cmd)?;
    let load = (load_before, load_average());
    let text = std::fs::read_to_string(&out);
    let _ = std::fs::remove_dir_all(&dir);
    if !ran.ok {
        bail!("the compression_bench test failed (its output is above)");
    }
    let text = text.with_context(|| format!("the test wrote no {}", out.display()))?;
    let cases = medians(&text)?;
    let md = markdown(&cases, ops, load, opts);
    println!("\n{md}");
    if opts.write && !opts.quick {
        write_section(root, "compression", &md)?;
        println!("BENCHMARKS.md updated (section compression).");
    } else {
        println!("BENCHMARKS.md left unchanged (--quick or --no-write).");
    }
    Ok(())
}

/// The medians of every case in the test's lines
/// (`backend size data mode run put_ops get_ops stored footprint`).
fn medians(text: &str) -> Result<BTreeMap<Case, Medians>> {
    let mut runs: BTreeMap<Case, Vec<[f64; 4]>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [backend, size, data, mode, _run, put, get, stored, footprint] = fields[..] else {
            bail!("not a case line: `{line}`");
        };
        let number = |s: &str| {
            s.parse::<f64>()
                .with_context(|| format!("`{s}` is not a number in `{line}`"))
        };
        let case = (backend.into(), size.parse()?, data.into(), mode.into());
        let figures = [
            number(put)?,
            number(get)?,
            number(stored)?,
            number(footprint)?,
        ];
        runs.entry(case).or_default().push(figures);
    }
    ensure!(!runs.is_empty(), "the test measured no case");
    let median = |v: &[[f64; 4]], i: usize| median_of(v.iter().map(|f| f[i]).collect());
    Ok(runs
        .into_iter()
        .map(|(case, v)| {
            let m = Medians {
                put_ops: median(&v, 0),
                get_ops: median(&v, 1),
                stored: median(&v, 2),
                footprint: median(&v, 3),
            };
            (case, m)
        })
        .collect())
}

fn ratio(x: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}", x / base)
    } else {
        "–".into()
    }
}

/// The 1-minute load average (`/proc/loadavg`), if the system tells.
fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn markdown(
    cases: &BTreeMap<Case, Medians>,
    ops: usize,
    load: (Option<f64>, Option<f64>),
    opts: &Options,
) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Compression layer (lz4, zstd) on Redis and PostgreSQL\n"
    );
    let shown = |l: Option<f64>| l.map_or("unknown".to_owned(), |l| format!("{l:.1}"));
    let _ = writeln!(
        md,
        "{} Load average (1 min) before and after: {} and {}; the machine was shared, and \
         a load above the cores makes the ops/s noisy (the bytes stored are exact).\n",
        machine(),
        shown(load.0),
        shown(load.1)
    );
    let _ = writeln!(
        md,
        "`CompressionLayer` (threshold 1 KiB) against the bare backend, same run: one task, \
         one call at a time, {ops} puts then {ops} gets of distinct keys per case at 16 KiB \
         ({} at 256 KiB), median of {} runs, the modes interleaved run by run. *Text*: \
         JSON-like records; *random*: incompressible bytes, which the layer stores as they \
         are. *Stored*: the stored value's length (what a client without the layer reads); \
         *server*: what the server keeps for one key (Redis `MEMORY USAGE`, PostgreSQL \
         `pg_column_size` of the value, after TOAST's own pglz compression). Ratios are \
         against `none` in the same group: above 1 is faster (ops/s) or, for *stored*, \
         below 1 is smaller.\n",
        ops.div_ceil(4),
        opts.runs
    );
    let _ = writeln!(
        md,
        "| backend | value | data | mode | put ops/s | get ops/s | put × | get × | stored B \
         | stored × | server B | server × |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for ((backend, size, data, mode), m) in cases_in_order(cases) {
        let base = cases
            .get(&(backend.clone(), size, data.clone(), "none".into()))
            .copied()
            .unwrap_or(m);
        let _ = writeln!(
            md,
            "| {backend} | {} KiB | {data} | {mode} | {:.0} | {:.0} | {} | {} | {:.0} | {} | \
             {:.0} | {} |",
            size / 1024,
            m.put_ops,
            m.get_ops,
            ratio(m.put_ops, base.put_ops),
            ratio(m.get_ops, base.get_ops),
            m.stored,
            ratio(m.stored, base.stored),
            m.footprint,
            ratio(m.footprint, base.footprint),
        );
    }
    md.push('\n');
    md
}

/// The cases grouped by backend, size and data, `none` first in each group.
fn cases_in_order(cases: &BTreeMap<Case, Medians>) -> Vec<(Case, Medians)> {
    let mut ordered: Vec<(Case, Medians)> = cases.iter().map(|(c, m)| (c.clone(), *m)).collect();
    ordered.sort_by(|(a, _), (b, _)| {
        let key = |c: &Case| (c.0.clone(), c.1, c.2.clone(), c.3 != "none", c.3.clone());
        key(a).cmp(&key(b))
    });
    ordered
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios_come_from_the_test_lines() -> Result<()> {
        let text = "redis\t16384\ttext\tnone\t0\t100\t200\t16384\t20000\n\
                    redis\t16384\ttext\tnone\t1\t300\t400\t16384\t20000\n\
                    redis\t16384\ttext\tlz4\t0\t150\t300\t4096\t5000\n";
        let cases = medians(text)?;
        let none = cases.get(&("redis".into(), 16384, "text".into(), "none".into()));
        assert_eq!(none.map(|m| (m.put_ops, m.get_ops)), Some((200.0, 300.0)));
        let opts = super::super::options::parse(&["compression".into()])?;
        let md = markdown(&cases, 10, (Some(1.0), None), &opts);
        assert!(
            md.contains("| redis | 16 KiB | text | lz4 | 150 | 300 | 0.75 | 1.00 | 4096 | 0.25 |"),
            "{md}"
        );
        assert!(medians("redis\tx\n").is_err());
        Ok(())
    }
}
