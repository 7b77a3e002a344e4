//! Process plumbing shared by the launchers: free ports, signals, bounded waits, log tails,
//! and the reaper that cleans up after a test process that dies without running `Drop`.

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::ServiceError;

/// How many lines of a server log an error message quotes.
const LOG_TAIL_LINES: usize = 20;

/// Ports this process already handed out, so two launchers started at once never pick the
/// same one (the kernel may return a just-closed port again).
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Picks a free TCP port on 127.0.0.1 by binding port 0. Another process may still take it
/// before our server binds it; launchers retry with a new port when the server fails to bind.
pub fn free_port() -> Result<u16, ServiceError> {
    for _ in 0..50 {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| ServiceError::new(format!("cannot bind a free port on 127.0.0.1: {e}")))?;
        let port = listener
            .local_addr()
            .map_err(|e| ServiceError::new(format!("cannot read a bound port: {e}")))?
            .port();
        let mut seen = handed_out()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.insert(port) {
            return Ok(port);
        }
    }
    Err(ServiceError::new(
        "no new free port on 127.0.0.1 after 50 tries; free some ports and retry",
    ))
}

/// Sends `signal` (a name such as `KILL`, `STOP`, `CONT`, `TERM`) to `pid` with the `kill`
/// command: our crates forbid the unsafe code a libc call would need.
pub fn signal(pid: u32, signal: &str) -> Result<(), ServiceError> {
    let out = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ServiceError::new(format!("cannot run `kill -s {signal} {pid}`: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ServiceError::new(format!(
            "`kill -s {signal} {pid}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// The last lines of a log file, for error messages; a note if it cannot be read.
pub fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            let tail = lines.get(start..).unwrap_or_default().join("\n");
            if tail.is_empty() {
                format!("(log {} is empty)", path.display())
            } else {
                format!("last lines of {}:\n{tail}", path.display())
            }
        }
        Err(e) => format!("(cannot read log {}: {e})", path.display()),
    }
}

/// Polls `check` every 50 ms (then up to 250 ms) until it returns `Some`, or fails after
/// `timeout` with `what` and the tail of `log`.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    log: Option<&Path>,
    mut check: F,
) -> Result<T, ServiceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if start.elapsed() >= timeout {
            let tail = log.map(log_tail).unwrap_or_default();
            return Err(ServiceError::new(format!(
                "timed out after {timeout:?} waiting for {what}\n{tail}"
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// True if something accepts TCP connections on 127.0.0.1:`port` within 500 ms.
pub async fn port_answers(host: &str, port: u16) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

/// Runs a short command to completion with a deadline and returns its stdout; a failure
/// names the command and quotes its stderr.
pub async fn run(
    cmd: &mut tokio::process::Command,
    timeout: Duration,
) -> Result<String, ServiceError> {
    let shown = format!("{:?}", cmd.as_std());
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| ServiceError::new(format!("{shown} did not finish within {timeout:?}")))?
        .map_err(|e| ServiceError::new(format!("cannot run {shown}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ServiceError::new(format!(
            "{shown} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )))
    }
}

/// True if `name` is an executable on `PATH` (or a path to one).
pub fn on_path(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

/// True when this process runs as root (the owner of `/proc/self` is our effective uid).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A long-running server process we spawned ourselves; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    log: PathBuf,
}

impl ServerProcess {
    /// Spawns `cmd` with no stdin and its output discarded (servers log to `log`).
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Result<Self, ServiceError> {
        let shown = format!("{cmd:?}");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| ServiceError::new(format!("cannot start {shown}: {e}")))?;
        Ok(ServerProcess { child, log })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file the server writes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(description)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown state ({e})")),
        }
    }

    /// SIGKILL and reap. Harmless if it already exited.
    pub fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // kill() only fails if the process is already gone.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A detached shell that waits on a pipe from this process and runs a cleanup script when
/// the pipe closes: on `Drop`, and also when the test process dies without unwinding
/// (SIGKILL, `process::exit`, a static that is never dropped), so no server is orphaned.
#[derive(Debug)]
pub struct Reaper {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
}

impl Reaper {
    /// Starts the reaper. `script` runs under `sh` once stdin reaches end of file. A reaper
    /// that cannot start is not fatal: `Drop` of the owner still cleans up normally.
    pub fn spawn(script: &str) -> Reaper {
        let full = format!("read -r _ignored; {script}");
        // setsid: leave our process group, so a signal sent to the whole test group (a
        // runner's timeout) does not kill the reaper before it has cleaned up.
        let mut cmd = if on_path("setsid").is_some() {
            let mut c = Command::new("setsid");
            c.args(["sh", "-c", &full]);
            c
        } else {
            let mut c = Command::new("sh");
            c.args(["-c", &full]);
            c
        };
        match cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                Reaper {
                    child: Some(child),
                    stdin,
                }
            }
            Err(_) => Reaper {
                child: None,
                stdin: None,
            },
        }
    }

    /// Runs the cleanup script now and waits (up to `timeout`) for it to finish.
    pub fn run_now(&mut self, timeout: Duration) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"go\n");
        }
        if let Some(mut child) = self.child.take() {
            let start = Instant::now();
            loop {
                match child.try_wait() {
                    Ok(None) if start.elapsed() < timeout => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.run_now(Duration::from_secs(20));
    }
}

/// Quotes `s` for `sh` with single quotes.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A script line that SIGKILLs the pid in `pidfile` only if that process's command line still
/// mentions `marker` (a path inside our temp dir), so a recycled pid is never hit.
pub fn kill_pidfile_script(pidfile: &Path, marker: &Path) -> String {
    let pidfile = sh_quote(&pidfile.display().to_string());
    let marker = sh_quote(&marker.display().to_string());
    format!(
        "if [ -f {pidfile} ]; then p=$(cat {pidfile}); \
         if [ -n \"$p\" ] && tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -qF {marker}; \
         then kill -9 $p; fi; fi; "
    )
}

/// The state letter and parent pid of `pid` from `/proc/PID/stat`, if it exists.
pub fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ppid …`: comm may hold spaces and parentheses, so cut at the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// The direct children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| proc_stat(*p).is_some_and(|(_, ppid)| ppid == pid))
        .collect()
}

/// True if `/proc/PID` exists (a zombie still does).
pub fn proc_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// SIGKILLs `pids` and waits (up to `timeout`) until all have exited and been reaped.
pub fn kill_and_wait(pids: &[u32], timeout: Duration) -> Result<(), ServiceError> {
    for pid in pids {
        // A process that exited meanwhile is fine: the goal is that none is left.
        let _ = signal(*pid, "KILL");
    }
    let start = Instant::now();
    while pids.iter().any(|p| proc_exists(*p)) {
        if start.elapsed() > timeout {
            return Err(ServiceError::new(format!(
                "processes {pids:?} still run {timeout:?} after SIGKILL"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}
