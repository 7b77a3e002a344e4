//! `cargo xtask bench postgres`: ours, the raw sqlx loop and `pgbench -M prepared` running
//! the backend's own SQL, on the shared server, each in schemas of its own that are dropped
//! afterwards (ours: one fresh schema per run; pgbench: one filled schema for all runs).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::measure::{
    Case, KEYSPACE, Row, VALUE_SIZE, case, median_of, paired, run_one, scaled, shape_args,
};
use super::options::Options;
use super::report::{machine, verdict, write_section};
use super::tools::{build_release, reference_output, scratch_dir, unique};
use crate::services::{POSTGRES_ENV, POSTGRES_URL};
use crate::util::which;

const CONCURRENCY: u64 = 16;
/// Seconds per `pgbench -T` run.
const PGBENCH_SECS: u64 = 8;
/// pgbench's keys: the same length and layout as a `bench:XXXXXXXX:0000000042` run key.
const PGBENCH_PREFIX: &str = "bench:pgbench0:";

fn cases() -> Vec<Case> {
    vec![
        case("get", "get", 100_000, 100),
        case("put", "put", 30_000, 100),
        case("batch-put ×100", "batch-put", 100_000, 100),
        case("batch-get ×100", "batch-get", 300_000, 100),
    ]
}

pub(super) fn base_url() -> String {
    std::env::var(POSTGRES_ENV).unwrap_or_else(|_| POSTGRES_URL.into())
}

/// `url` with `params` added to its query string.
pub(super) fn with_params(url: &str, params: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{params}")
}

pub(super) fn find_tool(name: &str) -> Result<PathBuf> {
    which(name)
        .or_else(|| {
            let path = PathBuf::from(format!("/usr/lib/postgresql/15/bin/{name}"));
            path.is_file().then_some(path)
        })
        .with_context(|| format!("{name} is not on PATH (it comes with postgresql-client)"))
}

/// Runs SQL through psql, stopping at the first error.
pub(super) fn psql(psql: &Path, url: &str, sql: &str) -> Result<()> {
    let out = Command::new(psql)
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!(
            "psql failed on `{}`: {}",
            sql.chars().take(120).collect::<String>(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The table of the backend's migration (columns and indexes), as `bench-ref postgres`
/// creates it.
fn ddl(schema: &str) -> String {
    let t = format!("\"{schema}\".\"state_entries\"");
    format!(
        "CREATE SCHEMA \"{schema}\"; \
         CREATE TABLE {t} (key BYTEA PRIMARY KEY, value BYTEA NOT NULL, metadata JSONB, \
           created_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
           updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), expires_at TIMESTAMPTZ); \
         CREATE INDEX ON {t} (expires_at) WHERE expires_at IS NOT NULL; \
         CREATE INDEX ON {t} USING GIN (metadata jsonb_path_ops); \
         CREATE INDEX ON {t} (updated_at DESC);"
    )
}

/// The key of the integer expression `k`, built like `plan::key`. The prefix is split at
/// its colons: pgbench reads `:name` as a variable even inside a string literal.
fn key_expr(k: &str) -> String {
    let prefix = PGBENCH_PREFIX.replace(':', ":' || '");
    format!("convert_to(('{prefix}') || lpad(({k})::text, 10, '0'), 'UTF8')")
}

/// The value every write stores: `plan::Shape::value` (a, b, … z, a, …) as a bytea literal.
fn value_literal() -> String {
    let text: String = (0..VALUE_SIZE)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    format!("'{text}'::bytea")
}

const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";
const UPSERT: &str = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
    metadata = EXCLUDED.metadata, expires_at = EXCLUDED.expires_at, updated_at = now(), \
    created_at = CASE WHEN s.expires_at <= now() THEN now() ELSE s.created_at END";

/// The pgbench scripts: the statements of `state-postgres` (`sql.rs`), with the key built
/// from a random index. Returns (case workload, keys per transaction, script).
fn scripts(schema: &str) -> Vec<(&'static str, u64, String)> {
    let t = format!("\"{schema}\".\"state_entries\"");
    let k = key_expr("CAST(:k AS int8)");
    let v = value_literal();
    let last = KEYSPACE - 1;
    let get =
        format!("\\set k random(0, {last})\nSELECT value FROM {t} WHERE key = {k} AND {LIVE};\n");
    let put = format!(
        "\\set k random(0, {last})\nINSERT INTO {t} AS s (key, value, metadata, expires_at) \
         VALUES ({k}, {v}, NULL::jsonb, now() + NULL::float8 * interval '1 millisecond') \
         {UPSERT};\n"
    );
    // 100 distinct keys, ascending (no row twice in one upsert, no deadlock between
    // clients): k, k + 1000, … k + 99000 for k in 0..1000.
    let stride = KEYSPACE / 100;
    let rows: Vec<String> = (0..100)
        .map(|i| {
            format!(
                "({}, {v}, NULL::jsonb, now() + NULL::float8 * interval '1 millisecond')",
                key_expr(&format!("CAST(:k AS int8) + {}", i * stride))
            )
        })
        .collect();
    let batch_put = format!(
        "\\set k random(0, {})\nINSERT INTO {t} AS s (key, value, metadata, expires_at) \
         VALUES {} {UPSERT};\n",
        stride - 1,
        rows.join(", ")
    );
    vec![
        ("get", 1, get),
        ("put", 1, put),
        ("batch-put", 100, batch_put),
    ]
}

/// The `tps = …` figure of pgbench's report.
fn parse_tps(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn pgbench(program: &Path, url: &str, script: &Path, secs: u64) -> Result<f64> {
    let mut cmd = Command::new(program);
    cmd.args([
        "-n",
        "-M",
        "prepared",
        "-c",
        &CONCURRENCY.to_string(),
        "-j",
        "2",
    ])
    .args(["-T", &secs.to_string(), "-f"])
    .arg(script)
    .arg(url);
    reference_output(&mut cmd, "tps", parse_tps)
}

/// One row: ours and raw, plus pgbench's keys per second where it runs this shape.
struct PgRow {
    row: Row,
    pgbench: Option<f64>,
}

pub(super) fn run(root: &Path, opts: &Options) -> Result<()> {
    let (statectl, bench_ref) = build_release(root)?;
    let tools = (find_tool("psql")?, find_tool("pgbench")?);
    let url = base_url();
    let scratch = scratch_dir("postgres")?;
    let id = unique();
    let pg_schema = format!("bench_{id}_pgbench");
    let result = measure(
        &scratch, &statectl, &bench_ref, &tools, &url, &id, &pg_schema, opts,
    );
    let dropped = psql(
        &tools.0,
        &url,
        &format!("DROP SCHEMA IF EXISTS \"{pg_schema}\" CASCADE"),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let rows = result?;
    dropped?;
    let md = markdown(&rows, opts);
    println!("\n{md}");
    if opts.write && !opts.quick {
        write_section(root, "postgres", &md)?;
        println!("BENCHMARKS.md updated (section postgres).");
    } else {
        println!("BENCHMARKS.md left unchanged (--quick or --no-write).");
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn measure(
    scratch: &Path,
    statectl: &Path,
    bench_ref: &Path,
    (psql_bin, pgbench_bin): &(PathBuf, PathBuf),
    url: &str,
    id: &str,
    pg_schema: &str,
    opts: &Options,
) -> Result<Vec<PgRow>> {
    // pgbench's table: the migration's shape, filled with the whole keyspace.
    psql(psql_bin, url, &ddl(pg_schema))?;
    psql(
        psql_bin,
        url,
        &format!(
            "INSERT INTO \"{pg_schema}\".\"state_entries\" (key, value) SELECT {}, {} \
             FROM generate_series(0, {}) AS i; ANALYZE \"{pg_schema}\".\"state_entries\"",
            key_expr("i"),
            value_literal(),
            KEYSPACE - 1
        ),
    )?;
    let secs = if opts.quick { 2 } else { PGBENCH_SECS };
    let mut pgbench_rates = Vec::new();
    for (workload, keys, script) in scripts(pg_schema) {
        let path = scratch.join(format!("{workload}.sql"));
        std::fs::write(&path, script)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let mut rates = Vec::new();
        for run in 0..opts.runs {
            let tps = pgbench(pgbench_bin, url, &path, secs)?;
            println!(
                "  pgbench {workload:<10} run {}: {tps:>10.0} tps = {:>10.0} keys/s",
                run + 1,
                tps * keys as f64
            );
            rates.push(tps * keys as f64);
        }
        pgbench_rates.push((workload, median_of(rates)));
    }
    let json = scratch.join("result.json");
    let mut rows = Vec::new();
    let mut n = 0;
    for case in cases() {
        let ops = scaled(&case, opts);
        let shape = shape_args(&case, ops, CONCURRENCY, &json);
        let (ours, raw) = paired(case.label, opts.runs, |is_raw| {
            if is_raw {
                let mut cmd = Command::new(bench_ref);
                cmd.args(["postgres", "--url", url]).args(&shape);
                return run_one(&mut cmd, &json);
            }
            // A fresh schema per run, like the raw side's, dropped whatever happened.
            n += 1;
            let schema = format!("bench_{id}_{n}");
            let ours_url = with_params(
                url,
                &format!("schema={schema}&pool_min={CONCURRENCY}&pool_max={CONCURRENCY}"),
            );
            let mut cmd = Command::new(statectl);
            cmd.args(["--url", &ours_url, "bench"]).args(&shape);
            let stats = run_one(&mut cmd, &json);
            let dropped = psql(
                psql_bin,
                url,
                &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
            );
            let stats = stats?;
            dropped?;
            Ok(stats)
        })?;
        let pgbench = pgbench_rates
            .iter()
            .find(|(w, _)| *w == case.workload)
            .map(|(_, rate)| *rate);
        rows.push(PgRow {
            row: Row::new(Case { ops, ..case }, &ours, &raw),
            pgbench,
        });
    }
    Ok(rows)
}

fn markdown(rows: &[PgRow], opts: &Options) -> String {
    let mut md = String::from("## PostgreSQL\n\n");
    let _ = writeln!(md, "{}\n", machine());
    let _ = writeln!(
        md,
        "Shape: {CONCURRENCY} concurrent tasks, values of {} B, keyspace {} (filled before \
         read workloads), median of {} runs per side, alternating which side runs first, on \
         the shared PostgreSQL 15 (default settings: `synchronous_commit = on`, so every \
         commit waits for its WAL flush). Ours: `statectl bench` ({CONCURRENCY} tokio tasks \
         sharing one `Arc<dyn StateBackend>` over `state-postgres`, `pool_min = pool_max = \
         {CONCURRENCY}`, a fresh schema per run). Raw: `bench-ref postgres` ({CONCURRENCY} \
         tokio tasks, each with a dedicated sqlx `PgConnection`, the backend's statements on \
         a table of the migration's shape). pgbench: `pgbench -n -M prepared -c {CONCURRENCY} \
         -j 2 -T {}` with scripts holding the backend's statements (`\\set k random(0, {})`, \
         keys built server-side as `convert_to('{PGBENCH_PREFIX}' || lpad(k, 10, '0'))`, the \
         same length and layout as ours) on a table of the migration's shape filled with the \
         whole keyspace; batch-put ×100 is one 100-row `INSERT … VALUES … ON CONFLICT DO \
         UPDATE` of 100 distinct keys (k, k + 1000, … k + 99000), counted in rows per \
         second, where ours sends the same upsert as `unnest` of two 100-element arrays. \
         ours/raw = median over runs of the paired ratio; ours/pgbench = our median ÷ \
         pgbench's median. Batch latencies are per call.\n",
        VALUE_SIZE,
        KEYSPACE,
        opts.runs,
        if opts.quick { 2 } else { PGBENCH_SECS },
        KEYSPACE - 1,
    );
    md.push_str(
        "| op | ops | ours ops/s | ours p50 µs | ours p99 µs | raw ops/s | raw p50 µs | raw p99 µs \
         | ours/raw ops/s | pgbench keys/s | ours/pgbench | ours CPU µs/op | raw CPU µs/op |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (o, w) = (&r.row.ours, &r.row.raw);
        let (pg, pg_ratio) = match r.pgbench {
            Some(rate) => (format!("{rate:.0}"), format!("**{:.2}**", pg_ratio(r))),
            None => ("-".into(), "-".into()),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | **{:.2}** | {pg} | \
             {pg_ratio} | {:.2} | {:.2} |",
            r.row.case.label,
            r.row.case.ops,
            o.ops_per_sec,
            o.p50_us,
            o.p99_us,
            w.ops_per_sec,
            w.p50_us,
            w.p99_us,
            r.row.ratio,
            o.cpu_us_per_op,
            w.cpu_us_per_op,
        );
    }
    md.push_str("\nGoals (measured, not asserted):\n\n");
    for r in rows {
        let label = r.row.case.label;
        match r.row.case.workload {
            "get" | "put" => {
                let (x, y) = (pg_ratio(r), r.row.ratio);
                let _ = writeln!(
                    md,
                    "- {label} ≥ 1.2 × pgbench: {x:.2} ({}); ≥ 0.9 × raw sqlx loop: {y:.2} ({})",
                    verdict(x, 1.2, false),
                    verdict(y, 0.9, false)
                );
            }
            "batch-put" => {
                let x = pg_ratio(r);
                let _ = writeln!(
                    md,
                    "- {label} ≥ 1.0 × pgbench 100-row upsert (rows/s): {x:.2} ({}); \
                     for reference {:.2} × raw sqlx loop",
                    verdict(x, 1.0, false),
                    r.row.ratio
                );
            }
            _ => {}
        }
    }
    md
}

fn pg_ratio(r: &PgRow) -> f64 {
    match r.pgbench {
        Some(rate) if rate > 0.0 => r.row.ours.ops_per_sec / rate,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_tps() {
        let text = "latency average = 1.2 ms\ninitial connection time = 9.1 ms\n\
                    tps = 13245.678901 (without initial connection time)\n";
        assert_eq!(parse_tps(text), Some(13245.678901));
        assert_eq!(parse_tps("pgbench: error"), None);
    }

    #[test]
    fn scripts_use_distinct_ascending_keys() {
        let s = scripts("bench_x");
        assert_eq!(s.len(), 3);
        let batch = &s[2].2;
        assert!(batch.contains("AS int8) + 99000") && !batch.contains("AS int8) + 100000"));
        assert_eq!(with_params("pg://h/db", "a=1"), "pg://h/db?a=1");
        assert_eq!(with_params("pg://h/db?x=2", "a=1"), "pg://h/db?x=2&a=1");
    }
}
