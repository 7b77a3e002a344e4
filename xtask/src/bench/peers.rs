//! `cargo xtask bench peers`: ours against the libraries a user would pick instead, one
//! table per engine, then the scaling curves (bench/scaling.rs) of ours and the best peer.
//!
//! Every client of an engine runs the same `statectl bench` workload shape (`bench-ref
//! <engine> --client …` for the peers), `--runs` times at 16 and at 64 tasks; the order of
//! the clients rotates from run to run so none always meets a warmer (or busier) machine.
//! "ours ÷ best" is the median over runs of ours ÷ the best peer of that run's round, both
//! measured minutes apart at most.
//!
//! `--cell ENGINE:WORKLOAD@TASKS` (repeatable) measures only the cells it names, prints
//! each run's ratio, and writes nothing: a cell whose runs spread more than the gap it
//! shows needs more `--runs` than a whole table can afford.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::clients::{Engine, Tools, engines, shape};
use super::measure::{Case, KEYSPACE, Stats, median, median_of};
use super::options::Options;
use super::redis::PrivateRedis;
use super::report::{machine, write_section};
use super::scaling;
use super::tools::{build_release, scratch_dir};

/// Tasks of the two table columns the goal names.
const TASKS: [u64; 2] = [16, 64];
/// One (case, tasks) cell: every client's samples, run by run in the same order.
struct Cell {
    case: Case,
    tasks: u64,
    /// Per client (ours first), one sample per run.
    samples: Vec<Vec<Stats>>,
}

/// Entry point of `cargo xtask bench peers`.
pub(super) fn run(root: &Path, opts: &Options) -> Result<()> {
    let (statectl, bench_ref) = build_release(root)?;
    let scratch = scratch_dir("peers")?;
    let tools = Tools {
        statectl,
        bench_ref,
        json: scratch.join("result.json"),
        scratch: scratch.clone(),
    };
    let server = PrivateRedis::start()?;
    println!("peers: private redis-server at {}", server.url());
    let result = measure_all(root, &tools, &server.url(), opts);
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn measure_all(root: &Path, tools: &Tools, redis_url: &str, opts: &Options) -> Result<()> {
    let mut sections = Vec::new();
    for engine in engines(redis_url, &tools.scratch)? {
        let chosen = chosen(&engine, opts);
        if chosen.is_empty() {
            continue;
        }
        let (cells, executions) = measure(&engine, &chosen, tools, opts)?;
        let md = markdown(&engine, &cells, &executions, opts);
        println!("\n{md}");
        if !opts.cells.is_empty() {
            // Cells picked by hand: their spread, and no curves.
            for cell in &cells {
                println!("{}", cell.spread(&engine.clients()));
            }
            continue;
        }
        let peer = best_curve_peer(&engine, &cells);
        let curves = scaling::run(root, &engine, tools, peer, opts)?;
        sections.push(format!("{md}\n{curves}"));
    }
    if opts.write && !opts.quick {
        let body = format!(
            "## Ours against the libraries users would pick instead\n\n{}\n\n{}",
            machine(),
            sections.join("\n")
        );
        write_section(root, "peers", &body)?;
        println!("BENCHMARKS.md updated (section peers).");
    } else {
        println!("BENCHMARKS.md left unchanged (--quick or --no-write).");
    }
    Ok(())
}

/// The (tasks, case) cells of `engine` to measure: its whole table, or those `--cell` names.
fn chosen<'e>(engine: &'e Engine, opts: &Options) -> Vec<(u64, &'e Case)> {
    if opts.cells.is_empty() {
        return TASKS
            .iter()
            .flat_map(|&tasks| engine.cases.iter().map(move |case| (tasks, case)))
            .collect();
    }
    opts.cells
        .iter()
        .filter(|cell| cell.engine == engine.key)
        .filter_map(|cell| {
            let case = engine.cases.iter().find(|c| c.workload == cell.workload)?;
            Some((cell.tasks, case))
        })
        .collect()
}

fn measure(
    engine: &Engine,
    chosen: &[(u64, &Case)],
    tools: &Tools,
    opts: &Options,
) -> Result<(Vec<Cell>, Vec<String>)> {
    let clients = engine.clients();
    let mut executions = vec![String::new(); clients.len()];
    let mut cells = Vec::new();
    for &(tasks, case) in chosen {
        let ops = if opts.quick {
            (case.ops / 10).max(case.batch)
        } else {
            case.ops
        };
        let args = shape(case, ops, tasks, 64, KEYSPACE);
        let mut samples = vec![Vec::new(); clients.len()];
        for run in 0..opts.runs {
            // Rotate the order: each client goes first in some run.
            for k in 0..clients.len() {
                let i = (k + run) % clients.len();
                let sample = engine
                    .run(tools, clients[i], tasks, &args)
                    .with_context(|| format!("{} {} at {tasks} tasks", engine.title, clients[i]))?;
                let s = sample.stats;
                println!(
                    "  {:<10} {:<15} {tasks:>3} tasks {:<12} run {}: {:>10.0} ops/s  p50 {:>9.1} µs  p99 {:>9.1} µs  CPU {:>6.2} µs/op",
                    engine.key,
                    case.label,
                    clients[i],
                    run + 1,
                    s.ops_per_sec,
                    s.p50_us,
                    s.p99_us,
                    s.cpu_us_per_op
                );
                samples[i].push(s);
                executions[i] = sample.execution;
            }
        }
        cells.push(Cell {
            case: Case {
                ops,
                ..case.clone()
            },
            tasks,
            samples,
        });
    }
    Ok((cells, executions))
}

impl Cell {
    /// The peer with the highest median throughput (index into the clients, never 0).
    fn best_peer(&self) -> usize {
        (1..self.samples.len())
            .max_by(|&a, &b| {
                median(&self.samples[a])
                    .ops_per_sec
                    .total_cmp(&median(&self.samples[b]).ops_per_sec)
            })
            .unwrap_or(1)
    }

    /// Median over runs of ours ÷ the best peer's throughput in the same run.
    fn ours_over_best(&self) -> f64 {
        median_of(self.ratios())
    }

    /// Per run, ours ÷ the best peer's throughput in that run.
    fn ratios(&self) -> Vec<f64> {
        let best = self.best_peer();
        self.samples[0]
            .iter()
            .zip(&self.samples[best])
            .filter(|(_, p)| p.ops_per_sec > 0.0)
            .map(|(o, p)| o.ops_per_sec / p.ops_per_sec)
            .collect()
    }

    /// One line: each run's ours ÷ best, their median and mean.
    fn spread(&self, clients: &[&str]) -> String {
        let ratios = self.ratios();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        let mean = ratios.iter().sum::<f64>() / ratios.len().max(1) as f64;
        format!(
            "{} at {} tasks, ours ÷ {} run by run: {} (median {:.2}, mean {mean:.2})",
            self.case.label,
            self.tasks,
            clients.get(self.best_peer()).copied().unwrap_or("?"),
            each.join(" "),
            median_of(ratios)
        )
    }
}

/// The peer the curves compare with: the best at 16 tasks over get and put (geometric
/// mean), among those that can run at every concurrency.
fn best_curve_peer(engine: &Engine, cells: &[Cell]) -> &'static str {
    let clients = engine.clients();
    let score = |peer: &str| -> f64 {
        let i = clients.iter().position(|c| *c == peer).unwrap_or(0);
        cells
            .iter()
            .filter(|c| c.tasks == TASKS[0] && matches!(c.case.workload, "get" | "put"))
            .map(|c| median(&c.samples[i]).ops_per_sec.max(1.0).ln())
            .sum()
    };
    engine
        .curve_peers
        .iter()
        .copied()
        .max_by(|a, b| score(a).total_cmp(&score(b)))
        .unwrap_or("raw")
}

fn markdown(engine: &Engine, cells: &[Cell], executions: &[String], opts: &Options) -> String {
    let clients = engine.clients();
    let mut md = format!("### {}\n\n", engine.title);
    let _ = writeln!(
        md,
        "64-byte values, keyspace {KEYSPACE} (filled before the read workloads), batches of \
         100, median of {} runs per client, the clients' order rotating from run to run. \
         Ours: {}. How each client ran (from its report):\n",
        opts.runs, engine.ours_note
    );
    for (client, execution) in clients.iter().zip(executions) {
        let _ = writeln!(md, "- `{client}`: {execution}");
    }
    let _ = writeln!(
        md,
        "\n| op | tasks | ours ops/s | best peer | its ops/s | **ours ÷ best** | ours p99 µs | its p99 µs | ours CPU µs/op | its CPU µs/op |\n\
         |---|---:|---:|---|---:|---:|---:|---:|---:|---:|"
    );
    for cell in cells {
        let best = cell.best_peer();
        let (o, p) = (median(&cell.samples[0]), median(&cell.samples[best]));
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {} | {:.0} | **{:.2}** | {:.1} | {:.1} | {:.2} | {:.2} |",
            cell.case.label,
            cell.tasks,
            o.ops_per_sec,
            clients[best],
            p.ops_per_sec,
            cell.ours_over_best(),
            o.p99_us,
            p.p99_us,
            o.cpu_us_per_op,
            p.cpu_us_per_op
        );
    }
    let _ = writeln!(
        md,
        "\n<details><summary>Every client (medians)</summary>\n\n\
         | op | tasks | client | ops/s | p50 µs | p99 µs | CPU µs/op |\n|---|---:|---|---:|---:|---:|---:|"
    );
    for cell in cells {
        for (i, client) in clients.iter().enumerate() {
            let s = median(&cell.samples[i]);
            let _ = writeln!(
                md,
                "| {} | {} | {client} | {:.0} | {:.1} | {:.1} | {:.2} |",
                cell.case.label, cell.tasks, s.ops_per_sec, s.p50_us, s.p99_us, s.cpu_us_per_op
            );
        }
    }
    let _ = writeln!(md, "\n</details>");
    md
}

#[cfg(test)]
mod tests {
    use super::super::options::{ENGINE_KEYS, WORKLOADS};
    use super::*;

    #[test]
    fn the_cell_names_are_the_engines_and_their_workloads() -> Result<()> {
        let all = engines("redis://127.0.0.1:6379", Path::new("/tmp"))?;
        let keys: Vec<&str> = all.iter().map(|e| e.key).collect();
        assert_eq!(keys, ENGINE_KEYS);
        for engine in &all {
            let workloads: Vec<&str> = engine.cases.iter().map(|c| c.workload).collect();
            assert_eq!(workloads, WORKLOADS, "{}", engine.key);
        }
        Ok(())
    }
}
