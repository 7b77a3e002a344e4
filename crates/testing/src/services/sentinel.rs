//! [`RedisSentinel`]: a primary, one replica and three sentinels watching them.

use std::time::Duration;

use super::process::{self, Reaper};
use super::redis::{self as node, NodeTls, RedisNode};
use super::{ServiceError, TestCerts, percent_encode};

/// The name the sentinels monitor the primary under.
const MASTER_NAME: &str = "mymaster";
/// How long the sentinels may take to find the replica and each other.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// A primary, one replica and 3 sentinels (`quorum 2`, `down-after-milliseconds 1000`,
/// `failover-timeout 3000`) on free loopback ports in one temporary directory. Stopped (and
/// the directory removed) on drop. [`start_tls`](Self::start_tls) makes every one of them
/// (sentinels included) serve TLS only, and replicate and monitor over TLS.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The two data nodes; which one is primary changes with failovers.
    data: Vec<RedisNode>,
    sentinels: Vec<RedisNode>,
    tls: Option<NodeTls>,
    _reaper: Reaper,
    _dir: tempfile::TempDir,
}

impl RedisSentinel {
    /// Starts the primary, the replica and the sentinels, and waits (bounded) until every
    /// sentinel names the primary, sees the replica and the two other sentinels, and the
    /// replica is in sync.
    pub async fn start() -> Result<RedisSentinel, ServiceError> {
        Self::start_with(None).await
    }

    /// Like [`start`](Self::start), with TLS on every port: the data nodes and the
    /// sentinels serve TLS only (`port 0`, `tls-port`) with the server certificate of
    /// `certs`, the replica and the sentinels reach the data nodes over TLS
    /// (`tls-replication yes`), and clients need no certificate. [`url`](Self::url) then
    /// carries `tls=true` and `tls_ca` (the CA's path).
    pub async fn start_tls(certs: &TestCerts) -> Result<RedisSentinel, ServiceError> {
        Self::start_with(Some(certs)).await
    }

    async fn start_with(certs: Option<&TestCerts>) -> Result<RedisSentinel, ServiceError> {
        for bin in ["redis-server", "redis-cli"] {
            if process::on_path(bin).is_none() {
                return Err(ServiceError::new(format!(
                    "{bin} is not on PATH; install it (e.g. `apt-get install redis-server`)"
                )));
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("state-redis-sentinel-")
            .tempdir()
            .map_err(|e| ServiceError::new(format!("cannot create a temp dir: {e}")))?;
        let reaper = Reaper::spawn(&node::reaper_script(tmp.path()));
        let tls = certs
            .map(|c| NodeTls::copy_into(c, tmp.path()))
            .transpose()?;
        let tls_lines = |port: u16| {
            tls.as_ref()
                .map(|t| t.config_lines(port))
                .unwrap_or_default()
        };
        let none = |port: u16| -> Result<Vec<String>, ServiceError> { Ok(tls_lines(port)) };
        let primary = RedisNode::start(tmp.path().join("primary"), false, &none).await?;
        let primary_port = primary.port();
        let follow = |port: u16| -> Result<Vec<String>, ServiceError> {
            let mut lines = tls_lines(port);
            lines.push(format!("replicaof 127.0.0.1 {primary_port}"));
            Ok(lines)
        };
        let replica = RedisNode::start(tmp.path().join("replica"), false, &follow).await?;
        let watch = |port: u16| -> Result<Vec<String>, ServiceError> {
            let mut lines = tls_lines(port);
            lines.extend([
                format!("sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2"),
                format!("sentinel down-after-milliseconds {MASTER_NAME} 1000"),
                format!("sentinel failover-timeout {MASTER_NAME} 3000"),
                format!("sentinel parallel-syncs {MASTER_NAME} 1"),
            ]);
            Ok(lines)
        };
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let dir = tmp.path().join(format!("sentinel-{i}"));
            sentinels.push(RedisNode::start(dir, true, &watch).await?);
        }
        let topology = RedisSentinel {
            data: vec![primary, replica],
            sentinels,
            tls,
            _reaper: reaper,
            _dir: tmp,
        };
        topology.wait_formed().await?;
        Ok(topology)
    }

    /// `redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/mymaster`; with TLS
    /// followed by `?tls=true&tls_ca=PATH` (state-redis' URL parameters).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut url = format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","));
        if let Some(ca) = self.ca_file() {
            url.push_str(&format!(
                "?tls=true&tls_ca={}",
                percent_encode(&ca.display().to_string())
            ));
        }
        url
    }

    /// The CA certificate that verifies every node, when started with
    /// [`start_tls`](Self::start_tls).
    pub fn ca_file(&self) -> Option<&std::path::Path> {
        self.tls.as_ref().map(NodeTls::ca_file)
    }

    /// The name the sentinels monitor the primary under (`mymaster`).
    pub fn master_name(&self) -> &str {
        MASTER_NAME
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(RedisNode::port).collect()
    }

    /// The ports of the two data nodes (primary and replica, in start order).
    pub fn data_ports(&self) -> Vec<u16> {
        self.data.iter().map(RedisNode::port).collect()
    }

    /// The port of the primary as the first answering sentinel reports it now.
    pub async fn primary_port(&self) -> Result<u16, ServiceError> {
        let mut last = ServiceError::new("no sentinel is running");
        for s in self.sentinels.iter().filter(|s| s.pid().is_some()) {
            match reported_primary(s.port(), self.tls.as_ref()).await {
                Ok(port) => return Ok(port),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The port of the data node that is not the primary now.
    pub async fn replica_port(&self) -> Result<u16, ServiceError> {
        let primary = self.primary_port().await?;
        self.data
            .iter()
            .map(RedisNode::port)
            .find(|p| *p != primary)
            .ok_or_else(|| ServiceError::new("the topology has no second data node"))
    }

    /// Runs `redis-cli -p PORT ARGS…` against any node of the topology (over TLS when it
    /// serves TLS).
    pub async fn cli(&self, port: u16, args: &[&str]) -> Result<String, ServiceError> {
        node::cli_tls(port, self.tls.as_ref(), args).await
    }

    /// SIGKILLs the current primary and returns its port.
    pub async fn kill_primary(&mut self) -> Result<u16, ServiceError> {
        let port = self.primary_port().await?;
        self.data_node_mut(port)?.kill();
        Ok(port)
    }

    /// SIGSTOP a data node (sentinels see it as down after 1 s, then fail over).
    pub fn pause_node(&self, port: u16) -> Result<(), ServiceError> {
        self.data_node(port)?.signal("STOP")
    }

    /// SIGCONT a data node after [`pause_node`](Self::pause_node).
    pub fn resume_node(&self, port: u16) -> Result<(), ServiceError> {
        self.data_node(port)?.signal("CONT")
    }

    /// Starts a killed data node again on its port. A former primary is reconfigured by the
    /// sentinels into a replica of the new one.
    pub async fn restart_node(&mut self, port: u16) -> Result<(), ServiceError> {
        let n = self.data_node_mut(port)?;
        n.stop().await;
        n.spawn().await
    }

    /// After the primary on `old` died, waits (up to `timeout`) until a majority of the
    /// sentinels report another primary and that server says `role:master`; returns its port.
    pub async fn wait_for_new_primary(
        &self,
        old: u16,
        timeout: Duration,
    ) -> Result<u16, ServiceError> {
        let log = self.sentinels.first().map(RedisNode::log_path);
        process::wait_for(
            &format!("the sentinels to promote a new primary in place of port {old}"),
            timeout,
            log.as_deref(),
            || async move {
                let mut votes = Vec::new();
                for s in &self.sentinels {
                    if let Ok(p) = reported_primary(s.port(), self.tls.as_ref()).await {
                        votes.push(p);
                    }
                }
                let candidate = votes.iter().copied().find(|p| *p != old)?;
                let agreeing = votes.iter().filter(|p| **p == candidate).count();
                if agreeing < 2 {
                    return None;
                }
                let info = self.cli(candidate, &["info", "replication"]).await.ok()?;
                (node::info_field(&info, "role") == Some("master")).then_some(candidate)
            },
        )
        .await
    }

    /// Waits until every Sentinel names `primary` and `old`, if given, reports itself a
    /// replica: the failover has settled, so a connection dialled afresh can no longer
    /// land on a former primary that still takes writes (and drops them when it resyncs).
    pub async fn wait_settled_on(
        &self,
        primary: u16,
        old: Option<u16>,
        timeout: Duration,
    ) -> Result<(), ServiceError> {
        let log = self.sentinels.first().map(RedisNode::log_path);
        process::wait_for(
            &format!("every sentinel to name port {primary}, and the old primary to follow it"),
            timeout,
            log.as_deref(),
            || async move {
                for s in &self.sentinels {
                    if reported_primary(s.port(), self.tls.as_ref()).await.ok()? != primary {
                        return None;
                    }
                }
                if let Some(old) = old {
                    let info = self.cli(old, &["info", "replication"]).await.ok()?;
                    if node::info_field(&info, "role") != Some("slave") {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    async fn wait_formed(&self) -> Result<(), ServiceError> {
        let primary = self.data.first().map(RedisNode::port).unwrap_or_default();
        let replica = self.data.get(1).map(RedisNode::port).unwrap_or_default();
        let log = self.sentinels.first().map(RedisNode::log_path);
        process::wait_for(
            "the sentinels to agree on the primary and see the replica and each other",
            FORM_TIMEOUT,
            log.as_deref(),
            || async move {
                let info = self.cli(replica, &["info", "replication"]).await.ok()?;
                if node::info_field(&info, "master_link_status") != Some("up") {
                    return None;
                }
                for s in &self.sentinels {
                    if reported_primary(s.port(), self.tls.as_ref()).await.ok()? != primary {
                        return None;
                    }
                    let state = self
                        .cli(s.port(), &["sentinel", "master", MASTER_NAME])
                        .await
                        .ok()?;
                    let fields = pairs(&state);
                    if field(&fields, "num-slaves") != Some("1")
                        || field(&fields, "num-other-sentinels") != Some("2")
                    {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    fn data_node(&self, port: u16) -> Result<&RedisNode, ServiceError> {
        self.data
            .iter()
            .find(|n| n.port() == port)
            .ok_or_else(|| ServiceError::new(format!("no data node on port {port}")))
    }

    fn data_node_mut(&mut self, port: u16) -> Result<&mut RedisNode, ServiceError> {
        self.data
            .iter_mut()
            .find(|n| n.port() == port)
            .ok_or_else(|| ServiceError::new(format!("no data node on port {port}")))
    }
}

/// Asks one sentinel `SENTINEL get-master-addr-by-name mymaster`; returns the port.
async fn reported_primary(sentinel: u16, tls: Option<&NodeTls>) -> Result<u16, ServiceError> {
    let out = node::cli_tls(
        sentinel,
        tls,
        &["sentinel", "get-master-addr-by-name", MASTER_NAME],
    )
    .await?;
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let (_host, port) = (lines.next(), lines.next());
    port.and_then(|p| p.parse().ok()).ok_or_else(|| {
        ServiceError::new(format!(
            "sentinel on port {sentinel} gave no primary address: {}",
            out.trim()
        ))
    })
}

/// redis-cli prints a flat reply one element per line: pair them up as (field, value).
fn pairs(text: &str) -> Vec<(&str, &str)> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .chunks(2)
        .filter_map(|c| match c {
            [k, v] => Some((*k, *v)),
            _ => None,
        })
        .collect()
}

fn field<'a>(pairs: &[(&'a str, &'a str)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}
