//! `--pin CLIENT,SERVER`: this process on one core, both servers on another, for the run.
//!
//! With the kernel's default idle states, a round trip costs a halted vCPU's wake-up or
//! not depending on whether the client and the server happen to share a core at that
//! moment, so two loops measured side by side can land differently (a `SELECT 1` loop at
//! 27 µs beside pgbench's at 80). Pinned apart, every side pays the same wake-up on every
//! round trip, and the ratios compare again. Uses `taskset` (util-linux); moving another
//! user's processes needs root. The servers must run on this machine.
//!
//! Redis is pinned whole (every thread); PostgreSQL through its postmaster, whose
//! children inherit the core: every connection the run opens afterwards (each session
//! reconnects), and none of the server's existing ones. Both get their previous
//! affinity back when the returned guard drops, also when the run fails; a run killed
//! by a signal leaves them pinned (`taskset -a -c -p 0-N PID` undoes it).

use std::process::Command;

use sqlx::{Connection as _, PgConnection};
use state_redis::redis;

use crate::{Options, Result};

/// The cores given by `--pin CLIENT,SERVER`.
#[derive(Debug, Clone, Copy)]
pub struct Cores {
    pub client: usize,
    pub server: usize,
}

impl std::str::FromStr for Cores {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Cores, String> {
        let parsed = s
            .split_once(',')
            .and_then(|(c, s)| Some((c.trim().parse().ok()?, s.trim().parse().ok()?)));
        match parsed {
            Some((client, server)) if client != server => Ok(Cores { client, server }),
            _ => Err(format!(
                "--pin CLIENT,SERVER takes two different core numbers (say 0,1), not `{s}`"
            )),
        }
    }
}

/// Servers moved by [`pin`]; dropping it puts them back.
pub struct Pinned {
    /// Process id, whether every thread was moved, the affinity list it had.
    restore: Vec<(u32, bool, String)>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        for (pid, all_threads, cores) in &self.restore {
            if let Err(err) = set_affinity(*pid, *all_threads, cores) {
                eprintln!("lock_latency: could not give process {pid} back cores {cores}: {err}");
            }
        }
    }
}

/// Pins this process to `cores.client` and the Redis server and PostgreSQL postmaster
/// behind `opts` to `cores.server`.
pub async fn pin(opts: &Options, cores: Cores) -> Result<Pinned> {
    let redis = redis_pid(&opts.redis).await?;
    let postmaster = postmaster_pid(&opts.postgres).await?;
    let server = cores.server.to_string();
    let mut pinned = Pinned {
        restore: Vec::new(),
    };
    for (pid, all_threads) in [(redis, true), (postmaster, false)] {
        let before = affinity(pid)?;
        set_affinity(pid, all_threads, &server)?;
        pinned.restore.push((pid, all_threads, before));
    }
    set_affinity(std::process::id(), true, &cores.client.to_string())?;
    Ok(pinned)
}

/// The Redis server's process id, from `INFO server`, checked against `/proc`.
async fn redis_pid(url: &str) -> Result<u32> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await?;
    let pid = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or("--pin: INFO server names no process_id")?;
    local_process(pid, "redis-server")
}

/// The postmaster's process id: the parent of this connection's backend.
async fn postmaster_pid(url: &str) -> Result<u32> {
    let mut conn = PgConnection::connect(url).await?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    let backend = local_process(u32::try_from(backend)?, "postgres")?;
    let stat = std::fs::read_to_string(format!("/proc/{backend}/stat"))?;
    // `pid (comm) state ppid …`: the name may hold spaces, so split after its `)`.
    let parent = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|ppid| ppid.parse().ok())
        .ok_or_else(|| format!("--pin: /proc/{backend}/stat has no parent id"))?;
    local_process(parent, "postgres")
}

/// `pid` if it is a process of this machine whose name starts with `name`.
fn local_process(pid: u32, name: &str) -> Result<u32> {
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) if comm.trim_end().starts_with(name) => Ok(pid),
        _ => Err(format!(
            "--pin: the server reports process {pid}, which is no `{name}` on this machine; \
             --pin needs the servers local"
        )
        .into()),
    }
}

/// The affinity list of `pid` (`taskset -c -p`: "pid N's current affinity list: 0,1").
fn affinity(pid: u32) -> Result<String> {
    let out = Command::new("taskset")
        .args(["-c", "-p", &pid.to_string()])
        .output()
        .map_err(|e| format!("--pin needs taskset (util-linux): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.rsplit_once(": ") {
        Some((_, list)) if out.status.success() => Ok(list.trim().to_string()),
        _ => Err(format!(
            "taskset -c -p {pid}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into()),
    }
}

fn set_affinity(pid: u32, all_threads: bool, cores: &str) -> Result<()> {
    let mut cmd = Command::new("taskset");
    if all_threads {
        cmd.arg("-a");
    }
    let out = cmd
        .args(["-c", "-p", cores, &pid.to_string()])
        .output()
        .map_err(|e| format!("--pin needs taskset (util-linux): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "taskset -c -p {cores} {pid} (moving another user's process needs root): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}
