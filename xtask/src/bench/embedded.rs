//! `cargo xtask bench embedded`: ours over redb against the raw redb loop of `bench-ref`,
//! with and without fsync, in a scratch directory removed afterwards.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use super::measure::{Case, KEYSPACE, Row, VALUE_SIZE, case, paired, run_one};
use super::options::Options;
use super::report::{machine, write_section};
use super::tools::build_release;

/// A durability setting, expressed on both sides.
struct Mode {
    title: &'static str,
    /// Appended to our redb URL.
    url_query: &'static str,
    /// `bench-ref redb --durability`.
    raw_durability: &'static str,
    cases: Vec<Case>,
}

fn embedded_modes() -> Vec<Mode> {
    vec![
        Mode {
            title: "Commits without fsync (ours: `?durability=eventual`, flushed every 1 s; \
                    raw: `Durability::None`): the cost of our layer",
            url_query: "?durability=eventual",
            raw_durability: "none",
            cases: vec![
                case("get", "get", 500_000, 100),
                case("batch-get ×100", "batch-get", 500_000, 100),
                case("mixed 90/10", "mixed", 100_000, 100),
                case("put", "put", 50_000, 100),
                case("cas", "cas", 50_000, 100),
                case("batch-put ×100", "batch-put", 200_000, 100),
                case("batch-put ×1000", "batch-put", 200_000, 1_000),
            ],
        },
        Mode {
            title: "Commits fsync'd before returning (the default on both sides): what a \
                    durable write costs, bound by a disk whose fsync latency on this shared VM \
                    varies tenfold between runs",
            url_query: "",
            raw_durability: "immediate",
            cases: vec![
                case("put", "put", 2_000, 100),
                case("cas", "cas", 2_000, 100),
                case("mixed 90/10", "mixed", 10_000, 100),
                case("batch-put ×100", "batch-put", 20_000, 100),
                case("batch-put ×1000", "batch-put", 100_000, 1_000),
            ],
        },
    ]
}

/// redb's page cache on the raw side: the embedded backend's default (64 MiB), not redb's
/// own (1 GiB), so both sides run the same engine configuration.
pub(super) const RAW_CACHE_SIZE: &str = "67108864";
const CONCURRENCY: u64 = 16;

pub(super) fn run(root: &Path, opts: &Options) -> Result<()> {
    let (statectl, bench_ref) = build_release(root)?;
    let scratch = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let result = embedded_in(&scratch, &statectl, &bench_ref, opts);
    let _ = std::fs::remove_dir_all(&scratch);
    let sections = result?;
    let mut md = String::new();
    let _ = writeln!(md, "## Embedded (redb)\n");
    let _ = writeln!(md, "{}\n", machine());
    let _ = writeln!(
        md,
        "Shape: concurrency {CONCURRENCY}, values of {VALUE_SIZE} B, keyspace {KEYSPACE} \
         (filled before read workloads), median of {} runs per side, alternating which side \
         runs first. Ours: `statectl bench` ({CONCURRENCY} tokio tasks sharing one \
         `Arc<dyn StateBackend>`). Raw: `bench-ref redb` ({CONCURRENCY} OS threads sharing \
         one `redb::Database` with the same 64 MiB page cache, one read transaction per get, \
         one write transaction per put/cas/batch). Batch rows count ops/s in keys and latency per batch call. \
         ours/raw ops/s = the median over runs of (ours ops/s ÷ raw ops/s), each run's two \
         sides measured back to back. CPU µs/op = user + system CPU time of the whole process \
         (all threads) during the op, per key; ours/raw by CPU = raw ÷ ours CPU per key, so \
         above 1 means we spend less CPU than the raw loop. On a shared machine the CPU ratio \
         is the steadier of the two.\n",
        opts.runs
    );
    for (title, rows) in &sections {
        let _ = writeln!(md, "### {title}\n");
        md.push_str(&table(rows));
        md.push('\n');
    }
    md.push_str(&goals(&sections));
    println!("\n{md}");
    if opts.write && !opts.quick {
        write_section(root, "embedded", &md)?;
        println!("BENCHMARKS.md updated (section embedded).");
    } else {
        println!("BENCHMARKS.md left unchanged (--quick or --no-write).");
    }
    Ok(())
}

type Sections = Vec<(&'static str, Vec<Row>)>;

fn embedded_in(
    scratch: &Path,
    statectl: &Path,
    bench_ref: &Path,
    opts: &Options,
) -> Result<Sections> {
    let mut sections = Vec::new();
    for mode in embedded_modes() {
        let mut rows = Vec::new();
        for case in &mode.cases {
            let ops = if opts.quick {
                (case.ops / 10).max(case.batch)
            } else {
                case.ops
            };
            let shape = [
                "--workload".to_string(),
                case.workload.into(),
                "--ops".into(),
                ops.to_string(),
                "--concurrency".into(),
                CONCURRENCY.to_string(),
                "--value-size".into(),
                VALUE_SIZE.to_string(),
                "--keyspace".into(),
                KEYSPACE.to_string(),
                "--batch".into(),
                case.batch.to_string(),
            ];
            let db = scratch.join("bench.redb");
            let json = scratch.join("result.json");
            let (ours, raw) = paired(case.label, opts.runs, |is_raw| {
                let _ = std::fs::remove_file(&db);
                let mut cmd;
                if is_raw {
                    cmd = Command::new(bench_ref);
                    cmd.arg("redb")
                        .arg("--path")
                        .arg(&db)
                        .args(["--durability", mode.raw_durability])
                        .args(["--cache-size", RAW_CACHE_SIZE]);
                } else {
                    cmd = Command::new(statectl);
                    cmd.arg("--url")
                        .arg(format!("redb:{}{}", db.display(), mode.url_query))
                        .arg("bench");
                }
                cmd.args(&shape)
                    .arg("--json")
                    .arg(&json)
                    .current_dir(scratch);
                run_one(&mut cmd, &json)
            })?;
            rows.push(Row::new(
                Case {
                    ops,
                    ..case.clone()
                },
                &ours,
                &raw,
            ));
        }
        sections.push((mode.title, rows));
    }
    Ok(sections)
}

fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "| op | ops | ours ops/s | ours p50 µs | ours p99 µs | raw ops/s | raw p50 µs | raw p99 µs \
         | ours/raw ops/s | ours CPU µs/op | raw CPU µs/op | ours/raw by CPU |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | **{:.2}** | {:.2} | {:.2} \
             | {:.2} |",
            r.case.label,
            r.case.ops,
            r.ours.ops_per_sec,
            r.ours.p50_us,
            r.ours.p99_us,
            r.raw.ops_per_sec,
            r.raw.p50_us,
            r.raw.p99_us,
            r.ratio,
            r.ours.cpu_us_per_op,
            r.raw.cpu_us_per_op,
            r.cpu_ratio,
        );
    }
    t
}

fn goals(sections: &Sections) -> String {
    let mut out = String::from("Goals (measured, not asserted), on commits without fsync:\n\n");
    let fast = sections
        .first()
        .map(|(_, rows)| rows.as_slice())
        .unwrap_or(&[]);
    for (label, goal) in [("get", 0.9), ("batch-put ×1000", 0.8)] {
        if let Some(row) = fast.iter().find(|r| r.case.label == label) {
            let verdict = |x: f64| if x >= goal { "met" } else { "NOT met" };
            let _ = writeln!(
                out,
                "- {label} ≥ {goal:.1} × raw: {:.3} by throughput ({}), {:.3} by CPU per op ({})",
                row.ratio,
                verdict(row.ratio),
                row.cpu_ratio,
                verdict(row.cpu_ratio)
            );
        }
    }
    out
}
