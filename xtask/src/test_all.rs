//! `cargo xtask test-all [--cases N] [--matrix]`: services up, then every test of every
//! crate and the container suites; with `--matrix`, the suites across backends, topologies
//! and layers instead (see [`crate::matrix`]).

use anyhow::{Result, bail};

use crate::docker::DockerEnv;
use crate::matrix::{self, Selection};
use crate::services::{self, POSTGRES_ENV, REDIS_ENV};
use crate::util::{self, Outcome, cargo, human};

/// Options shared by `test-all` and `ci`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Cases per property test (exported as PROPTEST_CASES).
    #[arg(long, default_value_t = 256)]
    pub cases: u32,
    /// Run the matrix (every cell, bare and under every layer) instead of the crates' tests.
    #[arg(long)]
    pub matrix: bool,
    /// Matrix cells to run, comma-separated (default: all).
    #[arg(long, value_delimiter = ',')]
    pub cells: Vec<String>,
    /// Matrix layer sets to run, comma-separated: bare, full (default: both).
    #[arg(long, value_delimiter = ',')]
    pub layers: Vec<String>,
    /// Cases per property in the matrix `ci` runs after the tests.
    #[arg(long, default_value_t = 32)]
    pub matrix_cases: u32,
}

/// The services every step runs against.
pub struct Services {
    redis: String,
    postgres: String,
    docker: Result<DockerEnv>,
}

pub fn run(options: &Options) -> Result<()> {
    let services = prepare()?;
    let results = if options.matrix {
        vec![matrix_step(&services, options, options.cases)?]
    } else {
        steps(&services, options)?
    };
    summarize("test-all", &results)
}

/// Makes sure Redis, PostgreSQL and the Docker engine are there (see `services up`). An
/// engine that cannot be had fails only the steps that need it, with this message.
pub fn prepare() -> Result<Services> {
    let env_redis = std::env::var(REDIS_ENV).ok().filter(|v| !v.is_empty());
    let env_postgres = std::env::var(POSTGRES_ENV).ok().filter(|v| !v.is_empty());
    if env_redis.is_some() && env_postgres.is_some() {
        println!("using {REDIS_ENV} and {POSTGRES_ENV} from the environment");
    } else {
        services::run(services::Action::Up)?;
    }
    Ok(Services {
        redis: env_redis.unwrap_or_else(|| services::REDIS_URL.to_owned()),
        postgres: env_postgres.unwrap_or_else(|| services::POSTGRES_URL.to_owned()),
        docker: services::docker(),
    })
}

impl Services {
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            (REDIS_ENV, self.redis.clone()),
            (POSTGRES_ENV, self.postgres.clone()),
        ]
    }
}

/// Runs the test steps; returns each step's name and outcome (a failed step does not stop
/// the next, so one run reports every failure).
pub fn steps(services: &Services, options: &Options) -> Result<Vec<(String, Outcome)>> {
    let cases = options.cases.to_string();
    let with_env = |cmd: &mut std::process::Command| {
        for (name, value) in services.env() {
            cmd.env(name, value);
        }
        cmd.env("PROPTEST_CASES", &cases);
    };

    let mut results = Vec::new();
    let nextest = util::capture(cargo().args(["nextest", "--version"])).is_some();
    let mut tests = cargo();
    if nextest {
        tests.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        if std::env::var_os("CI").is_some() {
            tests.args(["--profile", "ci"]);
        }
    } else {
        println!("cargo-nextest is not installed; using cargo test");
        tests.args(["test", "--workspace", "--no-fail-fast"]);
    }
    with_env(&mut tests);
    results.push(("tests".to_owned(), util::run_shown(&mut tests)?));

    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc", "--no-fail-fast"]);
    with_env(&mut doc);
    results.push(("doc tests".to_owned(), util::run_shown(&mut doc)?));

    // The suites on Redis and PostgreSQL in containers: a missing engine fails this step
    // (never a skip), with what `services up` said about it.
    println!("\n==> containers");
    let outcome = match &services.docker {
        Ok(docker) => {
            let mut containers = cargo();
            containers.args(["test", "-p", "testing", "--features", "containers"]);
            containers.args(["--test", "containers"]);
            with_env(&mut containers);
            docker.apply(&mut containers);
            util::run_shown(&mut containers)?
        }
        Err(e) => {
            println!("the container suites cannot run: {e:#}");
            Outcome {
                ok: false,
                elapsed: std::time::Duration::ZERO,
            }
        }
    };
    results.push(("containers".to_owned(), outcome));
    Ok(results)
}

/// The matrix with `cases` per property, as one step.
pub fn matrix_step(
    services: &Services,
    options: &Options,
    cases: u32,
) -> Result<(String, Outcome)> {
    println!("\n==> matrix");
    let all = |given: &Vec<String>, every: &[&str]| {
        if given.is_empty() {
            every.iter().map(|s| (*s).to_owned()).collect()
        } else {
            given.clone()
        }
    };
    let selection = Selection {
        cells: all(&options.cells, matrix::CELLS),
        layers: all(&options.layers, matrix::LAYERS),
        cases,
    };
    let outcome = matrix::run(&selection, &services.env(), services.docker.as_ref())?;
    Ok(("matrix".to_owned(), outcome))
}

/// Prints one summary line; an error if any step failed.
pub fn summarize(task: &str, results: &[(String, Outcome)]) -> Result<()> {
    let total: std::time::Duration = results.iter().map(|(_, o)| o.elapsed).sum();
    let parts: Vec<String> = results
        .iter()
        .map(|(name, o)| {
            let verdict = if o.ok { "ok" } else { "FAILED" };
            format!("{name} {verdict} ({})", human(o.elapsed))
        })
        .collect();
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, o)| !o.ok)
        .map(|(n, _)| n.as_str())
        .collect();
    let verdict = if failed.is_empty() {
        "PASSED"
    } else {
        "FAILED"
    };
    println!(
        "\n{task} {verdict} in {}: {}",
        human(total),
        parts.join(", ")
    );
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{task} failed: {}", failed.join(", "))
    }
}
