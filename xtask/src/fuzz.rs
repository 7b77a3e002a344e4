//! `cargo xtask fuzz [--time 60s] [TARGET…]`: runs every `cargo fuzz` target of the
//! workspace (or those named) for that long each, one after the other, and ends with a
//! table of runs, corpus sizes and crashes.
//!
//! The targets live in `fuzz/` (URLs, configs, the redb record, Redis replies, statectl's
//! escaping) and `crates/state-checkpoint/fuzz/` (the checkpoint format). They are built
//! with `--sanitizer none --debug-assertions`: the workspace forbids `unsafe`, so a sanitizer
//! finds nothing that Rust's own checks miss, at two to three times the cost; debug
//! assertions turn on the overflow checks that the tests run with. Corpora grow in
//! `<dir>/corpus/<target>` and crashes land in `<dir>/artifacts/<target>` (both ignored by
//! git): every crash is fixed and kept as a regression test, see `tests/fuzz_props.rs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::util;

/// The fuzz crates, relative to the workspace root.
const FUZZ_DIRS: [&str; 2] = ["fuzz", "crates/state-checkpoint/fuzz"];

const USAGE: &str = "usage: cargo xtask fuzz [--time 60s] [--list] [TARGET…]\n\
  --time DURATION  how long each target runs (s, m or h; default 60s)\n\
  --list           the targets, and stop\n\
  TARGET…          only these targets (default: all)";

const NIGHTLY_MISSING: &str = "cargo fuzz needs the nightly toolchain, which is not installed: \
                               run `rustup toolchain install nightly`";
const CARGO_FUZZ_MISSING: &str = "cargo-fuzz is not installed: run `cargo install cargo-fuzz` \
                                  (it runs on the nightly toolchain: `cargo +nightly fuzz`)";

/// One `cargo fuzz` target: its crate's directory and its name.
#[derive(Debug, Clone)]
struct Target {
    dir: &'static str,
    name: String,
}

/// How one target's run went.
#[derive(Debug)]
struct Report {
    target: Target,
    ok: bool,
    runs: Option<u64>,
    seconds: u64,
    corpus: usize,
    crashes: Vec<PathBuf>,
}

/// Runs the fuzz targets named in `args` (all by default) for `--time` each.
pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = 60;
    let mut list = false;
    let mut names = Vec::new();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            "--list" => list = true,
            "--time" => {
                let value = rest.next().context(USAGE)?;
                seconds = parse_seconds(value)?;
            }
            other => match other.strip_prefix("--time=") {
                Some(value) => seconds = parse_seconds(value)?,
                None if other.starts_with('-') => bail!("unknown option `{other}`\n{USAGE}"),
                None => names.push(other.to_string()),
            },
        }
    }
    let root = util::workspace_root();
    let all = targets(&root)?;
    if list {
        for target in &all {
            println!("{:<14} {}", target.name, target.dir);
        }
        return Ok(());
    }
    let chosen = choose(&all, &names)?;
    preflight()?;
    // Each crate once, so a build error stops everything before any fuzzing time is spent.
    let mut dirs: Vec<&str> = chosen.iter().map(|t| t.dir).collect();
    dirs.sort_unstable();
    dirs.dedup();
    for dir in dirs {
        let mut build = fuzz_command(&root);
        build.args([
            "build",
            "--sanitizer",
            "none",
            "--debug-assertions",
            "--fuzz-dir",
            dir,
        ]);
        if !util::run_shown(&mut build)?.ok {
            bail!("the fuzz targets of {dir} do not build (see above)");
        }
    }
    let mut reports = Vec::new();
    for target in chosen {
        reports.push(run_one(&root, target, seconds)?);
    }
    print_table(&reports);
    let failed: Vec<&Report> = reports.iter().filter(|r| !r.ok).collect();
    if failed.is_empty() {
        return Ok(());
    }
    for report in &failed {
        let Target { dir, name } = &report.target;
        for crash in &report.crashes {
            eprintln!(
                "crash in {name}: {}\n  replay: cargo +nightly fuzz run --fuzz-dir {dir} {name} {}",
                crash.display(),
                crash.display()
            );
        }
    }
    bail!(
        "{} of {} fuzz targets failed; fix the library (no panic on any input) and keep each \
         input as a regression test",
        failed.len(),
        reports.len()
    )
}

/// `60`, `60s`, `10m`, `1h` as seconds.
fn parse_seconds(text: &str) -> Result<u64> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => bail!("--time `{text}`: write seconds, minutes or hours, like 60s, 10m or 1h"),
    };
    let n: u64 = digits
        .parse()
        .with_context(|| format!("--time `{text}` is not a duration like 60s, 10m or 1h"))?;
    match n.checked_mul(factor) {
        Some(0) | None => bail!("--time `{text}`: give at least one second"),
        Some(seconds) => Ok(seconds),
    }
}

/// Every `[[bin]]` of the fuzz crates' manifests, in file order.
fn targets(root: &Path) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for dir in FUZZ_DIRS {
        let manifest = root.join(dir).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let mut in_bin = false;
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') {
                in_bin = line == "[[bin]]";
            } else if let Some(value) = line.strip_prefix("name").map(str::trim_start)
                && in_bin
                && let Some(value) = value.strip_prefix('=')
            {
                let name = value.trim().trim_matches('"').to_string();
                out.push(Target { dir, name });
            }
        }
    }
    Ok(out)
}

fn choose(all: &[Target], names: &[String]) -> Result<Vec<Target>> {
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    names
        .iter()
        .map(|name| {
            all.iter()
                .find(|t| &t.name == name)
                .cloned()
                .with_context(|| {
                    let known: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
                    format!("no fuzz target `{name}`; the targets: {}", known.join(", "))
                })
        })
        .collect()
}

/// `cargo +nightly fuzz` from the workspace root, with the toolchain pins of the `cargo` that
/// runs xtask removed so `+nightly` decides.
fn fuzz_command(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"])
        .current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    cmd
}

/// The nightly toolchain and cargo-fuzz are there, or an error that says how to get them.
fn preflight() -> Result<()> {
    let mut nightly = Command::new("cargo");
    nightly
        .args(["+nightly", "--version"])
        .env_remove("RUSTUP_TOOLCHAIN");
    if util::capture(&mut nightly).is_none() {
        bail!("{NIGHTLY_MISSING}");
    }
    let mut fuzz = fuzz_command(&util::workspace_root());
    fuzz.arg("--version");
    if util::capture(&mut fuzz).is_none() {
        bail!("{CARGO_FUZZ_MISSING}");
    }
    Ok(())
}

fn run_one(root: &Path, target: Target, seconds: u64) -> Result<Report> {
    let artifacts = root.join(target.dir).join("artifacts").join(&target.name);
    let before = files(&artifacts);
    let mut cmd = fuzz_command(root);
    cmd.args([
        "run",
        "--sanitizer",
        "none",
        "--debug-assertions",
        "--fuzz-dir",
    ])
    .args([target.dir, target.name.as_str(), "--"])
    .arg(format!("-max_total_time={seconds}"))
    .arg("-print_final_stats=1")
    .stdin(Stdio::null())
    .stderr(Stdio::piped());
    println!("$ {}", util::show(&cmd));
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", util::show(&cmd)))?;
    // libFuzzer reports on stderr: passed through, and its final count of runs kept.
    let mut runs = None;
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
            eprintln!("{line}");
            if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
                runs = n.trim().parse().ok();
            }
        }
    }
    let status = child.wait().context("cannot wait for cargo fuzz")?;
    let crashes = files(&artifacts)
        .into_iter()
        .filter(|f| !before.contains(f))
        .collect();
    Ok(Report {
        corpus: files(&root.join(target.dir).join("corpus").join(&target.name)).len(),
        target,
        ok: status.success(),
        runs,
        seconds: start.elapsed().as_secs(),
        crashes,
    })
}

/// The files in `dir` (none if it does not exist yet).
fn files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

fn print_table(reports: &[Report]) {
    println!(
        "\n{:<14} {:>12} {:>8} {:>8}  result",
        "target", "runs", "seconds", "corpus"
    );
    for r in reports {
        let runs = r.runs.map_or_else(|| "?".to_string(), |n| n.to_string());
        let result = match (r.ok, r.crashes.len()) {
            (true, _) => "ok".to_string(),
            (false, 0) => "failed".to_string(),
            (false, n) => format!("{n} crash(es)"),
        };
        println!(
            "{:<14} {:>12} {:>8} {:>8}  {result}",
            r.target.name, runs, r.seconds, r.corpus
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds() {
        assert_eq!(parse_seconds("60").ok(), Some(60));
        assert_eq!(parse_seconds("60s").ok(), Some(60));
        assert_eq!(parse_seconds("10m").ok(), Some(600));
        assert_eq!(parse_seconds("1h").ok(), Some(3600));
        for bad in ["", "0s", "5x", "m", "1.5m", "-3s", "99999999999999999999h"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_fuzz_crate_lists_its_targets() -> Result<()> {
        let all = targets(&util::workspace_root())?;
        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        for name in [
            "url",
            "config",
            "record",
            "redis_reply",
            "cluster_nodes",
            "escape",
        ] {
            assert!(names.contains(&name), "{names:?}");
        }
        assert!(
            names.contains(&"decode"),
            "state-checkpoint's targets: {names:?}"
        );
        assert!(choose(&all, &["nope".to_string()]).is_err());
        Ok(())
    }
}
