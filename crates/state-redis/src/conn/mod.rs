//! Connections: `pool_max` multiplexed connections used round-robin, reconnected by us.
//!
//! Standalone and Sentinel share one path: each slot of the pool holds a multiplexed
//! connection and a generation number; a failure that means the connection is broken (I/O,
//! timeout, `READONLY` from a demoted primary) drops it, and the next request dials again
//! — for Sentinel, after asking the Sentinels where the primary is now. Cluster mode uses
//! the driver's cluster connection, which follows MOVED/ASK and refreshes its slot map.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    Pipeline, RedisConnectionInfo, RedisError, TlsCertificates, TlsMode, Value,
};
use state_core::{Result, StateError};
use tokio::sync::OnceCell;

use crate::config::{RedisConfig, Topology};
use crate::error::{Failure, needs_reconnect};

/// One server of the deployment, for commands that must visit each (SCAN, INFO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    /// The standalone server or the current Sentinel primary.
    Single,
    /// A Cluster master at this address.
    Cluster { host: String, port: u16 },
}

impl Node {
    pub(crate) fn describe(&self, pool: &Pool) -> String {
        match self {
            Node::Single => pool.target.clone(),
            Node::Cluster { host, port } => format!("{host}:{port}"),
        }
    }
}

pub(crate) struct Pool {
    kind: Kind,
    next: AtomicUsize,
    /// Set once `new` has connected: from then on a Sentinel that names no valid primary
    /// is a failover in progress, not a wrong master name.
    started: AtomicBool,
    /// Where we connect, for messages: no password.
    pub(crate) target: String,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.target)
            .finish()
    }
}

enum Kind {
    Single {
        dialer: Dialer,
        slots: Vec<Slot>,
    },
    Cluster {
        client: ClusterClient,
        slots: Vec<OnceCell<ClusterConnection>>,
        connect_timeout: Duration,
    },
}

struct Dialer {
    how: Dial,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
}

enum Dial {
    Direct(Client),
    Sentinel(tokio::sync::Mutex<SentinelClient>),
}

#[derive(Default)]
struct Slot {
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    dialing: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

/// A connection taken from the pool for one request.
enum Conn {
    Single {
        conn: MultiplexedConnection,
        slot: usize,
        generation: u64,
    },
    Cluster(ClusterConnection),
}

impl Pool {
    /// Builds the pool and opens `pool_min` connections.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Pool> {
        if config.tls {
            // rustls needs a process-wide crypto provider; an error only means one is set.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let target = config.describe();
        let kind = match &config.topology {
            Topology::Cluster => {
                let nodes: Vec<ConnectionInfo> = config
                    .hosts
                    .iter()
                    .map(|h| node_info(config, &h.host, h.port))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(|e| build_error(&target, e))?;
                let mut builder = redis::cluster::ClusterClientBuilder::new(nodes)
                    .connection_timeout(config.connect_timeout)
                    .response_timeout(config.response_timeout)
                    // The driver's own retries follow MOVED/ASK and reconnect to a node;
                    // our RetryPolicy governs everything else on top.
                    .retries(6)
                    .min_retry_wait(20)
                    .max_retry_wait(500);
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
                let client = builder.build().map_err(|e| build_error(&target, e))?;
                Kind::Cluster {
                    client,
                    slots: (0..config.pool_max).map(|_| OnceCell::new()).collect(),
                    connect_timeout: config.connect_timeout,
                }
            }
            Topology::Standalone => {
                let Some(host) = config.hosts.first() else {
                    return Err(StateError::config("urls: no server given"));
                };
                let info = node_info(config, &host.host, host.port)
                    .map_err(|e| build_error(&target, e))?;
                let client = match &config.tls_root_ca {
                    Some(ca) => Client::build_with_tls(
                        info,
                        TlsCertificates {
                            client_tls: None,
                            root_cert: Some(ca.clone()),
                        },
                    ),
                    None => Client::open(info),
                }
                .map_err(|e| build_error(&target, e))?;
                Kind::Single {
                    dialer: Dialer::new(Dial::Direct(client), config),
                    slots: (0..config.pool_max).map(|_| Slot::default()).collect(),
                }
            }
            Topology::Sentinel { master_name } => {
                let sentinels = config.hosts.iter().map(|h| {
                    if config.tls {
                        ConnectionAddr::TcpTls {
                            host: h.host.clone(),
                            port: h.port,
                            insecure: false,
                            tls_params: None,
                        }
                    } else {
                        ConnectionAddr::Tcp(h.host.clone(), h.port)
                    }
                });
                let mut builder =
                    SentinelClientBuilder::new(sentinels, master_name, SentinelServerType::Master)
                        .map_err(|e| build_error(&target, e))?
                        .set_client_to_redis_db(config.db);
                if let Some(user) = &config.username {
                    builder = builder.set_client_to_redis_username(user);
                }
                if let Some(pass) = &config.password {
                    builder = builder.set_client_to_redis_password(pass.expose());
                }
                if config.tls {
                    builder = builder
                        .set_client_to_redis_tls_mode(TlsMode::Secure)
                        .set_client_to_sentinel_tls_mode(TlsMode::Secure);
                    if let Some(ca) = &config.tls_root_ca {
                        let certs = TlsCertificates {
                            client_tls: None,
                            root_cert: Some(ca.clone()),
                        };
                        builder = builder
                            .set_client_to_redis_certificates(certs.clone())
                            .set_client_to_sentinel_certificates(certs);
                    }
                }
                let client = builder.build().map_err(|e| build_error(&target, e))?;
                Kind::Single {
                    dialer: Dialer::new(Dial::Sentinel(tokio::sync::Mutex::new(client)), config),
                    slots: (0..config.pool_max).map(|_| Slot::default()).collect(),
                }
            }
        };
        let pool = Pool {
            kind,
            next: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            target,
        };
        for index in 0..config.pool_min {
            pool.conn_at_index(index)
                .await
                .map(|_| ())
                .map_err(|f| crate::error::to_state("connect", &pool.target, f))?;
        }
        pool.started.store(true, Ordering::Relaxed);
        Ok(pool)
    }

    fn size(&self) -> usize {
        match &self.kind {
            Kind::Single { slots, .. } => slots.len(),
            Kind::Cluster { slots, .. } => slots.len(),
        }
        .max(1)
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    async fn conn(&self) -> std::result::Result<Conn, Failure> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.size();
        if let Some(conn) = self.ready_conn(index) {
            return Ok(conn);
        }
        // Dialing is rare and its future is large: boxing it keeps the future of every
        // request small (it is moved into the heap once per call by `async_trait`).
        Box::pin(self.conn_at_index(index)).await
    }

    /// The connection of slot `index` if it is open: the hot path, with no await.
    fn ready_conn(&self, index: usize) -> Option<Conn> {
        match &self.kind {
            Kind::Cluster { slots, .. } => slots
                .get(index)?
                .get()
                .map(|conn| Conn::Cluster(conn.clone())),
            Kind::Single { slots, .. } => {
                let current = lock(&slots.get(index)?.current).clone();
                current.map(|(generation, conn)| Conn::Single {
                    conn,
                    slot: index,
                    generation,
                })
            }
        }
    }

    async fn conn_at_index(&self, index: usize) -> std::result::Result<Conn, Failure> {
        match &self.kind {
            Kind::Cluster {
                client,
                slots,
                connect_timeout,
            } => {
                let Some(cell) = slots.get(index) else {
                    return Err(Failure::before_send(internal("no such pool slot")));
                };
                let conn = cell
                    .get_or_try_init(|| async {
                        tokio::time::timeout(*connect_timeout, client.get_async_connection())
                            .await
                            .map_err(|_| timeout_error())?
                    })
                    .await
                    .map_err(Failure::before_send)?;
                Ok(Conn::Cluster(conn.clone()))
            }
            Kind::Single { dialer, slots } => {
                let Some(slot) = slots.get(index) else {
                    return Err(Failure::before_send(internal("no such pool slot")));
                };
                if let Some((generation, conn)) = lock(&slot.current).clone() {
                    return Ok(Conn::Single {
                        conn,
                        slot: index,
                        generation,
                    });
                }
                let _dialing = slot.dialing.lock().await;
                if let Some((generation, conn)) = lock(&slot.current).clone() {
                    return Ok(Conn::Single {
                        conn,
                        slot: index,
                        generation,
                    });
                }
                let conn = dialer.dial().await.map_err(|err| {
                    let failing_over = self.started.load(Ordering::Relaxed)
                        && err.kind() == redis::ErrorKind::MasterNameNotFoundBySentinel;
                    Failure::before_send(if failing_over {
                        RedisError::from((
                            redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown),
                            "the sentinels name no primary that says it is one (failover in progress)",
                        ))
                    } else {
                        err
                    })
                })?;
                let generation = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *lock(&slot.current) = Some((generation, conn.clone()));
                Ok(Conn::Single {
                    conn,
                    slot: index,
                    generation,
                })
            }
        }
    }

    /// Forgets a broken connection so that the next request dials again.
    fn invalidate(&self, conn: &Conn, err: &RedisError) {
        if !needs_reconnect(err) {
            return;
        }
        if let (
            Kind::Single { slots, .. },
            Conn::Single {
                slot, generation, ..
            },
        ) = (&self.kind, conn)
            && let Some(slot) = slots.get(*slot)
        {
            let mut current = lock(&slot.current);
            if current.as_ref().is_some_and(|(g, _)| g == generation) {
                *current = None;
            }
        }
    }

    /// Sends one command (routed by its key in Cluster mode); an error reply is an error.
    pub(crate) async fn query(&self, cmd: &Cmd) -> std::result::Result<Value, Failure> {
        self.query_raw(cmd)
            .await
            .and_then(|v| lift(v).map_err(Failure::after_send))
    }

    /// Sends one command and returns its reply, an error reply included as a value.
    pub(crate) async fn query_raw(&self, cmd: &Cmd) -> std::result::Result<Value, Failure> {
        let mut conn = self.conn().await?;
        let result = match &mut conn {
            Conn::Single { conn, .. } => conn.req_packed_command(cmd).await,
            Conn::Cluster(conn) => conn.req_packed_command(cmd).await,
        };
        self.settle(&conn, result)
    }

    /// Sends a pipeline (in Cluster mode every key must be in one slot) and returns one
    /// reply per command; a failed command's reply is a `Value::ServerError`. For an atomic
    /// pipeline the replies are those of the commands inside MULTI/EXEC.
    pub(crate) async fn pipeline(
        &self,
        pipe: &Pipeline,
    ) -> std::result::Result<Vec<Value>, Failure> {
        let mut conn = self.conn().await?;
        let result = match &mut conn {
            Conn::Single { conn, .. } => run_pipeline(conn, pipe).await,
            Conn::Cluster(conn) => run_pipeline(conn, pipe).await,
        };
        self.settle(&conn, result)
    }

    /// Sends one command to a given node.
    pub(crate) async fn query_node(
        &self,
        node: &Node,
        cmd: &Cmd,
    ) -> std::result::Result<Value, Failure> {
        match node {
            Node::Single => self.query(cmd).await,
            Node::Cluster { host, port } => {
                let mut conn = self.conn().await?;
                let result = match &mut conn {
                    Conn::Cluster(c) => {
                        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        });
                        c.route_command(cmd.clone(), routing).await
                    }
                    Conn::Single { conn, .. } => conn.req_packed_command(cmd).await,
                };
                self.settle(&conn, result.and_then(lift))
            }
        }
    }

    /// Sends a non-atomic pipeline to a given node.
    pub(crate) async fn pipeline_node(
        &self,
        node: &Node,
        pipe: &Pipeline,
    ) -> std::result::Result<Vec<Value>, Failure> {
        match node {
            Node::Single => self.pipeline(pipe).await,
            Node::Cluster { host, port } => {
                let mut conn = self.conn().await?;
                let result = match &mut conn {
                    Conn::Cluster(c) => {
                        let route = SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port: *port,
                        };
                        c.route_pipeline(pipe.clone(), 0, pipe.len(), route).await
                    }
                    Conn::Single { conn, .. } => run_pipeline(conn, pipe).await,
                };
                self.settle(&conn, result)
            }
        }
    }

    fn settle<T: Replies>(
        &self,
        conn: &Conn,
        result: std::result::Result<T, RedisError>,
    ) -> std::result::Result<T, Failure> {
        match result {
            Ok(replies) => {
                // A demoted primary answers READONLY per command inside a pipeline.
                if let Some(err) = replies.first_server_error() {
                    self.invalidate(conn, &err);
                }
                Ok(replies)
            }
            Err(err) => {
                self.invalidate(conn, &err);
                Err(Failure::after_send(err))
            }
        }
    }

    /// Every node that holds data: the one server, or each Cluster master.
    pub(crate) async fn masters(&self) -> std::result::Result<Vec<Node>, Failure> {
        if !self.is_cluster() {
            return Ok(vec![Node::Single]);
        }
        let reply = self
            .query(&redis::cmd("CLUSTER").arg("NODES").clone())
            .await?;
        let text = match reply {
            Value::BulkString(b) => String::from_utf8_lossy(&b).into_owned(),
            Value::VerbatimString { text, .. } => text,
            Value::SimpleString(s) => s,
            other => {
                return Err(Failure::after_send(internal_owned(format!(
                    "unexpected CLUSTER NODES reply {other:?}"
                ))));
            }
        };
        let masters = parse_cluster_nodes(&text);
        if masters.is_empty() {
            return Err(Failure::after_send(RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ClusterDown),
                "CLUSTER NODES lists no reachable master",
            ))));
        }
        Ok(masters)
    }
}

/// Turns a top-level error reply into an error.
pub(crate) fn lift(value: Value) -> std::result::Result<Value, RedisError> {
    match value {
        Value::ServerError(e) => Err(e.into()),
        other => Ok(other),
    }
}

trait Replies {
    fn first_server_error(&self) -> Option<RedisError>;
}

impl Replies for Value {
    fn first_server_error(&self) -> Option<RedisError> {
        match self {
            Value::ServerError(e) => Some(e.clone().into()),
            _ => None,
        }
    }
}

impl Replies for Vec<Value> {
    fn first_server_error(&self) -> Option<RedisError> {
        self.iter().find_map(|v| match v {
            Value::ServerError(e) => Some(e.clone().into()),
            _ => None,
        })
    }
}

async fn run_pipeline<C: ConnectionLike>(
    conn: &mut C,
    pipe: &Pipeline,
) -> std::result::Result<Vec<Value>, RedisError> {
    if pipe.is_transaction() {
        let mut replies = conn.req_packed_commands(pipe, pipe.len() + 1, 1).await?;
        match replies.pop() {
            Some(Value::Array(items)) => Ok(items),
            Some(Value::Nil) => Err(RedisError::from((
                redis::ErrorKind::Server(redis::ServerErrorKind::ExecAbort),
                "the transaction was aborted",
            ))),
            Some(Value::ServerError(e)) => Err(e.into()),
            _ => Err(internal("unexpected EXEC reply")),
        }
    } else {
        conn.req_packed_commands(pipe, 0, pipe.len()).await
    }
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

impl Dialer {
    fn new(how: Dial, config: &RedisConfig) -> Dialer {
        Dialer {
            how,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.response_timeout)),
            connect_timeout: config.connect_timeout,
        }
    }

    async fn dial(&self) -> std::result::Result<MultiplexedConnection, RedisError> {
        let client = match &self.how {
            Dial::Direct(client) => client.clone(),
            // Asked on every dial: after a failover the Sentinels name the new primary.
            Dial::Sentinel(sentinel) => {
                let mut sentinel = sentinel.lock().await;
                tokio::time::timeout(self.connect_timeout, sentinel.async_get_client())
                    .await
                    .map_err(|_| timeout_error())??
            }
        };
        client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await
    }
}

fn node_info(
    config: &RedisConfig,
    host: &str,
    port: u16,
) -> std::result::Result<ConnectionInfo, RedisError> {
    let addr = if config.tls {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    };
    let mut redis_info = RedisConnectionInfo::default().set_db(config.db);
    if let Some(user) = &config.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(pass) = &config.password {
        redis_info = redis_info.set_password(pass.expose());
    }
    Ok(addr.into_connection_info()?.set_redis_settings(redis_info))
}

fn build_error(target: &str, err: RedisError) -> StateError {
    StateError::config(format!(
        "cannot set up the Redis client for {target} ({}); check the URL and TLS settings",
        err.category()
    ))
    .with_source(err)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn internal(msg: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Client, msg))
}

fn internal_owned(msg: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Client, "unexpected reply", msg))
}

fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "connecting timed out",
    ))
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
}
