//! `cargo xtask bench [embedded|redis|postgres|locks|all] [--runs N] [--quick] [--no-write]`
//!
//! For each workload, runs `statectl bench` (ours) and the raw-engine reference `bench-ref`
//! with the same shape, `--runs` times each (default 3), alternating which goes first, takes
//! the medians, prints ours/raw ratios and rewrites this backend's section of BENCHMARKS.md.
//! Both tools write the same JSON (`bench_ref::report`), parsed here by hand to keep xtask's
//! dependencies at anyhow and clap. `redis` (bench/redis.rs) also runs `redis-benchmark`, all
//! on a private `redis-server`; `postgres` (bench/postgres.rs) also runs `pgbench` with the
//! backend's SQL, in schemas of its own that it drops. `locks` runs state-lock's
//! `lock_latency` example: uncontended acquire+release against one round trip, same run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

mod postgres;
mod redis;

/// What the command line asked for.
#[derive(Debug)]
struct Options {
    backends: Vec<&'static str>,
    runs: usize,
    quick: bool,
    write: bool,
}

const USAGE: &str = "usage: cargo xtask bench [embedded|redis|postgres|locks|all] [--runs N] \
                     [--quick] [--no-write]";

fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        backends: Vec::new(),
        runs: 3,
        quick: false,
        write: true,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "embedded" | "redb" => opts.backends.push("embedded"),
            "redis" => opts.backends.push("redis"),
            "postgres" => opts.backends.push("postgres"),
            "locks" | "lock" => opts.backends.push("locks"),
            "all" => opts
                .backends
                .extend(["embedded", "redis", "postgres", "locks"]),
            "--runs" => {
                let n = it.next().context(USAGE)?;
                opts.runs =
                    n.parse().ok().filter(|n| *n >= 1).with_context(|| {
                        format!("--runs `{n}` is not a positive number; {USAGE}")
                    })?;
            }
            "--quick" => opts.quick = true,
            "--no-write" => opts.write = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                println!(
                    "  --runs N    runs per side and workload; medians are reported (default 3)"
                );
                println!(
                    "  --quick     one tenth of the ops and one run: a smoke test, not numbers"
                );
                println!("  --no-write  print the table but leave BENCHMARKS.md alone");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`; {USAGE}"),
        }
    }
    if opts.backends.is_empty() {
        opts.backends.push("embedded");
    }
    if opts.quick {
        opts.runs = 1;
    }
    opts.backends.dedup();
    Ok(opts)
}

/// Entry point of `cargo xtask bench`, with the arguments after `bench`.
pub fn run(args: &[String]) -> Result<()> {
    let opts = parse(args)?;
    let root = util::workspace_root();
    for backend in &opts.backends {
        match *backend {
            "embedded" => embedded(&root, &opts)?,
            "redis" => redis::run(&root, &opts)?,
            "locks" => locks(&root, &opts)?,
            _ => postgres::run(&root, &opts)?,
        }
    }
    Ok(())
}

/// `bench locks`: the lock latency table, against the test services (STATE_TEST_REDIS_URL
/// and STATE_TEST_POSTGRES_URL, else the local defaults).
fn locks(root: &Path, opts: &Options) -> Result<()> {
    let built = util::run_shown(util::cargo().args([
        "build",
        "--release",
        "-p",
        "state-lock",
        "--example",
        "lock_latency",
    ]))?;
    if !built.ok {
        bail!("cargo build --release -p state-lock --example lock_latency failed");
    }
    let bin = target_dir(root).join("release/examples/lock_latency");
    let iterations = if opts.quick { "500" } else { "5000" };
    let rounds = opts.runs.to_string();
    // Poll idle (the comparable table) where this user may hold /dev/cpu_dma_latency, then
    // the default idle states.
    let poll = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .is_ok();
    let states: &[&str] = if poll {
        &["poll", "default"]
    } else {
        &["default"]
    };
    let mut tables = Vec::new();
    for (i, state) in states.iter().enumerate() {
        let mut cmd = Command::new(&bin);
        cmd.args(["--iterations", iterations, "--rounds", &rounds])
            .args(["--cpu-idle", state]);
        if i > 0 {
            cmd.arg("--no-notes");
        }
        println!("$ {}", util::show(&cmd));
        let table = util::capture(&mut cmd).with_context(|| format!("{} failed", bin.display()))?;
        print!("{table}");
        tables.push(table);
    }
    if !poll {
        tables.push(
            "(No poll-idle table: /dev/cpu_dma_latency is not writable by this user.)\n"
                .to_string(),
        );
    }
    let table = tables.join("\n");
    if opts.write {
        let md = format!("## Locks\n\n{}\n\n{table}\n", machine());
        write_section(root, "locks", &md)?;
        println!("BENCHMARKS.md updated (section locks).");
    }
    Ok(())
}

/// Runs a reference tool (`pgbench`, `redis-benchmark`) and reads `what` from its output
/// with `parse`; a failed run or an unreadable output is an error quoting both streams.
fn reference_output<T>(
    cmd: &mut Command,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<T> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match parse(&text) {
        Some(value) if out.status.success() => Ok(value),
        _ => bail!(
            "{cmd:?} gave no {what}: {} {}",
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    }
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

fn build_release(root: &Path) -> Result<(PathBuf, PathBuf)> {
    let built = util::run_shown(util::cargo().args([
        "build",
        "--release",
        "-p",
        "statectl",
        "-p",
        "bench-ref",
    ]))?;
    if !built.ok {
        bail!("cargo build --release -p statectl -p bench-ref failed");
    }
    let bin = target_dir(root).join("release");
    Ok((bin.join("statectl"), bin.join("bench-ref")))
}

/// One row of the comparison.
#[derive(Debug, Clone)]
struct Case {
    label: &'static str,
    workload: &'static str,
    ops: u64,
    batch: u64,
}

const fn case(label: &'static str, workload: &'static str, ops: u64, batch: u64) -> Case {
    Case {
        label,
        workload,
        ops,
        batch,
    }
}

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

/// The medians of one side of one case.
#[derive(Debug, Clone, Copy, Default)]
struct Stats {
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    /// Process CPU time per key (all threads), 0 where unknown.
    cpu_us_per_op: f64,
}

struct Row {
    case: Case,
    ours: Stats,
    raw: Stats,
    /// The median of the per-run ratios: each run's two sides ran back to back, so they saw
    /// the same load from whatever else shares the machine.
    ratio: f64,
    /// The median of the per-run raw ÷ ours CPU time per key: our efficiency, which other
    /// programs on the machine do not move the way they move wall-clock throughput.
    cpu_ratio: f64,
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

/// redb's page cache on the raw side: the embedded backend's default (64 MiB), not redb's
/// own (1 GiB), so both sides run the same engine configuration.
const RAW_CACHE_SIZE: &str = "67108864";
const CONCURRENCY: u64 = 16;
const VALUE_SIZE: u64 = 64;
const KEYSPACE: u64 = 100_000;

fn embedded(root: &Path, opts: &Options) -> Result<()> {
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

/// Runs each side `runs` times, alternating which goes first so neither always meets a
/// warmer (or busier) machine; `side(is_raw)` runs one side once.
fn paired(
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
    fn new(case: Case, ours: &[Stats], raw: &[Stats]) -> Row {
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
fn shape_args(case: &Case, ops: u64, concurrency: u64, json: &Path) -> Vec<String> {
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
fn scaled(case: &Case, opts: &Options) -> u64 {
    if opts.quick {
        (case.ops / 10).max(case.batch)
    } else {
        case.ops
    }
}

/// A scratch directory under the system temp dir, removed by the caller.
fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xtask-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A name no other run on this machine uses at the same time.
fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}_{nanos:x}", std::process::id())
}

/// The verdict of a measured ratio against its goal.
fn verdict(x: f64, goal: f64, at_most: bool) -> &'static str {
    if (at_most && x <= goal) || (!at_most && x >= goal) {
        "met"
    } else {
        "NOT met"
    }
}

fn run_one(cmd: &mut Command, json: &Path) -> Result<Stats> {
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
fn json_number(text: &str, key: &str) -> Option<f64> {
    let quoted = format!("\"{key}\"");
    let after = &text[text.find(&quoted)? + quoted.len()..];
    let after = after.trim_start().strip_prefix(':')?.trim_start();
    let end = after
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(after.len());
    after[..end].parse().ok()
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn median(samples: &[Stats]) -> Stats {
    let pick = |f: fn(&Stats) -> f64| median_of(samples.iter().map(f).collect());
    Stats {
        ops_per_sec: pick(|s| s.ops_per_sec),
        p50_us: pick(|s| s.p50_us),
        p99_us: pick(|s| s.p99_us),
        cpu_us_per_op: pick(|s| s.cpu_us_per_op),
    }
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

fn machine() -> String {
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

fn command_line(program: &str, args: &[&str]) -> String {
    util::capture(Command::new(program).args(args))
        .map(|out| out.trim().to_string())
        .unwrap_or_else(|| format!("({program} unavailable)"))
}

const HEADER: &str = "# Benchmarks\n\n\
Written by `cargo xtask bench [embedded|redis|postgres|locks|all]`; each section is \
replaced when that part is measured. Every number is compared with the raw engine \
measured in the same run on the same machine, with the same value size, keyspace, \
concurrency and batch size (DESIGN.md, \"Performance method\"). Machines are shared and \
noisy: the ratios matter more than the absolute numbers.\n";

/// Replaces the `backend` section of BENCHMARKS.md (between its markers), keeping the others.
fn write_section(root: &Path, backend: &str, body: &str) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_numbers_from_our_json() {
        let text = r#"{"results": [ {"op": "get", "ops_per_sec": 1234.5, "p50_us":7e-1} ]}"#;
        assert_eq!(json_number(text, "ops_per_sec"), Some(1234.5));
        assert_eq!(json_number(text, "p50_us"), Some(0.7));
        assert_eq!(json_number(text, "p99_us"), None);
    }

    #[test]
    fn medians_and_arguments() -> Result<()> {
        let s = |x| Stats {
            ops_per_sec: x,
            p50_us: x,
            p99_us: x,
            cpu_us_per_op: x,
        };
        assert_eq!(median(&[s(3.0), s(1.0), s(2.0)]).ops_per_sec, 2.0);
        assert_eq!(median(&[s(4.0), s(1.0)]).p50_us, 2.5);
        let o = parse(&["all".into(), "--runs".into(), "5".into()])?;
        assert_eq!((o.backends.len(), o.runs), (4, 5));
        assert!(parse(&["--runs".into(), "0".into()]).is_err());
        assert!(parse(&["mysql".into()]).is_err());
        Ok(())
    }
}
