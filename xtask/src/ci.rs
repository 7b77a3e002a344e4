//! `cargo xtask ci`: exactly what CI runs: fmt, clippy, the containers check, docs, then
//! test-all (with the container suites) and the matrix. Every step runs even after a
//! failure, so one run reports all problems; each step's wall time is printed (the CI
//! budget is 90 minutes on 2 cores for everything; aim to stay under 40).

use std::process::Command;

use anyhow::Result;

use crate::test_all::{self, Options};
use crate::util::{self, Outcome, cargo, human};

pub fn run(options: &Options) -> Result<()> {
    let mut steps: Vec<(&str, Command)> = Vec::new();

    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--", "--check"]);
    steps.push(("fmt", fmt));

    let mut clippy = cargo();
    clippy.args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    steps.push(("clippy", clippy));

    let mut containers = cargo();
    containers.args(["check", "-p", "testing", "--features", "containers"]);
    steps.push(("containers check", containers));

    let mut doc = cargo();
    // -D warnings denies rustdoc::broken_intra_doc_links with every other doc warning.
    doc.env("RUSTDOCFLAGS", "-D warnings")
        .args(["doc", "--workspace", "--no-deps"]);
    steps.push(("docs", doc));

    let mut results: Vec<(String, Outcome)> = Vec::new();
    for (name, mut cmd) in steps {
        println!("\n==> {name}");
        let outcome = util::run_shown(&mut cmd)?;
        println!(
            "<== {name}: {} in {}",
            if outcome.ok { "ok" } else { "FAILED" },
            human(outcome.elapsed)
        );
        results.push((name.to_owned(), outcome));
    }
    println!("\n==> test-all");
    let tested = test_all::prepare().and_then(|services| {
        let mut steps = test_all::steps(&services, options)?;
        // Sized by --matrix-cases so that the whole of CI stays well inside its budget.
        steps.push(test_all::matrix_step(
            &services,
            options,
            options.matrix_cases,
        )?);
        Ok(steps)
    });
    match tested {
        Ok(tests) => results.extend(tests),
        Err(e) => {
            println!("test-all could not run: {e:#}");
            results.push((
                "test-all".to_owned(),
                Outcome {
                    ok: false,
                    elapsed: std::time::Duration::ZERO,
                },
            ));
        }
    }
    test_all::summarize("ci", &results)
}
