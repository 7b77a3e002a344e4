//! The command line of `cargo xtask bench`.

use anyhow::{Context, Result, bail};

/// What the command line asked for.
#[derive(Debug)]
pub(super) struct Options {
    pub(super) backends: Vec<&'static str>,
    pub(super) runs: usize,
    pub(super) quick: bool,
    pub(super) write: bool,
}

const USAGE: &str = "usage: cargo xtask bench [embedded|redis|postgres|locks|all] [--runs N] \
                     [--quick] [--no-write]";

pub(super) fn parse(args: &[String]) -> Result<Options> {
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
