//! The scaling curves of `cargo xtask bench peers`: throughput and p99 of `get` and `put`
//! against concurrency (64-byte values) and against value size (16 tasks), ours and the
//! engine's best peer, drawn as SVG next to BENCHMARKS.md (`bench-plots/`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::clients::{Engine, Tools, shape};
use super::measure::{Case, KEYSPACE, Stats, median};
use super::options::Options;
use super::svg::{Panel, Series, figure};

const TASKS: [u64; 5] = [1, 4, 16, 64, 256];
const SIZES: [u64; 4] = [64, 1024, 16 * 1024, 256 * 1024];
/// Tasks of the value-size sweep.
const SIZE_TASKS: u64 = 16;
/// At most this many bytes of values in the keyspace (the read workloads fill it).
const KEYSPACE_BYTES: u64 = 256 << 20;
/// Folder of the plots, next to BENCHMARKS.md.
pub(super) const PLOTS: &str = "bench-plots";

/// One measured point: both clients' medians for one op.
struct Point {
    x: u64,
    ours: Stats,
    peer: Stats,
}

/// Measures both sweeps for `engine`, writes its two SVG files (unless `--no-write` or
/// `--quick`) and returns the Markdown that shows them with the numbers.
pub(super) fn run(
    root: &Path,
    engine: &Engine,
    tools: &Tools,
    peer: &'static str,
    opts: &Options,
) -> Result<String> {
    let ops: Vec<&Case> = engine
        .cases
        .iter()
        .filter(|c| matches!(c.workload, "get" | "put"))
        .collect();
    let mut by_tasks = Vec::new();
    let mut by_size = Vec::new();
    for case in &ops {
        let mut points = Vec::new();
        for tasks in TASKS {
            points.push(point(engine, tools, peer, case, (tasks, 64), tasks, opts)?);
        }
        by_tasks.push((case.workload, points));
        let mut points = Vec::new();
        for size in SIZES {
            points.push(point(
                engine,
                tools,
                peer,
                case,
                (SIZE_TASKS, size),
                size,
                opts,
            )?);
        }
        by_size.push((case.workload, points));
    }
    let mut md = format!(
        "#### {}: scaling, ours against `{peer}`\n\nMedian of {} runs per point, the two \
         clients alternating. Left: throughput; right: p99 latency, both on log scales. \
         Concurrency sweep: 64-byte values; value-size sweep: {SIZE_TASKS} tasks, keyspace \
         at most {} MiB of values.\n\n",
        engine.title,
        opts.runs,
        KEYSPACE_BYTES >> 20
    );
    let files = [
        ("concurrency", "tasks", &by_tasks),
        ("value-size", "value bytes", &by_size),
    ];
    for (name, x_label, sweep) in files {
        let file = format!("{PLOTS}/{}-{name}.svg", engine.key);
        let svg = figure(
            &format!("{}: ours and {peer} against {x_label}", engine.title),
            &panels(peer, x_label, sweep),
        );
        if opts.write && !opts.quick {
            let path = root.join(&file);
            std::fs::create_dir_all(root.join(PLOTS))
                .and_then(|()| std::fs::write(&path, svg))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let _ = writeln!(md, "![{} against {x_label}]({file})\n", engine.title);
        let _ = writeln!(
            md,
            "| op | {x_label} | ours ops/s | {peer} ops/s | ours ÷ {peer} | ours p99 µs | {peer} p99 µs |\n\
             |---|---:|---:|---:|---:|---:|---:|"
        );
        for (op, points) in sweep.iter() {
            for p in points {
                let ratio = if p.peer.ops_per_sec > 0.0 {
                    p.ours.ops_per_sec / p.peer.ops_per_sec
                } else {
                    0.0
                };
                let _ = writeln!(
                    md,
                    "| {op} | {} | {:.0} | {:.0} | {ratio:.2} | {:.1} | {:.1} |",
                    p.x, p.ours.ops_per_sec, p.peer.ops_per_sec, p.ours.p99_us, p.peer.p99_us
                );
            }
        }
        md.push('\n');
    }
    Ok(md)
}

/// Both clients at `tasks` tasks and `size`-byte values (plotted at `x`), `--runs` times,
/// alternating which goes first.
fn point(
    engine: &Engine,
    tools: &Tools,
    peer: &'static str,
    case: &Case,
    (tasks, size): (u64, u64),
    x: u64,
    opts: &Options,
) -> Result<Point> {
    let keyspace = KEYSPACE.min((KEYSPACE_BYTES / size.max(1)).max(100));
    // Fewer calls where each moves more bytes or fewer run at once, so that every point
    // takes about as long as the 16-task, 64-byte one.
    let mut ops = case.ops * tasks.min(16) / 16;
    ops = ops * 64 / size.max(64);
    if opts.quick {
        ops /= 10;
    }
    let ops = ops.max(200 * tasks.min(16)).max(tasks);
    let args = shape(case, ops, tasks, size, keyspace);
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for run in 0..opts.runs {
        let order = if run % 2 == 0 {
            ["ours", peer]
        } else {
            [peer, "ours"]
        };
        for client in order {
            let s = engine
                .run(tools, client, tasks, &args)
                .with_context(|| {
                    format!(
                        "{} {client}: {} at {tasks} tasks, {size} B",
                        engine.title, case.workload
                    )
                })?
                .stats;
            println!(
                "  {:<10} curve {:<4} {tasks:>3} tasks {size:>6} B {client:<12} run {}: {:>10.0} ops/s  p99 {:>9.1} µs",
                engine.key,
                case.workload,
                run + 1,
                s.ops_per_sec,
                s.p99_us
            );
            if client == "ours" {
                ours.push(s);
            } else {
                theirs.push(s);
            }
        }
    }
    Ok(Point {
        x,
        ours: median(&ours),
        peer: median(&theirs),
    })
}

fn panels(peer: &str, x_label: &str, sweep: &[(&str, Vec<Point>)]) -> Vec<Panel> {
    let x_ticks: Vec<(f64, String)> = sweep
        .first()
        .map(|(_, points)| {
            points
                .iter()
                .map(|p| (p.x as f64, tick_label(p.x, x_label)))
                .collect()
        })
        .unwrap_or_default();
    let metric = |title: &str, y_label: &str, pick: fn(&Stats) -> f64| Panel {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        x_ticks: x_ticks.clone(),
        series: sweep
            .iter()
            .flat_map(|(op, points)| {
                let dashed = *op == "put";
                [
                    Series {
                        name: format!("ours {op}"),
                        color: "#1f77b4",
                        dashed,
                        points: points.iter().map(|p| (p.x as f64, pick(&p.ours))).collect(),
                    },
                    Series {
                        name: format!("{peer} {op}"),
                        color: "#ff7f0e",
                        dashed,
                        points: points.iter().map(|p| (p.x as f64, pick(&p.peer))).collect(),
                    },
                ]
            })
            .collect(),
    };
    vec![
        metric("throughput", "ops/s", |s| s.ops_per_sec),
        metric("p99 latency", "µs", |s| s.p99_us),
    ]
}

fn tick_label(x: u64, x_label: &str) -> String {
    if x_label == "tasks" {
        return x.to_string();
    }
    match x {
        x if x >= 1024 => format!("{} KiB", x / 1024),
        x => format!("{x} B"),
    }
}
