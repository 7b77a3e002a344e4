//! The programs a benchmark runs: our release binaries, the raw tools, scratch space.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::util;

/// Runs a reference tool (`pgbench`, `redis-benchmark`) and reads `what` from its output
/// with `parse`; a failed run or an unreadable output is an error quoting both streams.
pub(super) fn reference_output<T>(
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

pub(super) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| if p.is_absolute() { p } else { root.join(p) })
        .unwrap_or_else(|| root.join("target"))
}

pub(super) fn build_release(root: &Path) -> Result<(PathBuf, PathBuf)> {
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

/// A scratch directory under the system temp dir, removed by the caller.
pub(super) fn scratch_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("xtask-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// A name no other run on this machine uses at the same time.
pub(super) fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}_{nanos:x}", std::process::id())
}
