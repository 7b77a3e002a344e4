//! `cargo xtask bench checkpoint`: `statectl checkpoint create` and `restore` of 1,000,000
//! keys of 64 B (`--keys N`) on PostgreSQL, Redis and redb, each process's peak RSS at that
//! size and at a tenth of it (flat memory), and the times against the tools a user would
//! move the same rows with, in the same run: `COPY (SELECT …) TO STDOUT` and `COPY … FROM
//! STDIN` through psql, `redis-cli --pipe` of the same entries.
//!
//! Everything lives in places of its own, removed at the end: three schemas in the test
//! PostgreSQL (source, our restore target, COPY's target), a private `redis-server`, and a
//! scratch directory for the checkpoint store, the redb file and the reference dumps.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::measure::{VALUE_SIZE, median_of};
use super::options::{KEYS, Options};
use super::postgres::{base_url, find_tool, psql, with_params};
use super::redis::PrivateRedis;
use super::report::{machine, verdict, write_section};
use super::tools::{Measured, build_statectl, measured, scratch_dir, unique};
use crate::util::which;

/// Peak RSS ceiling of every statectl process, in MiB.
const RSS_CEILING_MIB: f64 = 100.0;
/// How much more the large run may take than the small one: flat memory.
const RSS_GROWTH: f64 = 1.2;

/// What one operation measured at one size: our runs and the reference tool's.
#[derive(Debug, Default, Clone)]
struct Op {
    ours: Vec<Measured>,
    reference: Vec<f64>,
    /// Why our side failed; it is not run again once it has.
    failure: Option<String>,
}

impl Op {
    /// Runs our side unless it failed before, keeping its measurement or its error.
    fn attempt(&mut self, run: impl FnOnce() -> Result<Measured>) {
        if self.failure.is_some() {
            return;
        }
        match run() {
            Ok(m) => self.ours.push(m),
            Err(e) => {
                println!("  FAILED: {e:#}");
                self.failure = Some(format!("{e:#}"));
            }
        }
    }
    fn why(&self) -> &str {
        self.failure.as_deref().unwrap_or("")
    }
    fn secs(&self) -> f64 {
        median_of(self.ours.iter().map(|m| m.secs).collect())
    }
    fn peak_mib(&self) -> f64 {
        median_of(
            self.ours
                .iter()
                .map(|m| m.peak_kib as f64 / 1024.0)
                .collect(),
        )
    }
    fn ref_secs(&self) -> f64 {
        median_of(self.reference.clone())
    }
}

/// The operations, in the order they run; the first three have a reference tool.
const OPS: [(&str, Option<&str>); 6] = [
    (
        "checkpoint from PostgreSQL",
        Some("psql `COPY (SELECT …) TO STDOUT`"),
    ),
    ("restore into PostgreSQL", Some("psql `COPY … FROM STDIN`")),
    ("restore into Redis", Some("`redis-cli --pipe`")),
    ("checkpoint from Redis", None),
    ("restore into redb", None),
    ("checkpoint from redb", None),
];

/// Both sizes: `[small, large]`, each with one `Op` per entry of `OPS`.
type Results = [Vec<Op>; 2];

/// The places and programs of one benchmark.
struct Setup {
    statectl: PathBuf,
    psql: PathBuf,
    redis_cli: PathBuf,
    url: String,
    schemas: [String; 3],
    scratch: PathBuf,
    redis: PrivateRedis,
}

pub(super) fn run(root: &Path, opts: &Options) -> Result<()> {
    let statectl = build_statectl(root)?;
    let psql_bin = find_tool("psql")?;
    let redis_cli = which("redis-cli")
        .context("redis-cli is not on PATH (it comes with redis-server / redis-tools)")?;
    let redis = PrivateRedis::start()?;
    println!("checkpoint: private redis-server at {}", redis.url());
    let id = unique();
    let setup = Setup {
        statectl,
        psql: psql_bin,
        redis_cli,
        url: base_url(),
        schemas: ["src", "dst", "ref"].map(|s| format!("ckpt_{id}_{s}")),
        scratch: scratch_dir("checkpoint")?,
        redis,
    };
    let result = measure(&setup, opts);
    let mut dropped = Ok(());
    for schema in &setup.schemas {
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        dropped = dropped.and(psql(&setup.psql, &setup.url, &sql));
    }
    let _ = std::fs::remove_dir_all(&setup.scratch);
    drop(setup);
    let (sizes, results) = result?;
    dropped?;
    let md = markdown(sizes, &results, opts);
    println!("\n{md}");
    if opts.write && !opts.quick && opts.keys == KEYS {
        write_section(root, "checkpoint", &md)?;
        println!("BENCHMARKS.md updated (section checkpoint).");
    } else {
        println!("BENCHMARKS.md left unchanged (--quick, --keys or --no-write).");
    }
    Ok(())
}

fn measure(s: &Setup, opts: &Options) -> Result<([u64; 2], Results)> {
    let large = if opts.quick {
        (opts.keys / 10).max(10)
    } else {
        opts.keys
    };
    let sizes = [(large / 10).max(1), large];
    // Our schemas are created by the backend's migration (on first use), COPY's as a copy
    // of the source table with every index, so both targets have the same shape.
    for schema in &s.schemas[..2] {
        statectl(s, &pg_url(s, schema), &["count"])?;
    }
    let [src, _, reference] = &s.schemas;
    psql(
        &s.psql,
        &s.url,
        &format!(
            "CREATE SCHEMA \"{reference}\"; CREATE TABLE \"{reference}\".\"state_entries\" \
             (LIKE \"{src}\".\"state_entries\" INCLUDING ALL)"
        ),
    )?;
    let small = measure_size(s, sizes[0], 1)?;
    let large = measure_size(s, sizes[1], opts.runs)?;
    Ok((sizes, [small, large]))
}

/// Every operation at `keys` keys, `runs` times each, ours and the reference alternating
/// which goes first.
fn measure_size(s: &Setup, keys: u64, runs: usize) -> Result<Vec<Op>> {
    println!("checkpoint: {keys} keys, {runs} run(s)");
    let [src, dst, reference] = &s.schemas;
    let t = |schema: &str| format!("\"{schema}\".\"state_entries\"");
    // 64 B of hex text per value, as incompressible to lz4 as a random token.
    psql(
        &s.psql,
        &s.url,
        &format!(
            "TRUNCATE {src_t}; INSERT INTO {src_t} (key, value) \
             SELECT convert_to('ckpt:' || lpad(i::text, 12, '0'), 'UTF8'), \
                    convert_to(md5(i::text) || md5((-i)::text), 'UTF8') \
             FROM generate_series(0, {last}) AS i; ANALYZE {src_t}",
            src_t = t(src),
            last = keys - 1
        ),
    )?;
    let store_dir = s.scratch.join("store");
    let store = format!("file://{}", store_dir.display());
    let rows = s.scratch.join("rows.copy");
    let resp = s.scratch.join("rows.resp");
    let redb = s.scratch.join("state.redb");
    let redb_url = format!("redb://{}", redb.display());
    let redis_url = s.redis.url();
    let mut ops = vec![Op::default(); OPS.len()];
    // The export's own query (state-postgres `page`), without the paging: live rows in key
    // order, the expiry as microseconds.
    let copy_out = format!(
        "COPY (SELECT key, value, (extract(epoch FROM expires_at) * 1000000)::int8, metadata \
         FROM {} WHERE (expires_at IS NULL OR expires_at > now()) ORDER BY key) TO STDOUT",
        t(src)
    );
    let copy_in = format!(
        "COPY {} (key, value, expires_at, metadata) FROM STDIN",
        t(reference)
    );
    for run in 0..runs {
        let ours_first = run % 2 == 0;
        // Checkpoint from PostgreSQL, into an empty store (so `restore latest` is this one).
        // The store of the last success stays: every restore below reads it.
        for ours in order(ours_first) {
            if ours {
                if ops[0].failure.is_none() {
                    let _ = std::fs::remove_dir_all(&store_dir);
                    std::fs::create_dir_all(&store_dir)
                        .with_context(|| format!("cannot create {}", store_dir.display()))?;
                }
                let create = ["checkpoint", "create", "--store", store.as_str()];
                ops[0].attempt(|| timed(s, &pg_url(s, src), &create));
            } else {
                let m = psql_timed(s, &copy_out, None, Some(&rows))?;
                ops[0].reference.push(m.secs);
            }
        }
        show(0, run, &ops[0]);
        if ops[0].ours.is_empty() {
            bail!("no checkpoint of PostgreSQL to restore: {}", ops[0].why());
        }
        // Restore into PostgreSQL: both targets emptied first, untimed.
        for ours in order(ours_first) {
            let target = if ours { dst } else { reference };
            psql(&s.psql, &s.url, &format!("TRUNCATE {}", t(target)))?;
            if ours {
                ops[1].attempt(|| timed(s, &pg_url(s, dst), &restore(&store)));
            } else {
                // The COPY text as the export query printed it; expires_at is all NULL.
                let m = psql_timed(s, &copy_in, Some(&rows), None)?;
                ops[1].reference.push(m.secs);
            }
        }
        show(1, run, &ops[1]);
        // Restore into Redis: the private server emptied first, untimed.
        if run == 0 {
            write_resp(&rows, &resp)?;
        }
        for ours in order(ours_first) {
            redis_cli(s, &["FLUSHALL"])?;
            if ours {
                ops[2].attempt(|| timed(s, &redis_url, &restore(&store)));
            } else {
                ops[2].reference.push(redis_pipe(s, &resp)?.secs);
            }
        }
        show(2, run, &ops[2]);
    }
    // What each restore left is the whole checkpoint.
    let in_redis = redis_cli(s, &["DBSIZE"])?;
    let in_pg = statectl(s, &pg_url(s, dst), &["count"])?;
    check_count(&mut ops[1], keys, &in_pg);
    check_count(&mut ops[2], keys, &in_redis);
    // Ours alone: a checkpoint of the entries in Redis (loaded by redis-cli if our restore
    // did not leave them), and redb from the PostgreSQL checkpoint.
    if ops[2].failure.is_some() {
        redis_cli(s, &["FLUSHALL"])?;
        redis_pipe(s, &resp)?;
    }
    let redis_store = s.scratch.join("store-redis");
    let redb_store = s.scratch.join("store-redb");
    for run in 0..runs {
        for dir in [&redis_store, &redb_store] {
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir)?;
        }
        let from_redis = format!("file://{}", redis_store.display());
        let args = ["checkpoint", "create", "--store", from_redis.as_str()];
        ops[3].attempt(|| timed(s, &redis_url, &args));
        show(3, run, &ops[3]);
        let _ = std::fs::remove_file(&redb);
        ops[4].attempt(|| timed(s, &redb_url, &restore(&store)));
        show(4, run, &ops[4]);
        let from_redb = format!("file://{}", redb_store.display());
        let args = ["checkpoint", "create", "--store", from_redb.as_str()];
        ops[5].attempt(|| timed(s, &redb_url, &args));
        show(5, run, &ops[5]);
    }
    let in_redb = statectl(s, &redb_url, &["count"]).unwrap_or_default();
    check_count(&mut ops[4], keys, &in_redb);
    Ok(ops)
}

/// Marks `op` failed unless its target holds `keys` keys (`found`: what `count` or
/// `DBSIZE` printed).
fn check_count(op: &mut Op, keys: u64, found: &str) {
    if op.failure.is_none() && found.trim() != keys.to_string() {
        op.failure = Some(format!(
            "the restore of {keys} keys left {} keys",
            found.trim()
        ));
    }
}

fn redis_pipe(s: &Setup, resp: &Path) -> Result<Measured> {
    let mut cmd = Command::new(&s.redis_cli);
    cmd.args(["-p", &s.redis.port.to_string(), "--pipe"]);
    measured(&mut cmd, Some(resp), None)
}

/// Which side runs first in a run: ours on even runs, the reference on odd ones.
fn order(ours_first: bool) -> [bool; 2] {
    if ours_first {
        [true, false]
    } else {
        [false, true]
    }
}

fn restore(store: &str) -> [&str; 5] {
    ["checkpoint", "restore", "latest", "--store", store]
}

fn pg_url(s: &Setup, schema: &str) -> String {
    with_params(&s.url, &format!("schema={schema}"))
}

fn show(op: usize, run: usize, measured: &Op) {
    let (Some(ours), name) = (measured.ours.last(), OPS[op].0) else {
        return;
    };
    let reference = match measured.reference.last() {
        Some(secs) => format!("; reference {secs:.2} s"),
        None => String::new(),
    };
    println!(
        "  {name:<28} run {}: {:.2} s, peak RSS {:.1} MiB{reference}",
        run + 1,
        ours.secs,
        ours.peak_kib as f64 / 1024.0
    );
}

/// Runs `statectl --url URL ARGS…` measured.
fn timed(s: &Setup, url: &str, args: &[&str]) -> Result<Measured> {
    let mut cmd = Command::new(&s.statectl);
    cmd.args(["--url", url]).args(args);
    measured(&mut cmd, None, None)
}

/// Runs `statectl --url URL ARGS…` for its output.
fn statectl(s: &Setup, url: &str, args: &[&str]) -> Result<String> {
    output(Command::new(&s.statectl).args(["--url", url]).args(args))
}

fn redis_cli(s: &Setup, args: &[&str]) -> Result<String> {
    let port = s.redis.port.to_string();
    output(Command::new(&s.redis_cli).args(["-p", &port]).args(args))
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// psql running one SQL statement, timed, with stdin and stdout from and to files.
fn psql_timed(s: &Setup, sql: &str, input: Option<&Path>, out: Option<&Path>) -> Result<Measured> {
    let mut cmd = Command::new(&s.psql);
    cmd.args([
        s.url.as_str(),
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ]);
    measured(&mut cmd, input, out)
}

/// The `SET key value` commands, in RESP, of every row of a COPY text dump (`\\x…` hex
/// bytea, no expiry), for `redis-cli --pipe`.
fn write_resp(rows: &Path, resp: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(rows).with_context(|| format!("cannot read {}", rows.display()))?;
    let mut out = Vec::with_capacity(text.len());
    for line in text.lines() {
        let mut fields = line.split('\t');
        let (Some(key), Some(value), Some("\\N")) = (fields.next(), fields.next(), fields.next())
        else {
            bail!("unexpected COPY row (the bench writes no expiry): {line}");
        };
        let (key, value) = (bytea(key)?, bytea(value)?);
        out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
        for part in [&key, &value] {
            out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
    }
    std::fs::write(resp, out).with_context(|| format!("cannot write {}", resp.display()))
}

/// A bytea as COPY's text format prints it: `\\x` and hex digits.
fn bytea(field: &str) -> Result<Vec<u8>> {
    let hex = field
        .strip_prefix("\\\\x")
        .with_context(|| format!("`{field}` is not a hex bytea"))?;
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(digit(*hi)? << 4 | digit(*lo)?),
            _ => None,
        })
        .collect::<Option<Vec<u8>>>()
        .with_context(|| format!("`{field}` is not a hex bytea"))
}

/// ours ÷ reference time, or reference ÷ ours for a throughput goal, median over runs of
/// the per-run ratio (each run's two sides ran back to back).
fn time_ratio(op: &Op, throughput: bool) -> f64 {
    let ratios = op
        .ours
        .iter()
        .zip(&op.reference)
        .filter(|(o, r)| o.secs > 0.0 && **r > 0.0)
        .map(|(o, r)| if throughput { r / o.secs } else { o.secs / r })
        .collect();
    median_of(ratios)
}

fn markdown(sizes: [u64; 2], results: &Results, opts: &Options) -> String {
    let [small, large] = sizes;
    let mut md = String::from("## Checkpoints\n\n");
    let _ = writeln!(md, "{}\n", machine());
    let _ = writeln!(
        md,
        "Shape: {large} keys of 17 B (`ckpt:` + 12 digits) with values of {VALUE_SIZE} B (hex \
         text, which lz4 barely compresses), no expiry, no metadata; median of {} runs at \
         {large} keys, one at {small}. Ours: one `statectl --url URL checkpoint create|restore \
         latest --store file:///…` process per operation (lz4 frames, the file and its \
         directory fsync'd; a restore into these atomic targets reads the file once, checking \
         it as it imports, and commits only at its end; redb's cache is 4 MiB for these \
         commands). Peak RSS is the process's `ru_maxrss` (GNU `time -f %M`). Time is the wall clock of the whole \
         process, start-up and connection included, on the shared PostgreSQL 15 and a \
         private `redis-server` (no persistence). References, on the same rows in the same \
         run, alternating which goes first: `psql -c \"COPY (SELECT key, value, expiry, \
         metadata … WHERE live ORDER BY key) TO STDOUT\" > file` (the export's query without \
         paging); `psql -c \"COPY … FROM STDIN\" < file` into a table of the same shape and \
         indexes; `redis-cli --pipe` of one `SET` per row, generated from that file. Both \
         PostgreSQL targets and the Redis server are emptied before every run, untimed. \
         ratio = median over runs of the per-run ratio.\n",
        opts.runs,
    );
    let _ = writeln!(
        md,
        "| operation | ours s ({large}) | reference | reference s | ratio | peak RSS MiB \
         ({small}) | peak RSS MiB ({large}) | large ÷ small |\n\
         |---|---:|---|---:|---:|---:|---:|---:|"
    );
    for (i, (name, reference)) in OPS.iter().enumerate() {
        let (s, l) = (&results[0][i], &results[1][i]);
        let ours = |op: &Op, text: String| {
            if op.failure.is_some() {
                "failed".to_string()
            } else {
                text
            }
        };
        let (ref_name, ref_secs, ratio) = match reference {
            Some(r) => (
                r.to_string(),
                format!("{:.2}", l.ref_secs()),
                ours(l, format!("**{:.2}**", time_ratio(l, i == 2))),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let grown = if s.failure.is_some() || l.failure.is_some() {
            "-".to_string()
        } else {
            format!("{:.2}", growth(s, l))
        };
        let _ = writeln!(
            md,
            "| {name} | {} | {ref_name} | {ref_secs} | {ratio} | {} | {} | {grown} |",
            ours(l, format!("{:.2}", l.secs())),
            ours(s, format!("{:.1}", s.peak_mib())),
            ours(l, format!("{:.1}", l.peak_mib())),
        );
    }
    md.push_str(
        "\nratio: ours ÷ reference time for the PostgreSQL rows; for Redis, the reference \
         time ÷ ours (throughput).\n\nGoals (measured, not asserted):\n\n",
    );
    let goals = [
        (
            0,
            1.25,
            true,
            "checkpoint from PostgreSQL ≤ 1.25 × COPY TO STDOUT",
        ),
        (
            1,
            1.25,
            true,
            "restore into PostgreSQL ≤ 1.25 × COPY FROM STDIN",
        ),
        (
            2,
            0.8,
            false,
            "restore into Redis ≥ 0.8 × redis-cli --pipe (throughput)",
        ),
    ];
    for (i, goal, at_most, what) in goals {
        let op = &results[1][i];
        if op.failure.is_some() {
            let _ = writeln!(md, "- {what}: NOT met (failed at {large} keys, below)");
            continue;
        }
        let x = time_ratio(op, i == 2);
        let _ = writeln!(md, "- {what}: {x:.2} ({})", verdict(x, goal, at_most));
    }
    for (i, (name, _)) in OPS.iter().enumerate() {
        let (s, l) = (&results[0][i], &results[1][i]);
        if s.failure.is_some() || l.failure.is_some() {
            let _ = writeln!(md, "- {name}: peak RSS: NOT met (failed, below)");
            continue;
        }
        let peak = l.peak_mib();
        let g = growth(s, l);
        let _ = writeln!(
            md,
            "- {name}: peak RSS < {RSS_CEILING_MIB:.0} MiB at {large}: {peak:.1} ({}); \
             ≤ {RSS_GROWTH} × at {small}: {g:.2} ({})",
            verdict(peak, RSS_CEILING_MIB, true),
            verdict(g, RSS_GROWTH, true),
        );
    }
    let mut failures = String::new();
    for (size, ops) in sizes.iter().zip(results) {
        for ((name, _), op) in OPS.iter().zip(ops) {
            if let Some(why) = &op.failure {
                let _ = writeln!(failures, "- {name} at {size} keys: {why}");
            }
        }
    }
    if !failures.is_empty() {
        md.push_str("\nFailures:\n\n");
        md.push_str(&failures);
    }
    md
}

fn growth(small: &Op, large: &Op) -> f64 {
    let s = small.peak_mib();
    if s > 0.0 { large.peak_mib() / s } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_copy_bytea() -> Result<()> {
        assert_eq!(bytea("\\\\x6b3a01ff")?, b"k:\x01\xff");
        assert_eq!(bytea("\\\\x")?, b"");
        assert!(bytea("\\\\x6").is_err() && bytea("6b").is_err() && bytea("\\\\xzz").is_err());
        Ok(())
    }

    #[test]
    fn ratios_are_medians_of_paired_runs() {
        let m = |secs| Measured { secs, peak_kib: 0 };
        let op = Op {
            ours: vec![m(2.0), m(3.0), m(10.0)],
            reference: vec![1.0, 2.0, 4.0],
            failure: None,
        };
        assert_eq!(time_ratio(&op, false), 2.0);
        assert_eq!(time_ratio(&op, true), 0.5);
    }
}
