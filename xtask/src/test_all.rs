//! `cargo xtask test-all [--cases N]`: services up, then every test of every crate.

use anyhow::{Result, bail};

use crate::services::{self, POSTGRES_ENV, REDIS_ENV};
use crate::util::{self, Outcome, cargo, human};

/// Options shared by `test-all` and `ci`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Cases per property test (exported as PROPTEST_CASES).
    #[arg(long, default_value_t = 256)]
    pub cases: u32,
}

pub fn run(options: &Options) -> Result<()> {
    let results = steps(options)?;
    summarize("test-all", &results)
}

/// Runs the test steps; returns each step's name and outcome (a failed step does not stop
/// the next, so one run reports every failure).
pub fn steps(options: &Options) -> Result<Vec<(String, Outcome)>> {
    let env_redis = std::env::var(REDIS_ENV).ok().filter(|v| !v.is_empty());
    let env_postgres = std::env::var(POSTGRES_ENV).ok().filter(|v| !v.is_empty());
    if env_redis.is_some() && env_postgres.is_some() {
        println!("using {REDIS_ENV} and {POSTGRES_ENV} from the environment");
    } else {
        services::run(services::Action::Up)?;
    }
    let redis = env_redis.unwrap_or_else(|| services::REDIS_URL.to_owned());
    let postgres = env_postgres.unwrap_or_else(|| services::POSTGRES_URL.to_owned());
    let cases = options.cases.to_string();
    let with_env = |cmd: &mut std::process::Command| {
        cmd.env(REDIS_ENV, &redis)
            .env(POSTGRES_ENV, &postgres)
            .env("PROPTEST_CASES", &cases);
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
    Ok(results)
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
