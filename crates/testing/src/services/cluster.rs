//! [`RedisCluster`]: six redis-server processes formed into 3 masters + 3 replicas.

use std::path::PathBuf;
use std::time::Duration;

use super::process::{self, Reaper};
use super::redis::{self as node, NodeTls, RedisNode};
use super::{ServiceError, TestCerts, percent_encode};

/// How long forming the cluster may take (6 starts, slot assignment, replica sync).
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// A Redis Cluster of 3 masters and 3 replicas on free loopback ports, in one temporary
/// directory. `cluster-node-timeout` is 2000 ms, so a killed master's replica takes over
/// within a few seconds. Stopped (and the directory removed) on drop.
/// [`start_tls`](Self::start_tls) makes every node serve TLS only, with the cluster bus and
/// replication over TLS too.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisNode>,
    tls: Option<NodeTls>,
    _reaper: Reaper,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts six nodes, runs `redis-cli --cluster create … --cluster-replicas 1`, and waits
    /// (bounded) until every node reports `cluster_state:ok` and every replica is in sync.
    pub async fn start() -> Result<RedisCluster, ServiceError> {
        Self::start_with(None).await
    }

    /// Like [`start`](Self::start), with TLS everywhere: every node serves TLS only
    /// (`port 0`, `tls-port`) with the server certificate of `certs`, the cluster bus and
    /// replication use TLS (`tls-cluster yes`, `tls-replication yes`), and clients need no
    /// certificate. [`url`](Self::url) then carries `tls=true` and `tls_ca` (the CA's path).
    pub async fn start_tls(certs: &TestCerts) -> Result<RedisCluster, ServiceError> {
        Self::start_with(Some(certs)).await
    }

    async fn start_with(certs: Option<&TestCerts>) -> Result<RedisCluster, ServiceError> {
        for bin in ["redis-server", "redis-cli"] {
            if process::on_path(bin).is_none() {
                return Err(ServiceError::new(format!(
                    "{bin} is not on PATH; install it (e.g. `apt-get install redis-server`)"
                )));
            }
        }
        let tmp = tempfile::Builder::new()
            .prefix("state-redis-cluster-")
            .tempdir()
            .map_err(|e| ServiceError::new(format!("cannot create a temp dir: {e}")))?;
        let reaper = Reaper::spawn(&node::reaper_script(tmp.path()));
        let tls = certs
            .map(|c| NodeTls::copy_into(c, tmp.path()))
            .transpose()?;
        let extra = |port: u16| -> Result<Vec<String>, ServiceError> {
            let mut lines = match &tls {
                Some(tls) => {
                    let mut lines = tls.config_lines(port);
                    lines.push("tls-cluster yes".to_owned());
                    lines
                }
                None => Vec::new(),
            };
            lines.extend([
                "cluster-enabled yes".to_owned(),
                "cluster-config-file nodes.conf".to_owned(),
                "cluster-node-timeout 2000".to_owned(),
                // The bus port is picked like the data port, so port+10000 need not be free.
                format!("cluster-port {}", process::free_port()?),
                // Replicas may always take over, however stale: tests kill masters on purpose.
                "cluster-replica-validity-factor 0".to_owned(),
                "cluster-require-full-coverage yes".to_owned(),
            ]);
            Ok(lines)
        };
        let mut nodes = Vec::new();
        for i in 0..6 {
            let dir: PathBuf = tmp.path().join(format!("node-{i}"));
            nodes.push(RedisNode::start(dir, false, &extra).await?);
        }
        let cluster = RedisCluster {
            nodes,
            tls,
            _reaper: reaper,
            _dir: tmp,
        };
        let mut create = tokio::process::Command::new("redis-cli");
        if let Some(tls) = &cluster.tls {
            create.args(tls.cli_args());
        }
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port()));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        process::run(&mut create, FORM_TIMEOUT)
            .await
            .map_err(|e| ServiceError::new(format!("forming the cluster failed: {e}")))?;
        cluster.wait_healthy(FORM_TIMEOUT).await?;
        Ok(cluster)
    }

    /// `redis+cluster://127.0.0.1:p1,127.0.0.1:p2,…` with every node; with TLS followed
    /// by `?tls=true&tls_ca=PATH` (state-redis' URL parameters).
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut url = format!("redis+cluster://{}", hosts.join(","));
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

    /// The ports of all six nodes, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisNode::port).collect()
    }

    /// The ports of the nodes that are masters now, as a live node sees it.
    pub async fn masters(&self) -> Result<Vec<u16>, ServiceError> {
        Ok(self.roles().await?.0)
    }

    /// The ports of the nodes that are replicas now, as a live node sees it.
    pub async fn replicas(&self) -> Result<Vec<u16>, ServiceError> {
        Ok(self.roles().await?.1)
    }

    /// Runs `redis-cli -p PORT ARGS…` against one node (add `-c` to follow redirects),
    /// over TLS when the cluster serves TLS.
    pub async fn cli(&self, port: u16, args: &[&str]) -> Result<String, ServiceError> {
        node::cli_tls(port, self.tls.as_ref(), args).await
    }

    /// SIGKILL one node.
    pub fn kill_node(&mut self, port: u16) -> Result<(), ServiceError> {
        self.node_mut(port)?.kill();
        Ok(())
    }

    /// SIGSTOP one node: it stops answering but keeps its connections.
    pub fn pause_node(&self, port: u16) -> Result<(), ServiceError> {
        self.node(port)?.signal("STOP")
    }

    /// SIGCONT one node after [`pause_node`](Self::pause_node).
    pub fn resume_node(&self, port: u16) -> Result<(), ServiceError> {
        self.node(port)?.signal("CONT")
    }

    /// Starts a killed node again on its port; it rejoins the cluster from its nodes.conf
    /// (a former master comes back as a replica of the node that replaced it).
    pub async fn restart_node(&mut self, port: u16) -> Result<(), ServiceError> {
        let n = self.node_mut(port)?;
        n.stop().await;
        n.spawn().await
    }

    /// After killing master `dead`, waits (up to `timeout`) until a surviving replica has
    /// been promoted in its place and every live node reports `cluster_state:ok`; returns
    /// the new master's port.
    pub async fn wait_for_promotion(
        &self,
        dead: u16,
        timeout: Duration,
    ) -> Result<u16, ServiceError> {
        let log = self
            .nodes
            .iter()
            .find(|n| n.port() != dead)
            .map(RedisNode::log_path);
        process::wait_for(
            &format!("a replica to replace the killed master on port {dead}"),
            timeout,
            log.as_deref(),
            || async move { self.promoted(dead).await.ok().flatten() },
        )
        .await
    }

    /// Waits (up to `timeout`) until every live node reports `cluster_state:ok`.
    pub async fn wait_healthy(&self, timeout: Duration) -> Result<(), ServiceError> {
        let log = self.nodes.first().map(RedisNode::log_path);
        process::wait_for(
            "every cluster node to report cluster_state:ok with 3 masters and 3 synced replicas",
            timeout,
            log.as_deref(),
            || async move { self.healthy().await.then_some(()) },
        )
        .await
    }

    /// Waits (up to `timeout`) until `CLUSTER SLOTS` on every live node lists every replica:
    /// the view a client that reads from replicas routes by. Redis 7.0 leaves out a replica
    /// whose replication offset is still 0, so on a fresh cluster write to every master
    /// first (the masters' pings to their replicas also move it, every 10 s).
    pub async fn wait_replicas_in_slots(&self, timeout: Duration) -> Result<(), ServiceError> {
        let log = self.nodes.first().map(RedisNode::log_path);
        process::wait_for(
            "CLUSTER SLOTS on every node to list every replica",
            timeout,
            log.as_deref(),
            || async move {
                let replicas = self.replicas().await.ok()?;
                for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
                    let slots = self.cli(n.port(), &["cluster", "slots"]).await.ok()?;
                    let listed: Vec<&str> = slots.lines().map(str::trim).collect();
                    if replicas.is_empty()
                        || !replicas
                            .iter()
                            .all(|r| listed.contains(&r.to_string().as_str()))
                    {
                        return None;
                    }
                }
                Some(())
            },
        )
        .await
    }

    async fn healthy(&self) -> bool {
        for n in self.nodes.iter().filter(|n| n.pid().is_some()) {
            let Ok(info) = self.cli(n.port(), &["cluster", "info"]).await else {
                return false;
            };
            if node::info_field(&info, "cluster_state") != Some("ok")
                || node::info_field(&info, "cluster_known_nodes") != Some("6")
            {
                return false;
            }
        }
        let Ok((masters, replicas)) = self.roles().await else {
            return false;
        };
        if masters.len() != 3 || replicas.len() != 3 {
            return false;
        }
        for port in replicas {
            let Ok(info) = self.cli(port, &["info", "replication"]).await else {
                return false;
            };
            if node::info_field(&info, "master_link_status") != Some("up") {
                return false;
            }
        }
        true
    }

    async fn promoted(&self, dead: u16) -> Result<Option<u16>, ServiceError> {
        // The dead node's own nodes.conf says which nodes replicated it when it died.
        let dead_node = self.node(dead)?;
        let conf = dead_node.dir().join("nodes.conf");
        let own = std::fs::read_to_string(&conf)
            .map_err(|e| ServiceError::new(format!("cannot read {}: {e}", conf.display())))?;
        let own_rows = parse_nodes(&own);
        let dead_id = own_rows
            .iter()
            .find(|r| r.flags.iter().any(|f| f == "myself"))
            .map(|r| r.id.clone())
            .ok_or_else(|| ServiceError::new(format!("{} has no `myself` line", conf.display())))?;
        let candidates: Vec<u16> = own_rows
            .iter()
            .filter(|r| r.replica_of.as_deref() == Some(dead_id.as_str()))
            .map(|r| r.port)
            .collect();
        let live: Vec<&RedisNode> = self.nodes.iter().filter(|n| n.pid().is_some()).collect();
        for n in &live {
            let info = self.cli(n.port(), &["cluster", "info"]).await?;
            if node::info_field(&info, "cluster_state") != Some("ok") {
                return Ok(None);
            }
        }
        let Some(first) = live.first() else {
            return Ok(None);
        };
        let rows = parse_nodes(&self.cli(first.port(), &["cluster", "nodes"]).await?);
        Ok(rows
            .iter()
            .find(|r| {
                candidates.contains(&r.port)
                    && r.slots
                    && r.flags.iter().any(|f| f == "master")
                    && !r.flags.iter().any(|f| f.starts_with("fail"))
            })
            .map(|r| r.port))
    }

    async fn roles(&self) -> Result<(Vec<u16>, Vec<u16>), ServiceError> {
        let live = self
            .nodes
            .iter()
            .find(|n| n.pid().is_some())
            .ok_or_else(|| ServiceError::new("no cluster node is running"))?;
        let text = self.cli(live.port(), &["cluster", "nodes"]).await?;
        let mut masters = Vec::new();
        let mut replicas = Vec::new();
        for row in parse_nodes(&text) {
            if row.flags.iter().any(|f| f == "fail" || f == "fail?") {
                continue;
            }
            if row.flags.iter().any(|f| f == "master") {
                masters.push(row.port);
            } else if row.flags.iter().any(|f| f == "slave") {
                replicas.push(row.port);
            }
        }
        masters.sort_unstable();
        replicas.sort_unstable();
        Ok((masters, replicas))
    }

    fn node(&self, port: u16) -> Result<&RedisNode, ServiceError> {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .ok_or_else(|| ServiceError::new(format!("no cluster node on port {port}")))
    }

    fn node_mut(&mut self, port: u16) -> Result<&mut RedisNode, ServiceError> {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .ok_or_else(|| ServiceError::new(format!("no cluster node on port {port}")))
    }
}

/// One line of `CLUSTER NODES`.
#[derive(Debug)]
struct NodeRow {
    id: String,
    port: u16,
    flags: Vec<String>,
    replica_of: Option<String>,
    slots: bool,
}

/// Parses `CLUSTER NODES`: `id ip:port@bus flags master-id ping pong epoch link slots…`.
fn parse_nodes(text: &str) -> Vec<NodeRow> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let id = (*fields.first()?).to_owned();
            let addr = fields.get(1)?.split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags = fields.get(2)?.split(',').map(str::to_owned).collect();
            let master = fields.get(3)?;
            Some(NodeRow {
                id,
                port,
                flags,
                replica_of: (*master != "-").then(|| (*master).to_owned()),
                slots: fields.len() > 8,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lines_parse() {
        let text = "\
a1 127.0.0.1:7001@17001 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7004@17004 slave a1 0 1700000000000 1 connected
c3 127.0.0.1:7002@17002 master,fail - 0 0 2 disconnected
vars currentEpoch 6 lastVoteEpoch 0";
        let rows = parse_nodes(text);
        assert_eq!(rows.len(), 3);
        assert_eq!((rows[0].port, rows[0].slots), (7001, true));
        assert_eq!(rows[1].replica_of.as_deref(), Some("a1"));
        assert!(!rows[2].slots);
        assert!(rows[2].flags.iter().any(|f| f == "fail"));
    }
}
