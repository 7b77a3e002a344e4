//! The Docker engine the testcontainers suites run on: installed (`docker.io`) and started
//! (`dockerd --bridge=none --iptables=false`) when missing, local Redis and PostgreSQL
//! images built from the machine's own binaries ([`crate::images`]), and an API
//! version bridge in front of an engine older than the testcontainers client.
//!
//! Why a bridge: testcontainers 0.28 talks to the engine through bollard, which puts its
//! own API version (1.53) in every path, and an engine refuses a client newer than itself
//! ("client version 1.53 is too new. Maximum supported API version is 1.41": Debian 12's
//! docker.io is 20.10). The bridge is a unix socket that rewrites the version of each
//! request down to the engine's and forwards it unchanged otherwise; the calls the fixtures
//! make (create, start, logs, inspect, remove) mean the same at both versions.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::images;
use crate::util::{self, is_root, which};

/// The engine's socket when `DOCKER_HOST` does not name another.
const ENGINE_SOCKET: &str = "/var/run/docker.sock";
/// The API version testcontainers' client (bollard 0.21) asks for.
const CLIENT_API: (u32, u32) = (1, 53);

/// What the container suites need in their environment.
#[derive(Debug, Clone)]
pub struct DockerEnv {
    /// `unix://…`: the engine itself, or the bridge in front of it.
    pub docker_host: String,
    /// The local Redis image (`STATE_TEST_REDIS_IMAGE`).
    pub redis_image: String,
    /// The local PostgreSQL image (`STATE_TEST_POSTGRES_IMAGE`).
    pub postgres_image: String,
}

impl DockerEnv {
    /// Sets the variables on `cmd`.
    pub fn apply(&self, cmd: &mut Command) {
        cmd.env("DOCKER_HOST", &self.docker_host)
            .env(images::REDIS_IMAGE_ENV, &self.redis_image)
            .env(images::POSTGRES_IMAGE_ENV, &self.postgres_image);
    }

    /// `NAME=value` lines for a shell.
    pub fn print(&self) {
        println!("DOCKER_HOST={}", self.docker_host);
        println!("{}={}", images::REDIS_IMAGE_ENV, self.redis_image);
        println!("{}={}", images::POSTGRES_IMAGE_ENV, self.postgres_image);
    }
}

/// What `ensure` started, for `services down`.
#[derive(Debug, Default)]
pub struct Started {
    pub dockerd: Option<u32>,
    pub bridge: Option<u32>,
}

/// Makes sure an engine answers (installing and starting it when root), the local images
/// exist, and, for an engine older than the client, that the bridge runs. `running` holds
/// what an earlier `services up` started (a bridge that still answers is kept).
pub fn ensure(running: &Started) -> Result<(DockerEnv, Started)> {
    let mut started = Started::default();
    let engine = engine_socket();
    if !answers(&engine) {
        started.dockerd = Some(start_engine(&engine)?);
        println!(
            "docker     started dockerd (pid {})",
            started.dockerd.unwrap_or(0)
        );
    }
    let version = api_version(&engine)?;
    println!(
        "docker     {} answers (API {}.{})",
        engine.display(),
        version.0,
        version.1
    );
    let docker_host = if version >= CLIENT_API {
        format!("unix://{}", engine.display())
    } else {
        let socket = bridge_socket();
        let alive = running.bridge.is_some_and(pid_alive) && answers(&socket);
        if !alive {
            started.bridge = Some(start_bridge(&socket, &engine, version)?);
        }
        println!(
            "docker     API bridge {} (clients at {}.{} are served as {}.{})",
            socket.display(),
            CLIENT_API.0,
            CLIENT_API.1,
            version.0,
            version.1
        );
        format!("unix://{}", socket.display())
    };
    let redis_image = images::redis()?;
    let postgres_image = images::postgres()?;
    Ok((
        DockerEnv {
            docker_host,
            redis_image,
            postgres_image,
        },
        started,
    ))
}

/// The engine's socket: `DOCKER_HOST=unix://PATH`, else the default one.
fn engine_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(ENGINE_SOCKET))
}

/// Where the bridge listens (under target/, so a clean removes it).
fn bridge_socket() -> PathBuf {
    util::workspace_root()
        .join("target")
        .join("xtask-docker-bridge.sock")
}

fn log_path(name: &str) -> PathBuf {
    util::workspace_root().join("target").join(name)
}

/// True if the socket answers `GET /_ping` with `OK`.
fn answers(socket: &Path) -> bool {
    request(socket, "/_ping").is_ok_and(|body| body.trim() == "OK")
}

/// One unversioned GET on the engine's socket; the body of a 200 reply.
fn request(socket: &Path, path: &str) -> Result<String> {
    let mut stream = UnixStream::connect(socket)
        .with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: docker\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .context("the engine's reply has no header end")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no status line")
        );
    }
    Ok(body.to_owned())
}

/// The highest API version the engine serves (`"ApiVersion":"1.41"` in `/version`).
fn api_version(socket: &Path) -> Result<(u32, u32)> {
    let body = request(socket, "/version")?;
    let raw = body
        .split("\"ApiVersion\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("the engine's /version names no ApiVersion")?;
    parse_version(raw).with_context(|| format!("unreadable API version {raw:?}"))
}

fn parse_version(raw: &str) -> Option<(u32, u32)> {
    let (major, minor) = raw.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Installs docker.io if `dockerd` is missing, starts `dockerd` in the background with its
/// log under target/, and waits (60 s) for its socket. Root only: the engine needs it.
fn start_engine(socket: &Path) -> Result<u32> {
    if !is_root() {
        bail!(
            "no Docker engine answers on {} and we are not root, so we cannot start one; \
             start dockerd (or point DOCKER_HOST at a running engine) and rerun",
            socket.display()
        );
    }
    let dockerd = match which("dockerd") {
        Some(path) => path,
        None => {
            install_docker()?;
            which("dockerd").context("docker.io installed, but dockerd is not on PATH")?
        }
    };
    let log = log_path("xtask-dockerd.log");
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    // No bridge network and no iptables rules: the machine may forbid both, and the
    // containers use the host's network (loopback) anyway. Its own process group, so that
    // it outlives this command (`services down` stops it).
    let mut child = Command::new(&dockerd)
        .args(["--bridge=none", "--iptables=false"])
        .arg(format!("--host=unix://{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot run {}", dockerd.display()))?;
    let pid = child.id();
    let start = Instant::now();
    while !answers(socket) {
        if child.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(60) {
            bail!(
                "dockerd (pid {pid}) did not answer on {} within 60 s; its log, {}, ends with:\n{}",
                socket.display(),
                log.display(),
                tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(pid)
}

fn install_docker() -> Result<()> {
    if which("apt-get").is_none() {
        bail!("dockerd is missing and there is no apt-get: install Docker by hand");
    }
    println!("installing docker.io with apt-get");
    let install = |cmd: &mut Command| util::run_shown(cmd).map(|o| o.ok);
    let apt = || {
        let mut cmd = Command::new("apt-get");
        cmd.env("DEBIAN_FRONTEND", "noninteractive").args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "docker.io",
        ]);
        cmd
    };
    if !install(&mut apt())? {
        // The package lists may be stale or absent on a fresh machine.
        util::run_shown(Command::new("apt-get").args(["update", "-q"]))?;
        if !install(&mut apt())? {
            bail!("apt-get install docker.io failed; install it by hand and rerun");
        }
    }
    Ok(())
}

/// The last lines of a log file, for an error message.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Starts `cargo xtask docker-bridge` (this binary) in its own process group and waits
/// (10 s) until it answers.
fn start_bridge(socket: &Path, engine: &Path, version: (u32, u32)) -> Result<u32> {
    let exe = std::env::current_exe().context("cannot find the xtask binary")?;
    let log = log_path("xtask-docker-bridge.log");
    let out =
        std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let err = out.try_clone()?;
    let mut child = Command::new(exe)
        .arg("docker-bridge")
        .arg("--listen")
        .arg(socket)
        .arg("--engine")
        .arg(engine)
        .arg("--api")
        .arg(format!("{}.{}", version.0, version.1))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .context("cannot start the docker API bridge")?;
    let pid = child.id();
    let start = Instant::now();
    while !answers(socket) {
        if child.try_wait()?.is_some() || start.elapsed() > Duration::from_secs(10) {
            bail!(
                "the docker API bridge (pid {pid}) did not answer on {}; its log:\n{}",
                socket.display(),
                tail(&log)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(pid)
}

/// Stops a process `services up` started if it is still the one (its command is `comm`):
/// a recycled pid is left alone.
pub fn stop(pid: u32, comm: &str, label: &str) {
    let running = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if running.trim() != comm {
        println!("{label} pid {pid} is no longer running; nothing to stop");
        return;
    }
    let _ = Command::new("kill").arg(pid.to_string()).status();
    println!("{label} stopped (pid {pid})");
}

/// Options of the hidden `docker-bridge` task.
#[derive(Debug, Clone, clap::Args)]
pub struct BridgeOptions {
    /// The socket to listen on (replaced if it exists).
    #[arg(long)]
    listen: PathBuf,
    /// The engine's socket.
    #[arg(long)]
    engine: PathBuf,
    /// The engine's highest API version, e.g. 1.41.
    #[arg(long)]
    api: String,
}

/// Serves the bridge until killed: one thread per connection, one request per connection.
pub fn bridge(options: &BridgeOptions) -> Result<()> {
    let max = parse_version(&options.api).context("--api wants MAJOR.MINOR, e.g. 1.41")?;
    if options.listen.exists() {
        std::fs::remove_file(&options.listen)
            .with_context(|| format!("cannot replace {}", options.listen.display()))?;
    }
    let listener = UnixListener::bind(&options.listen)
        .with_context(|| format!("cannot listen on {}", options.listen.display()))?;
    for client in listener.incoming() {
        let client = client.context("accept failed")?;
        let engine = options.engine.clone();
        std::thread::spawn(move || {
            if let Err(e) = forward(client, &engine, max) {
                eprintln!("docker-bridge: {e:#}");
            }
        });
    }
    Ok(())
}

/// Forwards one request: its head rewritten (version, `Connection: close` so the client
/// opens a new connection, hence a new rewrite, for its next request), then both
/// directions copied until the engine closes.
fn forward(mut client: UnixStream, engine: &Path, max: (u32, u32)) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if head.len() > 1 << 20 {
            bail!("a request head over 1 MiB");
        }
        let n = client.read(&mut buf)?;
        if n == 0 {
            return Ok(()); // a client that connected and left (a health probe)
        }
        head.extend_from_slice(&buf[..n]);
    };
    let rest = head.split_off(end + 4);
    let text = String::from_utf8(head).context("a request head that is not UTF-8")?;
    let rewritten = rewrite_head(&text, max);
    let mut upstream = UnixStream::connect(engine)
        .with_context(|| format!("cannot connect to the engine at {}", engine.display()))?;
    upstream.write_all(rewritten.as_bytes())?;
    upstream.write_all(&rest)?;
    let mut from_client = client.try_clone()?;
    let mut to_engine = upstream.try_clone()?;
    let uploader = std::thread::spawn(move || {
        let _ = std::io::copy(&mut from_client, &mut to_engine);
        let _ = to_engine.shutdown(std::net::Shutdown::Write);
    });
    let copied = std::io::copy(&mut upstream, &mut client);
    // Ends the uploader's read too, if the client kept its side open.
    let _ = client.shutdown(std::net::Shutdown::Both);
    let _ = uploader.join();
    copied.context("copying the engine's reply")?;
    Ok(())
}

/// The request head with `/vX.Y/` lowered to `max` when above it and `Connection: close`.
fn rewrite_head(head: &str, max: (u32, u32)) -> String {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts: Vec<String> = request_line.split(' ').map(str::to_owned).collect();
    if let Some(target) = parts.get_mut(1)
        && let Some(rest) = target.strip_prefix("/v")
        && let Some((version, path)) = rest.split_once('/')
        && parse_version(version).is_some_and(|v| v > max)
    {
        *target = format!("/v{}.{}/{path}", max.0, max.1);
    }
    let mut out = parts.join(" ");
    out.push_str("\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_versions_are_lowered_and_connections_closed() {
        let head = "POST /v1.53/containers/create?name=x HTTP/1.1\r\nHost: docker\r\n\
                    connection: keep-alive\r\nContent-Length: 2";
        assert_eq!(
            rewrite_head(head, (1, 41)),
            "POST /v1.41/containers/create?name=x HTTP/1.1\r\nHost: docker\r\n\
             Content-Length: 2\r\nConnection: close\r\n\r\n"
        );
        let old = "GET /v1.40/_ping HTTP/1.1\r\nHost: docker";
        assert!(rewrite_head(old, (1, 41)).starts_with("GET /v1.40/_ping HTTP/1.1\r\n"));
        let bare = "GET /_ping HTTP/1.1\r\nHost: docker";
        assert!(rewrite_head(bare, (1, 41)).starts_with("GET /_ping HTTP/1.1\r\n"));
        assert_eq!(parse_version("1.41"), Some((1, 41)));
        assert_eq!(parse_version("x"), None);
    }
}
