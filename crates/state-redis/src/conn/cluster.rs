//! Cluster: the driver's cluster connections, which route each command by its key's slot,
//! follow `MOVED` and refresh their slot map.
//!
//! There are two sets of them, because the driver's own retries re-send a request after a
//! broken connection or a reply timeout, when it may already have been applied:
//!
//! - **re-sending** (`retries(6)`): for reads and for writes that are safe to send again;
//!   the driver follows `MOVED`/`ASK` and reconnects by itself;
//! - **exact** (`retries(0)`): for blind writes. The driver sends each request once; a
//!   `MOVED` (after which the driver refreshes its slot map), `TRYAGAIN` or `CLUSTERDOWN`
//!   reply (nothing was executed) comes back to our retry policy, which sends it again; an
//!   `ASK` reply is followed at once, with `ASKING`, on the node it names (see
//!   [`ask_target`]); a broken connection comes back as an unknown outcome. A pipeline of
//!   blind writes is sent command by command (see `one_by_one` in the parent module), so
//!   that a slot migrating under it never hides which of its writes were applied.
//!
//! With `read_from=replicas` a third set, like the re-sending one but routing read-only
//! commands to a random replica of their slot (the driver sends `READONLY` to every node
//! it opens), serves the point reads `GET`, `MGET` and `PTTL`, and nothing else.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_read_routing::RandomReplicaStrategy;
use redis::{ConnectionInfo, RedisError, TlsCertificates, TlsMode};
use state_core::StateError;
use tokio::sync::OnceCell;

use super::setup::{build_error, node_info, tcp_settings};
use super::{Node, single::timeout_error};
use crate::config::RedisConfig;

/// Which of the sets (see the module) a [`ClusterConns`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ConnSet {
    /// Reads and safe writes: the driver may re-send.
    Resending,
    /// Blind writes: the driver sends once.
    Exact,
    /// Point reads from replicas: the driver may re-send; read-only commands go to replicas.
    ReplicaReads,
}

/// `pool_max` cluster connections of one kind, opened on first use.
pub(super) struct ClusterConns {
    client: ClusterClient,
    slots: Vec<OnceCell<ClusterConnection>>,
    connect_timeout: Duration,
}

impl ClusterConns {
    /// `set`: whether the driver may re-send a request on its own, and where it sends
    /// reads (see the module).
    pub(super) fn new(
        config: &RedisConfig,
        target: &str,
        set: ConnSet,
    ) -> Result<ClusterConns, StateError> {
        let nodes: Vec<ConnectionInfo> = config
            .hosts
            .iter()
            .map(|h| node_info(config, &h.host, h.port))
            .collect::<Result<_, _>>()
            .map_err(|e| build_error(target, e))?;
        let mut builder = ClusterClientBuilder::new(nodes)
            .connection_timeout(config.connect_timeout)
            .response_timeout(config.response_timeout)
            .tcp_settings(tcp_settings(config));
        builder = match set {
            // The driver follows MOVED/ASK and reconnects to a node; our RetryPolicy
            // governs everything else on top.
            ConnSet::Resending => builder.retries(6).min_retry_wait(20).max_retry_wait(500),
            ConnSet::Exact => builder.retries(0),
            ConnSet::ReplicaReads => builder
                .retries(6)
                .min_retry_wait(20)
                .max_retry_wait(500)
                .read_routing_strategy(RandomReplicaStrategy),
        };
        if let Some(user) = &config.username {
            builder = builder.username(user);
        }
        if let Some(pass) = &config.password {
            builder = builder.password(pass.expose());
        }
        if config.tls {
            builder = builder.tls(TlsMode::Secure);
            if let Some(ca) = &config.tls_root_ca {
                builder = builder.certs(TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                });
            }
        }
        let client = builder.build().map_err(|e| build_error(target, e))?;
        Ok(ClusterConns {
            client,
            slots: (0..config.pool_max).map(|_| OnceCell::new()).collect(),
            // The driver's own per-node connect and handshake deadlines come first: a node
            // that accepts but never answers (stopped) is left out, not fatal.
            connect_timeout: config.connect_timeout * 2 + config.response_timeout,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.slots.len()
    }

    /// The connection of slot `index` if it is open: the hot path, with no await.
    pub(super) fn ready(&self, index: usize) -> Option<ClusterConnection> {
        self.slots.get(index)?.get().cloned()
    }

    /// The connection of slot `index`, opened if needed. Nothing has been sent when this
    /// fails.
    pub(super) async fn get(&self, index: usize) -> Result<ClusterConnection, RedisError> {
        let Some(cell) = self.slots.get(index) else {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "no such pool slot",
            )));
        };
        let conn = cell
            .get_or_try_init(|| async {
                tokio::time::timeout(self.connect_timeout, self.client.get_async_connection())
                    .await
                    .map_err(|_| timeout_error())?
            })
            .await?;
        Ok(conn.clone())
    }
}

/// The node an `ASK` error reply sends the request to (`ASK <slot> <host>:<port>`).
pub(super) fn ask_target(err: &RedisError) -> Option<Node> {
    if err.kind() != redis::ErrorKind::Server(redis::ServerErrorKind::Ask) {
        return None;
    }
    let (addr, _slot) = err.redirect_node()?;
    let (host, port) = addr.rsplit_once(':')?;
    Some(Node::Cluster {
        host: host.to_string(),
        port: port.parse().ok()?,
    })
}

/// The masters (not failed) of a `CLUSTER NODES` reply.
pub(crate) fn parse_cluster_nodes(text: &str) -> Vec<Node> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_id), Some(addr), Some(flags)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"master")
            || flags
                .iter()
                .any(|f| matches!(*f, "fail" | "noaddr" | "handshake"))
        {
            continue;
        }
        // ip:port@cport[,hostname]
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        // A master with no slots holds no data.
        let has_slots = line.split_whitespace().nth(8).is_some();
        if has_slots && !host.is_empty() {
            out.push(Node::Cluster {
                host: host.to_string(),
                port,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lists_live_masters_with_slots() {
        let text = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
c 127.0.0.1:7002@17002 master,fail - 0 0 3 connected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 0 1 connected
e 127.0.0.1:7004@17004 master - 0 0 5 connected
";
        let nodes = parse_cluster_nodes(text);
        assert_eq!(
            nodes,
            vec![
                Node::Cluster {
                    host: "127.0.0.1".into(),
                    port: 7000
                },
                Node::Cluster {
                    host: "127.0.0.1".into(),
                    port: 7001
                },
            ]
        );
    }

    #[test]
    fn ask_replies_name_their_target() {
        let err = match redis::parse_redis_value(b"-ASK 3999 127.0.0.1:7002\r\n") {
            Ok(redis::Value::ServerError(e)) => RedisError::from(e),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            ask_target(&err),
            Some(Node::Cluster {
                host: "127.0.0.1".into(),
                port: 7002
            })
        );
        let moved = match redis::parse_redis_value(b"-MOVED 3999 127.0.0.1:7002\r\n") {
            Ok(redis::Value::ServerError(e)) => RedisError::from(e),
            other => panic!("{other:?}"),
        };
        assert_eq!(ask_target(&moved), None);
    }
}
