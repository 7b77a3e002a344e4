//! [`LocalPostgres`]: a throwaway PostgreSQL cluster (initdb + pg_ctl) on a free loopback port.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ServiceError;
use super::process::{self, Reaper};

/// How long `pg_ctl start/restart/stop -w` may wait.
const PG_CTL_WAIT_SECS: u64 = 60;
/// Bound on any single PostgreSQL tool call (initdb, pg_basebackup, psql).
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// How many times a start is retried on a new port when the chosen one was taken.
const PORT_RETRIES: usize = 5;

/// The directory holding `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/*/bin`,
/// else wherever `pg_ctl` is on `PATH`.
pub(crate) fn find_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let pg_ctl = process::on_path("pg_ctl")?;
    let dir = pg_ctl.parent()?.to_path_buf();
    dir.join("initdb").is_file().then_some(dir)
}

/// How to start a [`LocalPostgres`].
#[derive(Debug, Clone, Default)]
pub struct LocalPostgresOptions {
    /// Extra `postgresql.conf` lines, appended last so they win (e.g. `ssl = on`,
    /// `ssl_cert_file = 'server.crt'`).
    pub config: Vec<String>,
    /// Files placed in the data directory before the first start (name, contents), owned
    /// by the server's user with mode 0600: TLS certificates and keys.
    pub files: Vec<(String, Vec<u8>)>,
    /// Extra `pg_hba.conf` lines, placed before the default `trust` lines so they match
    /// first (e.g. `hostnossl all all 127.0.0.1/32 reject`).
    pub hba: Vec<String>,
    /// The database `url()` names, created at start; `test` when `None`.
    pub database: Option<String>,
}

/// The uid and gid of the `postgres` user, which `tool` runs as when we are root (initdb,
/// postgres and pgbouncer refuse to run as root).
pub(crate) async fn postgres_user_ids(tool: &str) -> Result<(u32, u32), ServiceError> {
    let id = |flag: &'static str| async move {
        let mut cmd = tokio::process::Command::new("id");
        cmd.args([flag, "postgres"]);
        process::run(&mut cmd, Duration::from_secs(5))
            .await
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
    };
    match (id("-u").await, id("-g").await) {
        (Some(uid), Some(gid)) => Ok((uid, gid)),
        _ => Err(ServiceError::new(format!(
            "running as root, {tool} must run as another user, but there is no `postgres` \
             user; create one (`useradd postgres`) or run the tests as non-root"
        ))),
    }
}

/// Who runs the PostgreSQL tools: ourselves, or the `postgres` user when we are root
/// (initdb and postgres refuse to run as root).
#[derive(Debug, Clone)]
struct RunAs {
    owner: Option<(u32, u32)>,
}

impl RunAs {
    async fn detect() -> Result<RunAs, ServiceError> {
        if !process::is_root() {
            return Ok(RunAs { owner: None });
        }
        let (uid, gid) = postgres_user_ids("PostgreSQL").await?;
        Ok(RunAs {
            owner: Some((uid, gid)),
        })
    }

    /// A command that runs `program` as the server's user.
    fn command(&self, program: &Path) -> tokio::process::Command {
        match self.owner {
            Some(_) => {
                let mut c = tokio::process::Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        }
    }

    /// The same as a shell prefix, for the reaper script.
    fn shell_prefix(&self) -> &'static str {
        if self.owner.is_some() {
            "runuser -u postgres -- "
        } else {
            ""
        }
    }

    fn chown(&self, path: &Path) -> Result<(), ServiceError> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(|e| {
                ServiceError::new(format!("cannot hand {} to postgres: {e}", path.display()))
            })?;
        }
        Ok(())
    }
}

/// A PostgreSQL cluster of its own: `initdb` (trust auth, superuser `postgres`) in a
/// temporary directory, listening on a free 127.0.0.1 port with its unix socket in that
/// directory. Stopped (`pg_ctl stop -m immediate`) and removed on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    bin: PathBuf,
    run_as: RunAs,
    port: u16,
    database: String,
    root: PathBuf,
    _reaper: Reaper,
    _dir: tempfile::TempDir,
}

impl LocalPostgres {
    /// Runs initdb, starts the server and creates the database; bounded in time.
    pub async fn start(options: LocalPostgresOptions) -> Result<LocalPostgres, ServiceError> {
        let (pg, data) = Self::prepare("state-postgres-").await?;
        let mut initdb = pg.run_as.command(&pg.bin.join("initdb"));
        initdb.current_dir(&pg.root).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ]);
        process::run(&mut initdb, TOOL_TIMEOUT).await?;
        for (name, contents) in &options.files {
            let path = data.join(name);
            std::fs::write(&path, contents)
                .map_err(|e| ServiceError::new(format!("cannot write {}: {e}", path.display())))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| ServiceError::new(format!("cannot chmod {}: {e}", path.display())))?;
            pg.run_as.chown(&path)?;
        }
        if !options.hba.is_empty() {
            let hba = data.join("pg_hba.conf");
            let default = std::fs::read_to_string(&hba).unwrap_or_default();
            let text = options.hba.join("\n") + "\n" + &default;
            std::fs::write(&hba, text)
                .map_err(|e| ServiceError::new(format!("cannot write {}: {e}", hba.display())))?;
        }
        let mut lines = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", pg.socket_dir().display()),
            // Test data need not survive an OS crash; a killed server still recovers.
            "fsync = off".to_owned(),
            "synchronous_commit = off".to_owned(),
            "full_page_writes = off".to_owned(),
            "max_connections = 200".to_owned(),
            "shared_buffers = 32MB".to_owned(),
        ];
        lines.extend(options.config.iter().cloned());
        append_conf(&data, &lines)?;
        let mut pg = pg;
        pg.database = options.database.unwrap_or_else(|| "test".to_owned());
        pg.start_on_free_port().await?;
        if pg.database != "postgres" {
            pg.psql_in("postgres", &format!("CREATE DATABASE \"{}\"", pg.database))
                .await?;
        }
        Ok(pg)
    }

    /// Starts a streaming replica of this server (`pg_basebackup -R`) on another free port.
    /// It serves reads only until [`promote`](Self::promote)d.
    pub async fn start_replica(&self) -> Result<LocalPostgres, ServiceError> {
        let (mut replica, data) = Self::prepare("state-postgres-replica-").await?;
        let mut backup = replica.run_as.command(&replica.bin.join("pg_basebackup"));
        backup
            .current_dir(&replica.root)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-D",
            ])
            .arg(&data)
            // `-c fast`: the backup starts at once instead of waiting for a spread
            // checkpoint (which took ~100 s on a busy machine).
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"]);
        process::run(&mut backup, TOOL_TIMEOUT).await?;
        append_conf(
            &data,
            &[format!(
                "unix_socket_directories = '{}'",
                replica.socket_dir().display()
            )],
        )?;
        replica.database = self.database.clone();
        replica.start_on_free_port().await?;
        Ok(replica)
    }

    /// A temp dir owned by the server's user with a socket dir; returns the data dir path.
    async fn prepare(prefix: &str) -> Result<(LocalPostgres, PathBuf), ServiceError> {
        let bin = find_bin_dir().ok_or_else(|| {
            ServiceError::new(
                "no PostgreSQL binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin or on \
                 PATH; install PostgreSQL (e.g. `apt-get install postgresql`)",
            )
        })?;
        let run_as = RunAs::detect().await?;
        let tmp = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .map_err(|e| ServiceError::new(format!("cannot create a temp dir: {e}")))?;
        let root = tmp.path().to_path_buf();
        let data = root.join("data");
        let sock = root.join("sock");
        std::fs::create_dir(&sock)
            .map_err(|e| ServiceError::new(format!("cannot create {}: {e}", sock.display())))?;
        run_as.chown(&root)?;
        run_as.chown(&sock)?;
        let pg_ctl = process::sh_quote(&bin.join("pg_ctl").display().to_string());
        let data_q = process::sh_quote(&data.display().to_string());
        let root_q = process::sh_quote(&root.display().to_string());
        let reaper = Reaper::spawn(&format!(
            "cd /; {}{pg_ctl} stop -D {data_q} -m immediate -w -t 20 >/dev/null 2>&1; \
             rm -rf {root_q}",
            run_as.shell_prefix()
        ));
        Ok((
            LocalPostgres {
                bin,
                run_as,
                port: 0,
                database: String::new(),
                root,
                _reaper: reaper,
                _dir: tmp,
            },
            data,
        ))
    }

    async fn start_on_free_port(&mut self) -> Result<(), ServiceError> {
        for attempt in 0..PORT_RETRIES {
            let port = process::free_port()?;
            append_conf(&self.data_dir(), &[format!("port = {port}")])?;
            self.port = port;
            match self.pg_ctl(&["start"]).await {
                Ok(_) => return Ok(()),
                Err(e) => {
                    let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                    let taken = log.contains("could not bind") || log.contains("already in use");
                    if !taken || attempt + 1 == PORT_RETRIES {
                        return Err(ServiceError::new(format!(
                            "PostgreSQL did not start: {e}\n{}",
                            process::log_tail(&self.log_path())
                        )));
                    }
                }
            }
        }
        Err(ServiceError::new("PostgreSQL did not start"))
    }

    async fn pg_ctl(&self, args: &[&str]) -> Result<String, ServiceError> {
        let mut cmd = self.run_as.command(&self.bin.join("pg_ctl"));
        cmd.current_dir(&self.root)
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", &PG_CTL_WAIT_SECS.to_string()])
            .args(args);
        process::run(&mut cmd, Duration::from_secs(PG_CTL_WAIT_SECS + 10))
            .await
            .map_err(|e| ServiceError::new(format!("{e}\n{}", process::log_tail(&self.log_path()))))
    }

    /// `postgres://postgres@127.0.0.1:PORT/test` (or the database of the options).
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port, self.database
        )
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (owned by the server's user).
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The directory of the unix socket (`host=` for libpq).
    pub fn socket_dir(&self) -> PathBuf {
        self.root.join("sock")
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
    }

    /// `pg_ctl restart -m fast`: clients are disconnected, the data is kept. Also starts a
    /// server that was stopped or killed.
    pub async fn restart(&self) -> Result<(), ServiceError> {
        self.pg_ctl(&["restart", "-m", "fast"]).await.map(drop)
    }

    /// `pg_ctl stop -m fast`. [`restart`](Self::restart) starts it again.
    pub async fn stop(&self) -> Result<(), ServiceError> {
        self.pg_ctl(&["stop", "-m", "fast"]).await.map(drop)
    }

    /// `pg_ctl promote`: a replica becomes a primary that accepts writes.
    pub async fn promote(&self) -> Result<(), ServiceError> {
        self.pg_ctl(&["promote"]).await.map(drop)
    }

    /// SIGKILL the postmaster and all its child processes (a crash of the whole server) and
    /// wait until they are gone. A later [`restart`](Self::restart) runs crash recovery.
    pub fn kill(&self) -> Result<(), ServiceError> {
        let pidfile = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pidfile).map_err(|e| {
            ServiceError::new(format!(
                "cannot read {} (is the server running?): {e}",
                pidfile.display()
            ))
        })?;
        let pid = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .ok_or_else(|| {
                ServiceError::new(format!("{} holds no process id", pidfile.display()))
            })?;
        let mut pids = vec![pid];
        pids.extend(process::children_of(pid));
        // Until init reaps them (about a second here), pg_ctl and a new postmaster take the
        // dead processes for a running server: wait until they have left /proc.
        process::kill_and_wait(&pids, Duration::from_secs(15))
    }

    /// Runs `psql -At -c SQL` on this server's database and returns its stdout.
    pub async fn psql(&self, sql: &str) -> Result<String, ServiceError> {
        self.psql_in(&self.database, sql).await
    }

    async fn psql_in(&self, database: &str, sql: &str) -> Result<String, ServiceError> {
        let mut cmd = tokio::process::Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql]);
        process::run(&mut cmd, TOOL_TIMEOUT).await
    }
}

fn append_conf(data: &Path, lines: &[String]) -> Result<(), ServiceError> {
    use std::io::Write;
    let conf = data.join("postgresql.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&conf)
        .map_err(|e| ServiceError::new(format!("cannot open {}: {e}", conf.display())))?;
    writeln!(file, "\n# added by testing::services\n{}", lines.join("\n"))
        .map_err(|e| ServiceError::new(format!("cannot write {}: {e}", conf.display())))
}
