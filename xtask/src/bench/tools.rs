//! The programs a benchmark runs: our release binaries, the raw tools, scratch space.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// Builds our release `statectl` alone (the checkpoint job needs no `bench-ref`).
pub(super) fn build_statectl(root: &Path) -> Result<PathBuf> {
    let built = util::run_shown(util::cargo().args(["build", "--release", "-p", "statectl"]))?;
    if !built.ok {
        bail!("cargo build --release -p statectl failed");
    }
    Ok(target_dir(root).join("release").join("statectl"))
}

/// One finished child: its wall-clock time and peak resident set.
#[derive(Debug, Clone, Copy)]
pub(super) struct Measured {
    pub(super) secs: f64,
    /// Peak RSS in KiB (the kernel's `ru_maxrss` through `/usr/bin/time`, else the last
    /// `VmHWM` read from `/proc` while it ran).
    pub(super) peak_kib: u64,
}

/// Runs `cmd` to completion (stdin from the file `stdin`, stdout into the file `stdout`,
/// else none and discarded), timing it and measuring its peak RSS; a failure is an error
/// quoting its stderr.
pub(super) fn measured(
    cmd: &mut Command,
    stdin: Option<&Path>,
    stdout: Option<&Path>,
) -> Result<Measured> {
    let time_bin = Path::new("/usr/bin/time");
    let rss_file = std::env::temp_dir().join(format!("xtask-rss-{}", unique()));
    // xtask forbids unsafe code, so no wait4(): GNU time reads ru_maxrss for us.
    let mut wrapped;
    let run = if time_bin.is_file() {
        wrapped = Command::new(time_bin);
        wrapped
            .args(["-f", "%M", "-o"])
            .arg(&rss_file)
            .arg(cmd.get_program())
            .args(cmd.get_args());
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        &mut wrapped
    } else {
        cmd
    };
    let stdin = match stdin {
        Some(path) => Stdio::from(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let stdout = match stdout {
        Some(path) => Stdio::from(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        ),
        None => Stdio::null(),
    };
    let started = Instant::now();
    let mut child = run
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {}", util::show(run)))?;
    let mut hwm = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        hwm = hwm.max(vm_hwm(child.id()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    };
    let secs = started.elapsed().as_secs_f64();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    let timed = std::fs::read_to_string(&rss_file).ok();
    let _ = std::fs::remove_file(&rss_file);
    // GNU time writes `Command exited…` lines first when the child fails; the figure is last.
    let peak_kib = timed
        .as_deref()
        .and_then(|t| t.lines().last())
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(hwm);
    if !status.success() {
        bail!(
            "{} failed after {secs:.1} s at a peak RSS of {:.1} MiB: {}",
            util::show(run),
            peak_kib as f64 / 1024.0,
            stderr.trim()
        );
    }
    Ok(Measured { secs, peak_kib })
}

/// The peak RSS so far of process `pid`, in KiB (`VmHWM` of `/proc/PID/status`).
fn vm_hwm(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
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
