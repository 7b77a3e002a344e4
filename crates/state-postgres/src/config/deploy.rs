//! The deployments of the guide: a transaction pooler (`pgbouncer=`), several hosts of which
//! one is the primary (`target_session_attrs=`), and read replicas (`replicas=`,
//! `read_from=`). The types, their builders and their URL parameters.

use sqlx::postgres::PgConnectOptions;
use state_core::{Result, StateError, StateUrl};

use super::PostgresConfig;

/// Which server a connection may be opened on when the URL names several hosts (libpq's
/// `target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetSessionAttrs {
    /// The first host that accepts a connection, whatever its role (the default).
    #[default]
    Any,
    /// The first host that is a primary (not in recovery): after a standby is promoted and
    /// the old primary stopped, new connections find the new primary. `primary` in a URL
    /// means the same.
    ReadWrite,
}

impl TargetSessionAttrs {
    /// As libpq spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
        }
    }
}

/// Where reads go when the backend has [replicas](PostgresConfig::with_replicas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// Every operation on the primary: a read sees every write acknowledged before it
    /// (read-your-writes). The default.
    #[default]
    Primary,
    /// `get`, `batch_get`, `ttl`, `scan` and `count` on the replicas (round robin);
    /// everything else (writes, atomic read-modify-writes, `export`, checkpoints) on the
    /// primary. A replica lags the primary: a read may miss writes acknowledged up to the
    /// replication lag before it (see `health_check`), and two reads on different replicas
    /// may go back in time.
    Replicas,
}

impl ReadFrom {
    /// As URLs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadFrom::Primary => "primary",
            ReadFrom::Replicas => "replicas",
        }
    }
}

/// The startup `options` setting that tells PostgreSQL from a pooler that dropped it.
pub(crate) const PROBE_SETTING: &str = "state_postgres.probe";

/// One server the backend may connect to.
#[derive(Clone)]
pub(crate) struct Target {
    /// `host:port`, for messages.
    pub endpoint: String,
    /// With the session settings in the startup `options` (PostgreSQL directly).
    pub direct: PgConnectOptions,
    /// Without startup `options` or `extra_float_digits` (behind a transaction pooler,
    /// which must not or cannot pass them on): settings go in `SET LOCAL` instead.
    pub pooled: PgConnectOptions,
}

impl PostgresConfig {
    /// Whether the backend talks through a transaction pooler such as PgBouncer: `Some`
    /// when the URL's `pgbouncer=` or [`with_pgbouncer`](Self::with_pgbouncer) said so,
    /// `None` to detect it when the backend opens.
    pub fn pgbouncer(&self) -> Option<bool> {
        self.pgbouncer
    }

    /// Declares a transaction pooler (PgBouncer in `pool_mode = transaction`) between the
    /// backend and PostgreSQL, or its absence. Behind one, no state outlives a transaction:
    /// statements are unnamed and run inside an explicit transaction (so that their parse
    /// and execute steps reach the same server connection), session settings are `SET
    /// LOCAL`, and migrations run in one transaction under a transaction-level advisory
    /// lock. Left unset, the backend detects a pooler when it opens: PostgreSQL applies a
    /// probe setting sent in the startup packet's `options`, a pooler drops it (or refuses
    /// the parameter).
    pub fn with_pgbouncer(mut self, behind_pooler: bool) -> Self {
        self.pgbouncer = Some(behind_pooler);
        self
    }

    /// Connects only to a host that is a primary (`ReadWrite`), or to the first host that
    /// answers (`Any`, the default). See [`TargetSessionAttrs`].
    pub fn with_target_session_attrs(mut self, attrs: TargetSessionAttrs) -> Self {
        self.target_session_attrs = attrs;
        self
    }

    /// The hosts tried in order when opening a connection, the URL's first; set by a URL
    /// naming several (`postgres://u@h1:5432,h2:5432/db`) or by this method.
    pub fn with_hosts(mut self, hosts: &[(&str, u16)]) -> Self {
        if let Some((host, port)) = hosts.first() {
            self.host = (*host).to_string();
            self.port = *port;
        }
        self.more_hosts = hosts
            .iter()
            .skip(1)
            .map(|(h, p)| ((*h).to_string(), *p))
            .collect();
        self
    }

    /// Streaming replicas of the primary (same user, password, database and TLS settings),
    /// used for reads when [`with_read_from`](Self::with_read_from) says `Replicas`.
    pub fn with_replicas(mut self, replicas: &[(&str, u16)]) -> Self {
        self.replicas = replicas
            .iter()
            .map(|(h, p)| ((*h).to_string(), *p))
            .collect();
        self
    }

    /// Where reads go when replicas are configured (default [`ReadFrom::Primary`]).
    pub fn with_read_from(mut self, read_from: ReadFrom) -> Self {
        self.read_from = read_from;
        self
    }

    /// Where connections may go when several hosts are named.
    pub fn target_session_attrs(&self) -> TargetSessionAttrs {
        self.target_session_attrs
    }

    /// Where reads go.
    pub fn read_from(&self) -> ReadFrom {
        self.read_from
    }

    /// Every host, in the order they are tried.
    pub fn hosts(&self) -> Vec<(String, u16)> {
        let mut hosts = vec![(self.host.clone(), self.port)];
        hosts.extend(self.more_hosts.iter().cloned());
        hosts
    }

    /// The replicas.
    pub fn replicas(&self) -> &[(String, u16)] {
        &self.replicas
    }

    /// The primary's hosts as connection targets.
    pub(crate) fn targets(&self) -> Vec<Target> {
        self.hosts()
            .into_iter()
            .map(|(host, port)| self.target(host, port))
            .collect()
    }

    /// The replicas as connection targets.
    pub(crate) fn replica_targets(&self) -> Vec<Target> {
        self.replicas
            .iter()
            .map(|(host, port)| self.target(host.clone(), *port))
            .collect()
    }

    fn target(&self, host: String, port: u16) -> Target {
        let direct = self.options_for(&host, port, true);
        let pooled = self
            .options_for(&host, port, false)
            .extra_float_digits(None);
        Target {
            endpoint: endpoint(&host, port),
            direct,
            pooled,
        }
    }

    /// The statements that apply the session settings inside a transaction, behind a
    /// pooler: `SET LOCAL statement_timeout…` (and `synchronous_commit`).
    pub(crate) fn set_local(&self) -> String {
        let mut sql = format!(
            "SET LOCAL statement_timeout = {}",
            self.statement_timeout.as_millis()
        );
        if let Some(mode) = self.synchronous_commit {
            sql.push_str(&format!("; SET LOCAL synchronous_commit = {mode}"));
        }
        sql
    }

    /// Reads `pgbouncer=`, `target_session_attrs=`, `host=`, `replicas=` and `read_from=`.
    pub(super) fn read_deploy_params(&mut self, url: &StateUrl) -> Result<()> {
        if let Some(raw) = url.param("pgbouncer") {
            self.pgbouncer = Some(parse_bool("pgbouncer", raw)?);
        }
        if let Some(raw) = url.param("target_session_attrs") {
            self.target_session_attrs = match raw.to_ascii_lowercase().as_str() {
                "any" => TargetSessionAttrs::Any,
                "read-write" | "primary" => TargetSessionAttrs::ReadWrite,
                other => {
                    return Err(StateError::config(format!(
                        "target_session_attrs `{other}` is not one of any, read-write, primary"
                    )));
                }
            };
        }
        if let Some(raw) = url.param("host") {
            let hosts = parse_hosts("host", raw, self.port)?;
            if let Some((host, port)) = hosts.first() {
                self.host = host.clone();
                self.port = *port;
            }
            self.more_hosts = hosts.into_iter().skip(1).collect();
        }
        if let Some(raw) = url.param("replicas") {
            self.replicas = parse_hosts("replicas", raw, 5432)?;
        }
        if let Some(raw) = url.param("read_from") {
            self.read_from = match raw.to_ascii_lowercase().as_str() {
                "primary" => ReadFrom::Primary,
                "replicas" | "replica" => ReadFrom::Replicas,
                other => {
                    return Err(StateError::config(format!(
                        "read_from `{other}` is not one of primary, replicas"
                    )));
                }
            };
        }
        Ok(())
    }

    /// Checks the deployment options together.
    pub(super) fn validate_deploy(&self) -> Result<()> {
        if self.read_from == ReadFrom::Replicas && self.replicas.is_empty() {
            return Err(StateError::config(
                "read_from=replicas needs replicas: add replicas=host:port,… to the URL",
            ));
        }
        Ok(())
    }
}

fn endpoint(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn parse_bool(name: &str, raw: &str) -> Result<bool> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(StateError::config(format!(
            "parameter `{name}` is `{raw}`; use true or false"
        ))),
    }
}

/// `h1:p1,h2,[::1]:p3` into hosts and ports (`default_port` where none is written).
fn parse_hosts(name: &str, raw: &str, default_port: u16) -> Result<Vec<(String, u16)>> {
    let bad = |part: &str| {
        StateError::config(format!(
            "parameter `{name}`: `{part}` is not host[:port]; write host:port,host:port"
        ))
    };
    let mut out = Vec::new();
    for part in raw.split(',').map(str::trim) {
        let (host, port) = if let Some(rest) = part.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad(part))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(bad(part)),
            }
        } else {
            match part.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (part, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad(part))?,
            None => default_port,
        };
        if host.is_empty() || port == 0 {
            return Err(bad(part));
        }
        out.push((host.to_string(), port));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_parameters_are_read() -> Result<()> {
        let c = PostgresConfig::from_url(
            "postgres://u@a:5433,b:5434/db?target_session_attrs=read-write&pgbouncer=true\
             &replicas=r1:6000,r2&read_from=replicas",
        )?;
        assert_eq!(
            c.hosts(),
            vec![("a".to_string(), 5433), ("b".to_string(), 5434)]
        );
        assert_eq!(c.target_session_attrs(), TargetSessionAttrs::ReadWrite);
        assert_eq!(c.pgbouncer(), Some(true));
        assert_eq!(
            c.replicas(),
            &[("r1".to_string(), 6000), ("r2".to_string(), 5432)]
        );
        assert_eq!(c.read_from(), ReadFrom::Replicas);
        let c = PostgresConfig::from_url("postgres://u@x/db?host=a:1,[::1]:2")?;
        assert_eq!(
            c.hosts(),
            vec![("a".to_string(), 1), ("::1".to_string(), 2)]
        );
        assert_eq!(c.pgbouncer(), None);
        Ok(())
    }

    #[test]
    fn bad_deployment_parameters_name_the_field() {
        for (url, field) in [
            ("postgres://h/db?pgbouncer=maybe", "pgbouncer"),
            (
                "postgres://h/db?target_session_attrs=standby",
                "target_session_attrs",
            ),
            ("postgres://h/db?replicas=a:x", "replicas"),
            ("postgres://h/db?read_from=replicas", "replicas="),
            ("postgres://h/db?read_from=nearest", "read_from"),
        ] {
            match PostgresConfig::from_url(url) {
                Ok(c) => panic!("{url} was accepted: {c:?}"),
                Err(e) => assert!(e.to_string().contains(field), "{url}: {e}"),
            }
        }
    }

    #[test]
    fn set_local_carries_the_session_settings() {
        let c = PostgresConfig::default()
            .with_statement_timeout(std::time::Duration::from_secs(2))
            .with_synchronous_commit("remote_apply");
        assert_eq!(
            c.set_local(),
            "SET LOCAL statement_timeout = 2000; SET LOCAL synchronous_commit = remote_apply"
        );
    }
}
