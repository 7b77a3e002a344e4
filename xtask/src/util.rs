//! Small helpers: run a command with inherited output, time it, find programs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// The cargo that runs us (so a pinned toolchain stays pinned), else `cargo`.
pub fn cargo() -> Command {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(program);
    cmd.current_dir(workspace_root());
    cmd
}

/// How a command to completion went.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub elapsed: Duration,
}

/// Runs `cmd` with inherited stdout/stderr and no stdin, printing it first.
pub fn run_shown(cmd: &mut Command) -> Result<Outcome> {
    println!("$ {}", show(cmd));
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", show(cmd)))?;
    Ok(Outcome {
        ok: status.success(),
        elapsed: start.elapsed(),
    })
}

/// Runs `cmd` quietly; `Some(stdout)` if it succeeded.
pub fn capture(cmd: &mut Command) -> Option<String> {
    let out = cmd.stdin(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The command line, for logs.
pub fn show(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(cmd.get_args().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains([' ', '"', '\'']) {
            format!("{a:?}")
        } else {
            a.into_owned()
        }
    }));
    let envs: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), v?.to_string_lossy())))
        .collect();
    if envs.is_empty() {
        parts.join(" ")
    } else {
        format!("{} {}", envs.join(" "), parts.join(" "))
    }
}

/// The full path of `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `1m 23s` / `4.2s`.
pub fn human(d: Duration) -> String {
    let secs = d.as_secs_f64();
    if secs >= 60.0 {
        format!("{}m {:02}s", d.as_secs() / 60, d.as_secs() % 60)
    } else {
        format!("{secs:.1}s")
    }
}

/// True when this process runs as root (the owner of `/proc/self` is our effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
