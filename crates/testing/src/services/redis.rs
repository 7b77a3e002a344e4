//! One redis-server (or sentinel) process, and the [`LocalRedis`] launcher built on it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::process::{self, Reaper, ServerProcess};
use super::{ServiceError, TestCerts, percent_encode};

/// How long a redis-server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a start is retried on a new port when the chosen one was taken.
const PORT_RETRIES: usize = 5;
/// How long a redis-cli call may take.
pub(crate) const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds the config lines of a node for a given port; it may pick further ports itself.
pub(crate) type ConfigFn<'a> = dyn Fn(u16) -> Result<Vec<String>, ServiceError> + Send + Sync + 'a;

/// One redis-server or sentinel process with its own directory, config, log and pidfile.
#[derive(Debug)]
pub(crate) struct RedisNode {
    dir: PathBuf,
    port: u16,
    sentinel: bool,
    process: Option<ServerProcess>,
}

impl RedisNode {
    /// Writes `dir/redis.conf` (the common lines plus `extra(port)`) and starts the server
    /// on a free port, retrying with another port if the chosen one was taken meanwhile.
    pub(crate) async fn start(
        dir: PathBuf,
        sentinel: bool,
        extra: &ConfigFn<'_>,
    ) -> Result<RedisNode, ServiceError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServiceError::new(format!("cannot create {}: {e}", dir.display())))?;
        let mut last = None;
        for _ in 0..PORT_RETRIES {
            let port = process::free_port()?;
            let mut lines = base_config(&dir, port);
            lines.extend(extra(port)?);
            let conf = dir.join(if sentinel {
                "sentinel.conf"
            } else {
                "redis.conf"
            });
            std::fs::write(&conf, lines.join("\n") + "\n")
                .map_err(|e| ServiceError::new(format!("cannot write {}: {e}", conf.display())))?;
            let mut node = RedisNode {
                dir: dir.clone(),
                port,
                sentinel,
                process: None,
            };
            match node.spawn().await {
                Ok(()) => return Ok(node),
                Err(e) if e.message().contains("Address already in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ServiceError::new("redis-server did not start")))
    }

    /// Starts the process from the config already in its directory and waits until the
    /// server logs that it is ready and its port accepts connections.
    pub(crate) async fn spawn(&mut self) -> Result<(), ServiceError> {
        let mut cmd = Command::new("redis-server");
        cmd.arg(self.conf_path()).current_dir(&self.dir);
        if self.sentinel {
            cmd.arg("--sentinel");
        }
        let log = self.log_path();
        // A fresh log per start, so readiness is read from this run's lines only.
        let _ = std::fs::remove_file(&log);
        let mut child = ServerProcess::spawn(cmd, log.clone())?;
        let port = self.port;
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = child.exited() {
                return Err(ServiceError::new(format!(
                    "redis-server on port {port} exited ({status}) while starting\n{}",
                    process::log_tail(&log)
                )));
            }
            // A sentinel never logs "Ready…"; its config is loaded once it logs its ID.
            let marker = if self.sentinel {
                "Sentinel ID is"
            } else {
                "Ready to accept connections"
            };
            let ready = std::fs::read_to_string(&log).is_ok_and(|t| t.contains(marker));
            if ready && process::port_answers("127.0.0.1", port).await {
                self.process = Some(child);
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                child.kill();
                return Err(ServiceError::new(format!(
                    "redis-server on port {port} was not ready within {READY_TIMEOUT:?}\n{}",
                    process::log_tail(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    pub(crate) fn conf_path(&self) -> PathBuf {
        self.dir.join(if self.sentinel {
            "sentinel.conf"
        } else {
            "redis.conf"
        })
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// SIGKILL: the server gets no chance to save or say goodbye.
    pub(crate) fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
        let _ = std::fs::remove_file(self.dir.join("redis.pid"));
    }

    /// SIGTERM (a clean shutdown), bounded; SIGKILL if it does not exit in time.
    pub(crate) async fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            if process::signal(p.pid(), "CONT").is_ok() && process::signal(p.pid(), "TERM").is_ok()
            {
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while p.exited().is_none() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            p.kill();
        }
        let _ = std::fs::remove_file(self.dir.join("redis.pid"));
    }

    pub(crate) fn signal(&self, signal: &str) -> Result<(), ServiceError> {
        let pid = self.pid().ok_or_else(|| {
            ServiceError::new(format!(
                "the server on port {} is not running; restart it first",
                self.port
            ))
        })?;
        process::signal(pid, signal)
    }
}

/// Config lines every node gets: loopback only, no persistence, its files in its directory.
fn base_config(dir: &Path, port: u16) -> Vec<String> {
    let d = dir.display().to_string();
    vec![
        "bind 127.0.0.1".to_owned(),
        format!("port {port}"),
        format!("dir {}", quote(&d)),
        format!("logfile {}", quote(&format!("{d}/redis.log"))),
        format!("pidfile {}", quote(&format!("{d}/redis.pid"))),
        "daemonize no".to_owned(),
        "save \"\"".to_owned(),
        "appendonly no".to_owned(),
        // Keep the config path in the command line: the reaper checks it before a kill.
        "set-proc-title no".to_owned(),
    ]
}

/// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` (over TLS with `--tls --cacert CA` when
/// `tls` is given) and returns its stdout.
pub(crate) async fn cli_tls(
    port: u16,
    tls: Option<&NodeTls>,
    args: &[&str],
) -> Result<String, ServiceError> {
    let mut cmd = tokio::process::Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(tls) = tls {
        cmd.args(tls.cli_args());
    }
    cmd.args(args);
    process::run(&mut cmd, CLI_TIMEOUT).await
}

/// TLS for every node of a topology ([`RedisSentinel`](super::RedisSentinel),
/// [`RedisCluster`](super::RedisCluster)): the certificates of a [`TestCerts`] copied into
/// the topology's own directory, so that a node restarted later still finds them.
#[derive(Debug, Clone)]
pub(crate) struct NodeTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl NodeTls {
    /// Copies the CA and the server and client certificates and keys of `certs` into `dir`.
    pub(crate) fn copy_into(certs: &TestCerts, dir: &Path) -> Result<NodeTls, ServiceError> {
        let tls = NodeTls {
            ca: dir.join("ca.crt"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        for (from, to) in [
            (certs.ca_cert(), &tls.ca),
            (certs.server_cert(), &tls.cert),
            (certs.server_key(), &tls.key),
            (certs.client_cert(), &tls.client_cert),
            (certs.client_key(), &tls.client_key),
        ] {
            let contents = certs.read(&from)?;
            std::fs::write(to, contents)
                .map_err(|e| ServiceError::new(format!("cannot write {}: {e}", to.display())))?;
        }
        Ok(tls)
    }

    /// The CA certificate that verifies every node.
    pub(crate) fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// Config lines that make a node (or sentinel) serve TLS only on `port`, and speak TLS
    /// to the nodes it replicates from or monitors. Clients need no certificate; the nodes
    /// present the client certificate to each other, because the cluster bus always
    /// verifies its peer (whatever `tls-auth-clients` says) and the server certificate is
    /// for `serverAuth` only.
    pub(crate) fn config_lines(&self, port: u16) -> Vec<String> {
        let path = |p: &Path| quote(&p.display().to_string());
        vec![
            "port 0".to_owned(),
            format!("tls-port {port}"),
            format!("tls-cert-file {}", quote(&self.cert.display().to_string())),
            format!("tls-key-file {}", quote(&self.key.display().to_string())),
            format!("tls-ca-cert-file {}", quote(&self.ca.display().to_string())),
            format!("tls-client-cert-file {}", path(&self.client_cert)),
            format!("tls-client-key-file {}", path(&self.client_key)),
            "tls-auth-clients no".to_owned(),
            "tls-replication yes".to_owned(),
        ]
    }

    /// The `redis-cli` arguments for a TLS connection verified with the CA.
    pub(crate) fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".to_owned(),
            "--cacert".to_owned(),
            self.ca.display().to_string(),
        ]
    }
}

/// The value of `field` in an `INFO`-style `field:value` reply.
pub(crate) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|l| {
        l.trim()
            .strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
    })
}

/// A reaper script that SIGKILLs every redis process whose pidfile lies under `root`, then
/// removes `root`.
pub(crate) fn reaper_script(root: &Path) -> String {
    let r = root.display().to_string();
    let q = process::sh_quote(&r);
    format!(
        "cd /; for f in {q}/redis.pid {q}/*/redis.pid; do [ -f \"$f\" ] || continue; \
         p=$(cat \"$f\"); if [ -n \"$p\" ] && tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null \
         | grep -qF {q}; then kill -9 $p; fi; done; rm -rf {q}"
    )
}

/// TLS for a [`LocalRedis`]: file names are relative to the server's directory (place them
/// with [`LocalRedisOptions::files`]) or absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTls {
    /// The server certificate (PEM).
    pub cert_file: String,
    /// The server's private key (PEM).
    pub key_file: String,
    /// The CA that signed client certificates, and the server's (PEM).
    pub ca_file: String,
    /// Require clients to present a certificate (`tls-auth-clients yes`).
    pub auth_clients: bool,
}

/// How to start a [`LocalRedis`].
#[derive(Debug, Clone, Default)]
pub struct LocalRedisOptions {
    /// Extra redis.conf lines (for ACLs: `user alice on >secret ~* +@all`, or
    /// `aclfile {dir}/users.acl`). `{dir}` is replaced by the server's directory.
    pub config: Vec<String>,
    /// Extra settings in command-line form, e.g. `["--maxmemory", "10mb"]` (written to the
    /// config file as `maxmemory "10mb"`).
    pub args: Vec<String>,
    /// Files written into the server's directory before it starts (name, contents): TLS
    /// certificates and keys, an ACL file.
    pub files: Vec<(String, Vec<u8>)>,
    /// A password. Without `username` it becomes `requirepass` (the default user's
    /// password); with one, it is only put into the URL (define the user with `config`).
    pub password: Option<String>,
    /// A user name for the URL (the ACL user the `config` lines define).
    pub username: Option<String>,
    /// Serve TLS only: the plain port is closed and `url()` is `rediss://` on the TLS port.
    pub tls: Option<RedisTls>,
}

/// One redis-server on a free loopback port in its own temporary directory. Stopped (and
/// the directory removed) on drop.
#[derive(Debug)]
pub struct LocalRedis {
    node: RedisNode,
    options: LocalRedisOptions,
    _reaper: Reaper,
    _dir: tempfile::TempDir,
}

impl LocalRedis {
    /// Starts the server and waits until it accepts connections (bounded).
    pub async fn start(options: LocalRedisOptions) -> Result<LocalRedis, ServiceError> {
        if process::on_path("redis-server").is_none() {
            return Err(ServiceError::new(
                "redis-server is not on PATH; install it (e.g. `apt-get install redis-server`)",
            ));
        }
        let tmp = tempfile::Builder::new()
            .prefix("state-redis-")
            .tempdir()
            .map_err(|e| ServiceError::new(format!("cannot create a temp dir: {e}")))?;
        let reaper = Reaper::spawn(&reaper_script(tmp.path()));
        let dir = tmp.path().to_path_buf();
        for (name, contents) in &options.files {
            let path = dir.join(name);
            std::fs::write(&path, contents)
                .map_err(|e| ServiceError::new(format!("cannot write {}: {e}", path.display())))?;
        }
        let opts = options.clone();
        let dir_text = dir.display().to_string();
        let extra = move |port: u16| -> Result<Vec<String>, ServiceError> {
            let mut lines = Vec::new();
            if let (Some(pass), None) = (&opts.password, &opts.username) {
                lines.push(format!("requirepass {}", quote(pass)));
            }
            if let Some(tls) = &opts.tls {
                // The port the URL names serves TLS; plain connections are refused.
                lines.push("port 0".to_owned());
                lines.push(format!("tls-port {port}"));
                lines.push(format!("tls-cert-file {}", quote(&tls.cert_file)));
                lines.push(format!("tls-key-file {}", quote(&tls.key_file)));
                lines.push(format!("tls-ca-cert-file {}", quote(&tls.ca_file)));
                let auth = if tls.auth_clients { "yes" } else { "no" };
                lines.push(format!("tls-auth-clients {auth}"));
            }
            lines.extend(opts.config.iter().map(|l| l.replace("{dir}", &dir_text)));
            lines.extend(args_to_lines(&opts.args));
            Ok(lines)
        };
        let node = RedisNode::start(dir, false, &extra).await?;
        Ok(LocalRedis {
            node,
            options,
            _reaper: reaper,
            _dir: tmp,
        })
    }

    /// `redis://[user:pass@]127.0.0.1:PORT`, or `rediss://…` with TLS.
    pub fn url(&self) -> String {
        let scheme = if self.options.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = match (&self.options.username, &self.options.password) {
            (Some(u), Some(p)) => format!("{}:{}@", percent_encode(u), percent_encode(p)),
            (Some(u), None) => format!("{}@", percent_encode(u)),
            (None, Some(p)) => format!(":{}@", percent_encode(p)),
            (None, None) => String::new(),
        };
        format!("{scheme}://{auth}127.0.0.1:{}", self.node.port())
    }

    /// The port the URL names (the TLS port with TLS).
    pub fn port(&self) -> u16 {
        self.node.port()
    }

    /// The server's process id; `None` after [`kill`](Self::kill).
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// The server's directory (config, log, the files of the options).
    pub fn dir(&self) -> &Path {
        self.node.dir()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.node.log_path()
    }

    /// SIGKILL the server. [`restart`](Self::restart) brings it back on the same port.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// SIGSTOP: the server stops answering but keeps its connections open.
    pub fn pause(&self) -> Result<(), ServiceError> {
        self.node.signal("STOP")
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub fn resume(&self) -> Result<(), ServiceError> {
        self.node.signal("CONT")
    }

    /// Stops the server cleanly if it runs (SIGTERM, bounded) and starts it again on the same
    /// port with the same config. Data is not kept unless the config enables persistence.
    pub async fn restart(&mut self) -> Result<(), ServiceError> {
        self.node.stop().await;
        self.node.spawn().await
    }

    /// Runs `redis-cli` against this server (with its password and TLS files) and returns
    /// its stdout.
    pub async fn cli(&self, args: &[&str]) -> Result<String, ServiceError> {
        let mut cmd = tokio::process::Command::new("redis-cli");
        cmd.current_dir(self.node.dir())
            .args(["-h", "127.0.0.1", "-p", &self.port().to_string()]);
        if let Some(u) = &self.options.username {
            cmd.args(["--user", u]);
        }
        if let Some(p) = &self.options.password {
            cmd.args(["--pass", p, "--no-auth-warning"]);
        }
        if let Some(tls) = &self.options.tls {
            cmd.args(["--tls", "--cacert", &tls.ca_file]);
            if tls.auth_clients {
                cmd.args(["--cert", &tls.cert_file, "--key", &tls.key_file]);
            }
        }
        cmd.args(args);
        process::run(&mut cmd, CLI_TIMEOUT).await
    }
}

/// Turns `--name value…` command-line arguments into the equivalent config lines.
fn args_to_lines(args: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for arg in args {
        match (arg.strip_prefix("--"), lines.last_mut()) {
            (None, Some(line)) => line.push_str(&format!(" {}", quote(arg))),
            (Some(name), _) => lines.push(name.to_owned()),
            (None, None) => lines.push(arg.clone()),
        }
    }
    lines
}

/// A redis.conf double-quoted string (backslash and quote escaped).
fn quote(value: &str) -> String {
    format!("\"{}\"", value.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_become_config_lines() {
        let args: Vec<String> = ["--maxmemory", "10mb", "--appendonly", "yes", "--save", ""]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(
            args_to_lines(&args),
            [r#"maxmemory "10mb""#, r#"appendonly "yes""#, r#"save """#]
        );
    }

    #[test]
    fn config_strings_and_url_user_info_are_escaped() {
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(percent_encode("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }

    #[test]
    fn info_fields_are_found_by_exact_name() {
        let info = "# Replication\r\nrole:master\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "role"), Some("master"));
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "master_link"), None);
    }
}
