//! `cargo xtask services up|status|down`: Redis on 127.0.0.1:6379 and PostgreSQL on
//! 127.0.0.1:5432, started with the machine's own commands when they do not answer, and the
//! missing packages installed with apt-get when we are root.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::docker;
use crate::util::{self, capture, is_root, which};

/// The Redis the tests use.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// The PostgreSQL database the tests use.
pub const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
/// The variable that points the tests at Redis (`REDIS_URL` when unset).
pub const REDIS_ENV: &str = "STATE_TEST_REDIS_URL";
/// The variable that points the tests at PostgreSQL (`POSTGRES_URL` when unset).
pub const POSTGRES_ENV: &str = "STATE_TEST_POSTGRES_URL";
/// The database `POSTGRES_URL` names.
const TEST_DB: &str = "test";

/// What to do with the services.
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Action {
    /// Start whatever does not answer (installing missing packages when root).
    Up,
    /// Print what answers.
    Status,
    /// Stop what `up` started (and nothing else).
    Down,
}

pub fn run(action: Action) -> Result<()> {
    match action {
        Action::Up => up(),
        Action::Status => status(),
        Action::Down => down(),
    }
}

/// What `up` started, so `down` stops only that.
#[derive(Debug, Default, PartialEq, Eq)]
struct Record {
    redis_pid: Option<u32>,
    postgres_cluster: Option<String>,
    dockerd_pid: Option<u32>,
    bridge_pid: Option<u32>,
}

impl Record {
    fn path() -> PathBuf {
        util::workspace_root()
            .join("target")
            .join("xtask-services.json")
    }

    fn load() -> Record {
        let text = std::fs::read_to_string(Self::path()).unwrap_or_default();
        let pid = |key| json_value(&text, key).and_then(|v| v.parse().ok());
        Record {
            redis_pid: pid("redis_pid"),
            postgres_cluster: json_value(&text, "postgres_cluster"),
            dockerd_pid: pid("dockerd_pid"),
            bridge_pid: pid("bridge_pid"),
        }
    }

    fn save(&self) -> Result<()> {
        let path = Self::path();
        if *self == Record::default() {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
            return Ok(());
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let pid = |p: Option<u32>| p.map_or_else(|| "null".to_owned(), |p| p.to_string());
        let cluster = self
            .postgres_cluster
            .as_ref()
            .map_or_else(|| "null".to_owned(), |c| format!("\"{c}\""));
        let text = format!(
            "{{\n  \"redis_pid\": {},\n  \"postgres_cluster\": {cluster},\n  \
             \"dockerd_pid\": {},\n  \"bridge_pid\": {}\n}}\n",
            pid(self.redis_pid),
            pid(self.dockerd_pid),
            pid(self.bridge_pid)
        );
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// The value of `"key": value` in our own tiny JSON file (string quotes removed; `null` is
/// `None`). Hand-parsed to keep xtask's dependencies at anyhow and clap.
fn json_value(text: &str, key: &str) -> Option<String> {
    let after = text.split(&format!("\"{key}\"")).nth(1)?;
    let value = after.trim_start().strip_prefix(':')?.trim_start();
    let end = value.find([',', '\n', '}']).unwrap_or(value.len());
    let value = value.get(..end)?.trim().trim_matches('"');
    (value != "null" && !value.is_empty()).then(|| value.to_owned())
}

fn up() -> Result<()> {
    install_missing()?;
    let mut record = Record::load();

    if redis_answers() {
        println!("redis      127.0.0.1:6379 answers");
    } else {
        let pid = start_redis()?;
        println!("redis      started on 127.0.0.1:6379 (pid {pid})");
        record.redis_pid = Some(pid);
        record.save()?;
    }

    if postgres_answers() {
        println!("postgres   127.0.0.1:5432 answers");
    } else {
        let cluster = start_postgres()?;
        println!("postgres   started cluster {cluster} on 127.0.0.1:5432");
        record.postgres_cluster = Some(cluster);
        record.save()?;
    }
    ensure_test_database()?;

    // The container suites' engine: its failure fails only those suites (with this same
    // message, from `ci`), not the servers every other test needs.
    let docker = match docker() {
        Ok(env) => Some(env),
        Err(e) => {
            println!("docker     NOT available: {e:#}");
            None
        }
    };

    println!("{REDIS_ENV}={REDIS_URL}");
    println!("{POSTGRES_ENV}={POSTGRES_URL}");
    if let Some(env) = docker {
        env.print();
    }
    Ok(())
}

/// The Docker engine, the local images and the API bridge, started or built as needed
/// (see [`docker::ensure`]); what it starts is recorded for `down`.
pub fn docker() -> Result<docker::DockerEnv> {
    let mut record = Record::load();
    let running = docker::Started {
        dockerd: record.dockerd_pid,
        bridge: record.bridge_pid,
    };
    let (env, started) = docker::ensure(&running)?;
    if started.dockerd.is_some() {
        record.dockerd_pid = started.dockerd;
    }
    if started.bridge.is_some() {
        record.bridge_pid = started.bridge;
    }
    record.save()?;
    Ok(env)
}

fn status() -> Result<()> {
    match redis_info() {
        Some(info) => println!(
            "redis      127.0.0.1:6379 answers (version {}, pid {})",
            info_field(&info, "redis_version").unwrap_or("?"),
            info_field(&info, "process_id").unwrap_or("?")
        ),
        None if redis_answers() => println!("redis      127.0.0.1:6379 answers"),
        None => {
            println!("redis      127.0.0.1:6379 does NOT answer (run `cargo xtask services up`)")
        }
    }
    if postgres_answers() {
        let db = match psql(&format!(
            "select 1 from pg_database where datname = '{TEST_DB}'"
        )) {
            Ok(out) if out.trim() == "1" => format!("database `{TEST_DB}` present"),
            Ok(_) => format!("database `{TEST_DB}` MISSING (run `cargo xtask services up`)"),
            Err(e) => format!("cannot query as postgres: {e:#}"),
        };
        println!("postgres   127.0.0.1:5432 answers ({db})");
    } else {
        println!("postgres   127.0.0.1:5432 does NOT answer (run `cargo xtask services up`)");
    }
    match find_pgbouncer() {
        Some(path) => println!("pgbouncer  installed ({})", path.display()),
        None => println!("pgbouncer  NOT installed (apt-get install pgbouncer)"),
    }
    match which("promtool") {
        Some(path) => println!("promtool   installed ({})", path.display()),
        None => println!("promtool   NOT installed (apt-get install prometheus)"),
    }
    let record = Record::load();
    let mut started = Vec::new();
    if let Some(pid) = record.redis_pid {
        started.push(format!("redis (pid {pid})"));
    }
    if let Some(cluster) = &record.postgres_cluster {
        started.push(format!("postgres cluster {cluster}"));
    }
    if let Some(pid) = record.dockerd_pid {
        started.push(format!("dockerd (pid {pid})"));
    }
    if let Some(pid) = record.bridge_pid {
        started.push(format!("docker API bridge (pid {pid})"));
    }
    if started.is_empty() {
        println!("started by `services up`: nothing");
    } else {
        println!("started by `services up`: {}", started.join(", "));
    }
    println!("{REDIS_ENV}={REDIS_URL}");
    println!("{POSTGRES_ENV}={POSTGRES_URL}");
    Ok(())
}

fn down() -> Result<()> {
    let mut record = Record::load();
    if record == Record::default() {
        println!("`services up` started nothing; leaving the running services alone");
        return Ok(());
    }
    if let Some(pid) = record.redis_pid {
        let running = redis_info()
            .and_then(|i| info_field(&i, "process_id").and_then(|p| p.parse::<u32>().ok()));
        if running == Some(pid) {
            // SHUTDOWN closes the connection without a reply: the exit status is not an error.
            let _ = capture(Command::new("redis-cli").args([
                "-h",
                "127.0.0.1",
                "-p",
                "6379",
                "shutdown",
                "nosave",
            ]));
            println!("redis      stopped (pid {pid})");
        } else {
            println!("redis      pid {pid} is no longer the server on 6379; leaving it alone");
        }
        record.redis_pid = None;
        record.save()?;
    }
    if let Some(cluster) = record.postgres_cluster.clone() {
        let (version, name) = cluster
            .split_once('/')
            .unwrap_or((cluster.as_str(), "main"));
        let ok = util::run_shown(Command::new("pg_ctlcluster").args([
            "--skip-systemctl-redirect",
            version,
            name,
            "stop",
        ]))?
        .ok;
        if !ok {
            bail!("pg_ctlcluster {version} {name} stop failed");
        }
        println!("postgres   stopped cluster {cluster}");
        record.postgres_cluster = None;
        record.save()?;
    }
    if let Some(pid) = record.bridge_pid.take() {
        docker::stop(pid, "xtask", "docker API bridge");
        record.save()?;
    }
    if let Some(pid) = record.dockerd_pid.take() {
        docker::stop(pid, "dockerd", "dockerd");
        record.save()?;
    }
    Ok(())
}

/// Installs redis-server, postgresql, pgbouncer and prometheus when their binaries are
/// missing: with apt-get when root, else says exactly what to install. Each is needed: the
/// state-lock tests start a PgBouncer in front of PostgreSQL, and the state-metrics tests
/// check what they emit with `promtool` (shipped in Debian's `prometheus` package).
fn install_missing() -> Result<()> {
    let mut missing = Vec::new();
    if which("redis-server").is_none() || which("redis-cli").is_none() {
        missing.push("redis-server");
    }
    if postgres_version().is_none() || which("pg_ctlcluster").is_none() || which("psql").is_none() {
        missing.push("postgresql");
    }
    if find_pgbouncer().is_none() {
        missing.push("pgbouncer");
    }
    if which("promtool").is_none() {
        missing.push("prometheus");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if is_root() && which("apt-get").is_some() {
        println!("installing {list} with apt-get");
        let update = util::run_shown(Command::new("apt-get").args(["update", "-q"]))?;
        if !update.ok {
            println!("warning: apt-get update failed; trying the install anyway");
        }
        let install = util::run_shown(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing),
        )?;
        if !install.ok {
            bail!("apt-get install {list} failed; install them by hand and rerun");
        }
        return Ok(());
    }
    bail!(
        "missing packages: {list}; install them with `sudo apt-get install {list}` \
         (or point STATE_TEST_REDIS_URL / STATE_TEST_POSTGRES_URL at running servers)"
    )
}

fn find_pgbouncer() -> Option<PathBuf> {
    which("pgbouncer").or_else(|| {
        let p = PathBuf::from("/usr/sbin/pgbouncer");
        p.is_file().then_some(p)
    })
}

/// True if something on 127.0.0.1:6379 answers PING like Redis (`+PONG`, or `-NOAUTH`
/// from a server with a password).
fn redis_answers() -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], 6379));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).unwrap_or(0);
    let reply = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
    reply.starts_with("+PONG") || reply.starts_with("-NOAUTH")
}

fn redis_info() -> Option<String> {
    capture(Command::new("redis-cli").args(["-h", "127.0.0.1", "-p", "6379", "info", "server"]))
        .filter(|s| s.contains("redis_version"))
}

fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix(field)?.strip_prefix(':'))
}

/// Starts Redis the way the build machines do, and waits (10 s) until it answers.
fn start_redis() -> Result<u32> {
    let (dir, log) = if is_root() {
        (
            PathBuf::from("/var/lib/redis"),
            PathBuf::from("/var/log/redis/ci.log"),
        )
    } else {
        // Not root: the system directories are not ours; keep the files under target/.
        let d = util::workspace_root().join("target").join("xtask-redis");
        (d.clone(), d.join("ci.log"))
    };
    for d in [dir.as_path(), log.parent().unwrap_or(Path::new("/tmp"))] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let started = util::run_shown(
        Command::new("redis-server")
            .args([
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "-::1",
                "--port",
                "6379",
            ])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .arg("--logfile")
            .arg(&log),
    )?;
    if !started.ok {
        bail!("redis-server did not start; see {}", log.display());
    }
    wait(
        "redis on 127.0.0.1:6379",
        Duration::from_secs(10),
        redis_answers,
    )
    .with_context(|| format!("see {}", log.display()))?;
    redis_info()
        .and_then(|i| info_field(&i, "process_id").and_then(|p| p.parse().ok()))
        .context("redis answers but INFO gives no process_id")
}

/// True if PostgreSQL accepts connections on 127.0.0.1:5432.
fn postgres_answers() -> bool {
    if which("pg_isready").is_some() {
        return Command::new("pg_isready")
            .args(["-q", "-h", "127.0.0.1", "-p", "5432", "-t", "3"])
            .status()
            .is_ok_and(|s| s.success());
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], 5432));
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// The newest PostgreSQL version with binaries installed, e.g. `15`.
fn postgres_version() -> Option<String> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter(|e| e.path().join("bin/postgres").is_file())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    versions.pop().map(|v| v.to_string())
}

/// Starts the `main` cluster of the newest installed version (creating it, with trust auth
/// on loopback, if the package did not), and waits (30 s) until it answers.
fn start_postgres() -> Result<String> {
    let existing = std::fs::read_dir("/etc/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("main").is_dir())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .map(|v| v.to_string());
    let version = match existing {
        Some(v) => v,
        None => {
            let v = postgres_version()
                .context("no PostgreSQL installed: install it with `apt-get install postgresql`")?;
            if !util::run_shown(Command::new("pg_createcluster").args([&v, "main"]))?.ok {
                bail!("pg_createcluster {v} main failed");
            }
            trust_loopback(&v)?;
            v
        }
    };
    let ok = util::run_shown(Command::new("pg_ctlcluster").args([
        "--skip-systemctl-redirect",
        &version,
        "main",
        "start",
    ]))?
    .ok;
    if !ok {
        bail!(
            "pg_ctlcluster {version} main start failed; see /var/log/postgresql/postgresql-{version}-main.log"
        );
    }
    wait(
        "postgres on 127.0.0.1:5432",
        Duration::from_secs(30),
        postgres_answers,
    )?;
    Ok(format!("{version}/main"))
}

/// Puts trust lines for local and loopback connections first in a cluster we created, as
/// on the build machines (tests connect as `postgres` without a password).
fn trust_loopback(version: &str) -> Result<()> {
    let hba = PathBuf::from(format!("/etc/postgresql/{version}/main/pg_hba.conf"));
    let old =
        std::fs::read_to_string(&hba).with_context(|| format!("cannot read {}", hba.display()))?;
    let text = format!(
        "# added by cargo xtask services up: tests connect without a password\n\
         local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n{old}"
    );
    std::fs::write(&hba, text).with_context(|| format!("cannot write {}", hba.display()))
}

/// Creates the `test` database if it is missing.
fn ensure_test_database() -> Result<()> {
    let present = psql(&format!(
        "select 1 from pg_database where datname = '{TEST_DB}'"
    ))
    .context(
        "cannot connect as postgres to 127.0.0.1:5432 without a password; add \
         `host all all 127.0.0.1/32 trust` to the top of pg_hba.conf and reload",
    )?;
    if present.trim() != "1" {
        psql(&format!("CREATE DATABASE {TEST_DB}"))?;
        println!("postgres   created database `{TEST_DB}`");
    }
    Ok(())
}

fn psql(sql: &str) -> Result<String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
            "-U",
            "postgres",
        ])
        .args(["-d", "postgres", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "5")
        .stdin(std::process::Stdio::null())
        .output()
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!(
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > timeout {
            bail!("{what} did not answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_values_are_read_back() {
        let text = "{\n  \"redis_pid\": 42,\n  \"postgres_cluster\": \"15/main\"\n}\n";
        assert_eq!(json_value(text, "redis_pid").as_deref(), Some("42"));
        assert_eq!(
            json_value(text, "postgres_cluster").as_deref(),
            Some("15/main")
        );
        let empty = "{\n  \"redis_pid\": null,\n  \"postgres_cluster\": null\n}\n";
        assert_eq!(json_value(empty, "redis_pid"), None);
        assert_eq!(json_value("", "redis_pid"), None);
    }
}
