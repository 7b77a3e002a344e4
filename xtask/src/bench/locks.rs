//! `cargo xtask bench locks`: state-lock's `lock_latency` example, uncontended
//! acquire+release against one round trip, in the same run.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::options::Options;
use super::report::{machine, write_section};
use super::tools::target_dir;
use crate::util;

/// `bench locks`: the lock latency table, against the test services (STATE_TEST_REDIS_URL
/// and STATE_TEST_POSTGRES_URL, else the local defaults).
pub(super) fn run(root: &Path, opts: &Options) -> Result<()> {
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
    // the default idle states. The same right (root) lets the example pin this client and
    // the servers to two different cores for the default-state table, which makes its
    // ratios comparable too: every side then pays a wake-up on every round trip.
    let poll = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .is_ok();
    let pin = poll && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2);
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
        if *state == "default" && pin {
            cmd.args(["--pin", "0,1"]);
        }
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
