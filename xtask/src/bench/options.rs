//! The command line of `cargo xtask bench`.

use anyhow::{Context, Result, bail};

/// What the command line asked for.
#[derive(Debug)]
pub(super) struct Options {
    pub(super) backends: Vec<&'static str>,
    pub(super) runs: usize,
    /// `overhead`'s bare/layered pairs: `--runs` if given, else 5 (1 with `--quick`).
    pub(super) pairs: usize,
    /// `overhead`: memory:// gets per run.
    pub(super) calls: u64,
    /// `overhead`: seconds per Redis run.
    pub(super) seconds: f64,
    /// `checkpoint`: keys of the large run (the small one has a tenth).
    pub(super) keys: u64,
    pub(super) quick: bool,
    pub(super) write: bool,
    /// `peers --cell …`: only these cells of the peers tables, printed, not written.
    pub(super) cells: Vec<CellChoice>,
}

/// One cell of the peers tables, named on the command line as `ENGINE:WORKLOAD@TASKS`
/// (`postgres:batch-put@64`), to re-measure alone with more runs than a whole table can
/// afford.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CellChoice {
    pub(super) engine: String,
    pub(super) workload: String,
    pub(super) tasks: u64,
}

/// The engines' keys and their cases' workloads, as `clients::engines` names them: what
/// `--cell` may pick, checked here, before minutes of release build (a test in peers.rs
/// keeps them in step).
pub(super) const ENGINE_KEYS: [&str; 3] = ["redis", "postgres", "redb"];
pub(super) const WORKLOADS: [&str; 6] = ["get", "put", "mixed", "cas", "batch-get", "batch-put"];

impl std::str::FromStr for CellChoice {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<CellChoice> {
        let shape = "ENGINE:WORKLOAD@TASKS, e.g. postgres:batch-put@64";
        let Some((engine, rest)) = text.split_once(':') else {
            bail!("--cell `{text}` is not {shape}");
        };
        let Some((workload, tasks)) = rest.split_once('@') else {
            bail!("--cell `{text}` names no task count: {shape}");
        };
        if !ENGINE_KEYS.contains(&engine) {
            bail!(
                "--cell `{text}`: the engine is one of {}",
                ENGINE_KEYS.join(", ")
            );
        }
        if !WORKLOADS.contains(&workload) {
            bail!(
                "--cell `{text}`: the workload is one of {}",
                WORKLOADS.join(", ")
            );
        }
        let tasks = match tasks.parse::<u64>() {
            Ok(n) if n > 0 => n,
            _ => bail!("--cell `{text}`: `{tasks}` is not a positive number of tasks"),
        };
        Ok(CellChoice {
            engine: engine.to_string(),
            workload: workload.to_string(),
            tasks,
        })
    }
}

/// `checkpoint`: keys in the large run unless `--keys` says otherwise (the small run has a
/// tenth); BENCHMARKS.md is written only at this size.
pub(super) const KEYS: u64 = 1_000_000;

const USAGE: &str = "usage: cargo xtask bench \
                     [embedded|redis|postgres|locks|overhead|checkpoint|compression|peers|all] [--runs N] \
                     [--calls N] [--seconds S] [--keys N] [--cell ENGINE:WORKLOAD@TASKS]... [--quick] \
                     [--no-write]";

pub(super) fn parse(args: &[String]) -> Result<Options> {
    let mut opts = Options {
        backends: Vec::new(),
        runs: 3,
        pairs: 5,
        calls: 2_000_000,
        seconds: 3.0,
        keys: KEYS,
        quick: false,
        write: true,
        cells: Vec::new(),
    };
    let mut runs = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "embedded" | "redb" => opts.backends.push("embedded"),
            "redis" => opts.backends.push("redis"),
            "postgres" => opts.backends.push("postgres"),
            "locks" | "lock" => opts.backends.push("locks"),
            "overhead" => opts.backends.push("overhead"),
            "checkpoint" | "checkpoints" => opts.backends.push("checkpoint"),
            "compression" | "compress" => opts.backends.push("compression"),
            "peers" => opts.backends.push("peers"),
            "all" => opts.backends.extend([
                "embedded",
                "redis",
                "postgres",
                "locks",
                "overhead",
                "checkpoint",
                "compression",
                "peers",
            ]),
            "--runs" => {
                let n = it.next().context(USAGE)?;
                runs =
                    Some(n.parse().ok().filter(|n| *n >= 1).with_context(|| {
                        format!("--runs `{n}` is not a positive number; {USAGE}")
                    })?);
            }
            "--calls" => {
                let n = it.next().context(USAGE)?;
                opts.calls =
                    n.parse().ok().filter(|n| *n >= 1).with_context(|| {
                        format!("--calls `{n}` is not a positive number; {USAGE}")
                    })?;
            }
            "--keys" => {
                let n = it.next().context(USAGE)?;
                opts.keys = n.parse().ok().filter(|n| *n >= 10).with_context(|| {
                    format!("--keys `{n}` is not a number of at least 10; {USAGE}")
                })?;
            }
            "--seconds" => {
                let s = it.next().context(USAGE)?;
                opts.seconds = s
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .with_context(|| {
                        format!("--seconds `{s}` is not a positive number; {USAGE}")
                    })?;
            }
            "--cell" => {
                let Some(cell) = it.next() else {
                    bail!("--cell needs ENGINE:WORKLOAD@TASKS; {USAGE}");
                };
                opts.cells.push(cell.parse()?);
            }
            "--quick" => opts.quick = true,
            "--no-write" => opts.write = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                println!(
                    "  --runs N    runs per side and workload; medians are reported (default 3)"
                );
                println!("              (overhead: bare/layered pairs, default 5)");
                println!("  --calls N   overhead: memory:// gets per run (default 2000000)");
                println!("  --seconds S overhead: seconds per Redis run (default 3)");
                println!(
                    "  --keys N    checkpoint: keys of the large run, the small one has N/10 \
                     (default 1000000; BENCHMARKS.md is written only at the default)"
                );
                println!(
                    "  checkpoint  statectl checkpoint create/restore on PostgreSQL, Redis and \
                     redb against COPY and redis-cli --pipe; part of `all`, and its longest job \
                     (several minutes at 1M keys)"
                );
                println!(
                    "  compression puts and gets of 16 KiB and 256 KiB values, text and random, \
                     bare and under the compression layer (lz4, zstd) on Redis and PostgreSQL, \
                     and the bytes stored"
                );
                println!(
                    "  peers       ours against fred, deadpool-redis, bb8-redis, the redis \
                     crate; sqlx PgPool, deadpool-postgres, tokio-postgres pipelined, one sqlx \
                     connection per task; raw redb: tables at 16 and 64 tasks, then curves \
                     against concurrency and value size (SVG in bench-plots/); part of `all`"
                );
                println!(
                    "  --quick     one tenth of the ops and one run: a smoke test, not numbers"
                );
                println!(
                    "  --cell C    peers: only the cell C (ENGINE:WORKLOAD@TASKS, e.g. \
                     postgres:batch-put@64; repeatable), each run's ours ÷ best printed, \
                     no curves, BENCHMARKS.md left alone: to re-measure a noisy cell with \
                     more --runs"
                );
                println!("  --no-write  print the table but leave BENCHMARKS.md alone");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`; {USAGE}"),
        }
    }
    if !opts.cells.is_empty() {
        if opts.backends.iter().any(|b| *b != "peers") {
            bail!("--cell picks cells of `peers` only; {USAGE}");
        }
        opts.backends.push("peers");
        opts.write = false;
    }
    if opts.backends.is_empty() {
        opts.backends.push("embedded");
    }
    opts.runs = runs.unwrap_or(3);
    opts.pairs = runs.unwrap_or(5);
    if opts.quick {
        opts.runs = 1;
        opts.pairs = 1;
        opts.calls = (opts.calls / 10).max(1);
        opts.seconds = opts.seconds.min(1.0);
    }
    opts.backends.dedup();
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn a_cell_names_engine_workload_and_tasks() -> Result<()> {
        let opts = parse(&args(
            "--cell postgres:batch-put@64 --cell redb:get@16 --runs 9",
        ))?;
        assert_eq!(opts.backends, ["peers"]);
        assert_eq!(opts.runs, 9);
        assert!(!opts.write);
        let named: Vec<(&str, &str, u64)> = opts
            .cells
            .iter()
            .map(|c| (c.engine.as_str(), c.workload.as_str(), c.tasks))
            .collect();
        assert_eq!(named, [("postgres", "batch-put", 64), ("redb", "get", 16)]);
        Ok(())
    }

    #[test]
    fn a_malformed_cell_says_what_is_expected() {
        for (line, says) in [
            ("--cell postgres", "ENGINE:WORKLOAD@TASKS"),
            ("--cell postgres:get", "no task count"),
            ("--cell mysql:get@16", "the engine is one of"),
            ("--cell redis:scan@16", "the workload is one of"),
            ("--cell redis:get@0", "not a positive number"),
            ("--cell", "needs ENGINE:WORKLOAD@TASKS"),
            ("redis --cell redis:get@16", "cells of `peers` only"),
        ] {
            match parse(&args(line)) {
                Ok(opts) => panic!("{line}: accepted as {opts:?}"),
                Err(err) => assert!(err.to_string().contains(says), "{line}: {err}"),
            }
        }
    }
}
