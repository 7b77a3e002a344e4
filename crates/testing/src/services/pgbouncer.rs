//! [`PgBouncer`]: Debian's `pgbouncer` in front of a PostgreSQL server, on a free loopback
//! port in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::ServiceError;
use super::process::{self, Reaper, ServerProcess};

/// How long pgbouncer may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How many times a start is retried on a new port when the chosen one was taken.
const PORT_RETRIES: usize = 5;

/// How PgBouncer hands server connections to clients (`pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// A server connection per client transaction: session state (advisory locks,
    /// prepared statements, `SET`) does not follow the client between transactions.
    #[default]
    Transaction,
    /// A server connection per client connection.
    Session,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }
}

/// How to start a [`PgBouncer`].
#[derive(Debug, Clone)]
pub struct PgBouncerOptions {
    /// The PostgreSQL server to pool, as a `postgres://user[:password]@host:port/db` URL
    /// (the database part is ignored: every database is passed through). Its user is the
    /// one clients log in as.
    pub upstream: String,
    /// The pool mode (default: transaction).
    pub pool_mode: PoolMode,
    /// Server connections per database and user (`default_pool_size`, default 4): fewer
    /// than clients, so that clients really share server connections.
    pub pool_size: u32,
    /// Extra `[pgbouncer]` lines, appended last.
    pub config: Vec<String>,
}

impl PgBouncerOptions {
    /// Transaction pooling with 4 server connections in front of `upstream`.
    pub fn new(upstream: impl Into<String>) -> Self {
        PgBouncerOptions {
            upstream: upstream.into(),
            pool_mode: PoolMode::Transaction,
            pool_size: 4,
            config: Vec::new(),
        }
    }
}

/// One pgbouncer process in front of a PostgreSQL server, listening on a free 127.0.0.1
/// port, with `auth_type = trust` towards its clients (the upstream password, if any, is
/// in its database line). It ignores the startup parameters `options` and
/// `extra_float_digits` (as deployments in front of drivers that send them must), so a
/// client's `-c setting=…` options never reach the server.
///
/// Stopped (SIGKILL) and its directory removed on drop; a reaper does the same if the test
/// process dies first.
///
/// ```no_run
/// # async fn demo() -> Result<(), testing::services::ServiceError> {
/// use testing::services::PgBouncer;
/// let bouncer = PgBouncer::start("postgres://postgres@127.0.0.1:5432/test").await?;
/// let url = bouncer.url("test"); // postgres://postgres@127.0.0.1:PORT/test
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct PgBouncer {
    process: Option<ServerProcess>,
    port: u16,
    user: String,
    dir: PathBuf,
    _reaper: Reaper,
    _tmp: tempfile::TempDir,
}

impl PgBouncer {
    /// Starts a transaction-mode pgbouncer in front of `upstream` (see
    /// [`PgBouncerOptions::new`]) and waits until it accepts connections (bounded).
    pub async fn start(upstream: &str) -> Result<PgBouncer, ServiceError> {
        PgBouncer::start_with(PgBouncerOptions::new(upstream)).await
    }

    /// Starts pgbouncer with `options`.
    pub async fn start_with(options: PgBouncerOptions) -> Result<PgBouncer, ServiceError> {
        let binary = find_pgbouncer().ok_or_else(|| {
            ServiceError::new(
                "pgbouncer is not installed: run `cargo xtask services up` (it installs it as \
                 root) or `apt-get install pgbouncer`",
            )
        })?;
        let upstream = super::parse_url(&options.upstream).map_err(|e| {
            ServiceError::new(format!("the upstream of pgbouncer is not a valid URL: {e}"))
        })?;
        let Some(server) = upstream.hosts().first() else {
            return Err(ServiceError::new(format!(
                "the upstream URL {} names no host",
                upstream.redacted()
            )));
        };
        let user = upstream.username().unwrap_or("postgres").to_string();
        // pgbouncer refuses to run as root; it switches to the server's user instead.
        let run_as = if process::is_root() {
            Some(super::postgres::postgres_user_ids("pgbouncer").await?)
        } else {
            None
        };
        let tmp = tempfile::Builder::new()
            .prefix("state-pgbouncer-")
            .tempdir()
            .map_err(|e| ServiceError::new(format!("cannot create a temp dir: {e}")))?;
        let dir = tmp.path().to_path_buf();
        let ini = dir.join("pgbouncer.ini");
        let pidfile = dir.join("pgbouncer.pid");
        let reaper = Reaper::spawn(&format!(
            "cd /; {} rm -rf {}",
            process::kill_pidfile_script(&pidfile, &ini),
            process::sh_quote(&dir.display().to_string())
        ));
        let users = dir.join("users.txt");
        write(&users, &format!("{} \"\"\n", quote_ini(&user)))?;
        let mut database = format!("host={} port={}", server.host, server.port);
        if let Some(password) = upstream.password() {
            // With a password upstream, pgbouncer logs in with it as this user.
            database.push_str(&format!(
                " user={} password={}",
                quote_connstr(&user)?,
                quote_connstr(password.expose())?
            ));
        }
        if let Some((uid, gid)) = run_as {
            chown(&dir, uid, gid)?;
            chown(&users, uid, gid)?;
        }
        let mut last = None;
        for _ in 0..PORT_RETRIES {
            let port = process::free_port()?;
            let mut lines = vec![
                "[databases]".to_string(),
                format!("* = {database}"),
                "[pgbouncer]".to_string(),
                "listen_addr = 127.0.0.1".to_string(),
                format!("listen_port = {port}"),
                "unix_socket_dir =".to_string(),
                "auth_type = trust".to_string(),
                format!("auth_file = {}", users.display()),
                format!("pool_mode = {}", options.pool_mode.as_str()),
                format!("default_pool_size = {}", options.pool_size.max(1)),
                "max_client_conn = 500".to_string(),
                "ignore_startup_parameters = extra_float_digits,options".to_string(),
                format!("logfile = {}", dir.join("pgbouncer.log").display()),
                format!("pidfile = {}", pidfile.display()),
            ];
            lines.extend(options.config.iter().cloned());
            write(&ini, &(lines.join("\n") + "\n"))?;
            if let Some((uid, gid)) = run_as {
                chown(&ini, uid, gid)?;
            }
            let mut cmd = Command::new(&binary);
            if run_as.is_some() {
                cmd.args(["-u", "postgres"]);
            }
            cmd.arg(&ini).current_dir(&dir);
            let log = dir.join("pgbouncer.log");
            let _ = std::fs::remove_file(&log);
            let child = ServerProcess::spawn(cmd, log.clone())?;
            match wait_ready(child, port, &log).await {
                Ok(child) => {
                    return Ok(PgBouncer {
                        process: Some(child),
                        port,
                        user,
                        dir,
                        _reaper: reaper,
                        _tmp: tmp,
                    });
                }
                Err(e) if e.message().contains("in use") => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ServiceError::new("pgbouncer did not start")))
    }

    /// `postgres://USER@127.0.0.1:PORT/DB`: a client URL through the pooler, as the
    /// upstream's user (no password: the pooler trusts loopback clients).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{}@127.0.0.1:{}/{db}", self.user, self.port)
    }

    /// The port pgbouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pgbouncer process id; `None` after [`stop`](Self::stop).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServerProcess::pid)
    }

    /// pgbouncer's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("pgbouncer.log")
    }

    /// Stops pgbouncer now (SIGKILL); clients lose their connections.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until pgbouncer logs that it is up and its port answers; the log tail on failure.
async fn wait_ready(
    mut child: ServerProcess,
    port: u16,
    log: &Path,
) -> Result<ServerProcess, ServiceError> {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.exited() {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let reason = if text.contains("in use") {
                "its port is in use"
            } else {
                "see its log"
            };
            return Err(ServiceError::new(format!(
                "pgbouncer on port {port} exited ({status}) while starting: {reason}\n{}",
                process::log_tail(log)
            )));
        }
        let up = std::fs::read_to_string(log).is_ok_and(|t| t.contains("process up"));
        if up && process::port_answers("127.0.0.1", port).await {
            return Ok(child);
        }
        if started.elapsed() > READY_TIMEOUT {
            child.kill();
            return Err(ServiceError::new(format!(
                "pgbouncer on port {port} was not ready within {READY_TIMEOUT:?}\n{}",
                process::log_tail(log)
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The pgbouncer binary: on `PATH`, or where Debian installs it.
pub(crate) fn find_pgbouncer() -> Option<PathBuf> {
    process::on_path("pgbouncer").or_else(|| {
        let p = PathBuf::from("/usr/sbin/pgbouncer");
        p.is_file().then_some(p)
    })
}

fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), ServiceError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| ServiceError::new(format!("cannot hand {} to postgres: {e}", path.display())))
}

fn write(path: &Path, text: &str) -> Result<(), ServiceError> {
    std::fs::write(path, text)
        .map_err(|e| ServiceError::new(format!("cannot write {}: {e}", path.display())))
}

/// A value in pgbouncer's quoting: double quotes, inner double quotes doubled.
fn quote_ini(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

/// A value of a `[databases]` connection string, in single quotes.
fn quote_connstr(value: &str) -> Result<String, ServiceError> {
    if value.contains('\'') || value.contains('\\') {
        return Err(ServiceError::new(
            "the upstream user name or password contains a quote or backslash, which this \
             fixture does not escape for pgbouncer; use another",
        ));
    }
    Ok(format!("'{value}'"))
}
