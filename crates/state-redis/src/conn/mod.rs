//! Connections: `pool_max` connections used round-robin, and how a request is sent on one.
//!
//! Standalone and Sentinel share one path (`single`): each slot of the pool holds a
//! multiplexed connection that a failure meaning "broken" (I/O, timeout, `READONLY` from a
//! demoted primary) drops, and the next request dials again — for Sentinel, after asking
//! the Sentinels where the primary is now. A request borrows a clone of it from a stash
//! kept per thread (`lend`). Cluster mode (`cluster`) uses the driver's
//! cluster connections, which follow MOVED/ASK and refresh their slot map; blind writes go
//! through a second set that never re-sends on its own.
//!
//! With `read_from=replicas` the point reads go through [`Pool::read`] (`replicas`) to a
//! replica: for Sentinel a second set of slots dialled to the replicas the Sentinels list,
//! for Cluster a third set of cluster connections that route reads to replicas.
//!
//! Standalone and Sentinel connections over plain TCP are opened by us, on a stream that
//! lets the kernel merge the writes of concurrent callers while many requests wait, and
//! sends each at once otherwise ([`nagle`]); TLS, Unix sockets and Cluster connections are
//! opened by the driver.
//!
//! Every send reports, with its error, whether the request may have reached the server
//! ([`Failure`]): that is what the retry rule of `state_core::RetryPolicy` decides on.

mod cluster;
mod exact;
mod lend;
mod nagle;
mod replicas;
mod setup;
mod single;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, Pipeline, RedisError, Value};
use state_core::{ErrorKind, Idempotency, Result, RetryPolicy, StateError};

use crate::config::{ReadFrom, RedisConfig, Topology};
use crate::error::{Failure, needs_reconnect};
pub(crate) use cluster::parse_cluster_nodes;
use cluster::{ClusterConns, ConnSet};
use exact::{ask_of, follow_ask, one_by_one};
use lend::Lent;
use replicas::ReplicaSlots;
use setup::{build_error, node_info, open_client, sentinel_dial};
use single::{Dial, Dialer, Open, Slot};

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

    fn route(&self) -> Option<SingleNodeRoutingInfo> {
        match self {
            Node::Single => None,
            Node::Cluster { host, port } => Some(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port: *port,
            }),
        }
    }
}

pub(crate) struct Pool {
    kind: Kind,
    next: AtomicUsize,
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
        /// Point reads with `read_from=replicas` (Sentinel only).
        replicas: Option<Box<ReplicaSlots>>,
    },
    Cluster {
        /// Reads and writes that are safe to send again.
        resending: ClusterConns,
        /// Blind writes: sent once by the driver. (Boxed: the variants' sizes differ.)
        exact: Box<ClusterConns>,
        /// Point reads with `read_from=replicas`.
        replica_reads: Option<Box<ClusterConns>>,
    },
}

/// A connection taken from the pool for one request.
enum Conn<'a> {
    Single {
        open: Lent<'a, Open>,
        slot: usize,
        /// From the replica slots: a broken one is forgotten there.
        replica: bool,
    },
    Cluster {
        conn: ClusterConnection,
        /// From the exact set: an `ASK` reply is followed here, not by the driver.
        exact: bool,
    },
}

impl Pool {
    /// Builds the pool and opens `pool_min` connections.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<Pool> {
        if config.tls {
            // rustls needs a process-wide crypto provider; an error only means one is set.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let target = config.describe();
        let replica_reads = config.read_from == ReadFrom::Replicas;
        let kind = match &config.topology {
            Topology::Cluster => Kind::Cluster {
                resending: ClusterConns::new(config, &target, ConnSet::Resending)?,
                exact: Box::new(ClusterConns::new(config, &target, ConnSet::Exact)?),
                replica_reads: replica_reads
                    .then(|| ClusterConns::new(config, &target, ConnSet::ReplicaReads))
                    .transpose()?
                    .map(Box::new),
            },
            Topology::Standalone => {
                let Some(host) = config.hosts.first() else {
                    return Err(StateError::config("urls: no server given"));
                };
                let info = node_info(config, &host.host, host.port)
                    .map_err(|e| build_error(&target, e))?;
                let client = open_client(info, config).map_err(|e| build_error(&target, e))?;
                Kind::Single {
                    dialer: Dialer::new(Dial::Direct(client), config),
                    slots: (0..config.pool_max).map(|_| Slot::default()).collect(),
                    replicas: None,
                }
            }
            Topology::Sentinel { master_name } => Kind::Single {
                dialer: Dialer::new(sentinel_dial(config, master_name, &target)?, config),
                slots: (0..config.pool_max).map(|_| Slot::default()).collect(),
                replicas: replica_reads
                    .then(|| ReplicaSlots::new(config, master_name, &target))
                    .transpose()?
                    .map(Box::new),
            },
        };
        let pool = Pool {
            kind,
            next: AtomicUsize::new(0),
            target,
        };
        for index in 0..config.pool_min {
            pool.open_at_start(index, &config.retry).await?;
        }
        Ok(pool)
    }

    /// Opens slot `index` while the backend starts. A server that answers that it cannot
    /// serve yet (a Sentinel failover in progress, `LOADING`) is waited for, up to the
    /// failover timeout; one that cannot be reached at all fails at once, so that a wrong
    /// address is reported without delay.
    async fn open_at_start(&self, index: usize, retry: &RetryPolicy) -> Result<()> {
        let started = Instant::now();
        let mut retries = 0;
        loop {
            // In Cluster mode every set opens now, while the cluster is whole: the driver's
            // first connection reaches every node, and one that hangs later would stall it.
            let opened = match self.conn_at_index(index, Idempotency::Idempotent).await {
                Ok(_) if self.is_cluster() => {
                    match self.conn_at_index(index, Idempotency::NotIdempotent).await {
                        Ok(_) => self.open_replica_reads(index).await,
                        Err(failure) => Err(failure),
                    }
                }
                Ok(_) => Ok(()),
                Err(failure) => Err(failure),
            };
            let failure = match opened {
                Ok(()) => return Ok(()),
                Err(failure) => crate::error::to_state("connect", &self.target, failure),
            };
            retries += 1;
            let delay = retry.delay(retries);
            if failure.kind() != ErrorKind::Unavailable
                || started.elapsed() + delay > retry.failover_timeout
            {
                return Err(failure);
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn size(&self) -> usize {
        match &self.kind {
            Kind::Single { slots, .. } => slots.len(),
            Kind::Cluster { resending, .. } => resending.len(),
        }
        .max(1)
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.kind, Kind::Cluster { .. })
    }

    async fn conn(&self, idempotency: Idempotency) -> std::result::Result<Conn<'_>, Failure> {
        // One slot (the default) needs no turn: the shared counter would be one more
        // cache line that every request moves between cores.
        let index = match self.size() {
            1 => 0,
            size => self.next.fetch_add(1, Ordering::Relaxed) % size,
        };
        if let Some(conn) = self.ready_conn(index, idempotency) {
            return Ok(conn);
        }
        // Dialing is rare and its future is large: boxing it keeps the future of every
        // request small (it is moved into the heap once per call by `async_trait`).
        Box::pin(self.conn_at_index(index, idempotency)).await
    }

    /// The connection of slot `index` if it is open: the hot path, with no await.
    fn ready_conn(&self, index: usize, idempotency: Idempotency) -> Option<Conn<'_>> {
        match &self.kind {
            Kind::Cluster {
                resending, exact, ..
            } => {
                let exact_set = idempotency == Idempotency::NotIdempotent;
                let set = if exact_set { exact } else { resending };
                set.ready(index).map(|conn| Conn::Cluster {
                    conn,
                    exact: exact_set,
                })
            }
            Kind::Single { slots, .. } => Some(Conn::Single {
                open: slots.get(index)?.lend()?,
                slot: index,
                replica: false,
            }),
        }
    }

    async fn conn_at_index(
        &self,
        index: usize,
        idempotency: Idempotency,
    ) -> std::result::Result<Conn<'_>, Failure> {
        match &self.kind {
            Kind::Cluster {
                resending, exact, ..
            } => {
                let exact_set = idempotency == Idempotency::NotIdempotent;
                let set = if exact_set { exact } else { resending };
                let conn = set.get(index).await.map_err(Failure::before_send)?;
                Ok(Conn::Cluster {
                    conn,
                    exact: exact_set,
                })
            }
            Kind::Single { dialer, slots, .. } => {
                let Some(slot) = slots.get(index) else {
                    return Err(Failure::before_send(internal("no such pool slot")));
                };
                let open = slot
                    .get_or_dial(dialer)
                    .await
                    .map_err(Failure::before_send)?;
                Ok(Conn::Single {
                    open,
                    slot: index,
                    replica: false,
                })
            }
        }
    }

    /// Forgets a broken connection so that the next request dials again.
    fn invalidate(&self, conn: &Conn<'_>, err: &RedisError) {
        if !needs_reconnect(err) {
            return;
        }
        if let (
            Kind::Single {
                slots, replicas, ..
            },
            Conn::Single {
                slot,
                open,
                replica,
            },
        ) = (&self.kind, conn)
        {
            let slots = match (replica, replicas) {
                (true, Some(replicas)) => &replicas.slots,
                _ => slots,
            };
            if let Some(slot) = slots.get(*slot) {
                slot.forget(open.generation());
            }
        }
    }

    /// Sends one read (routed by its key in Cluster mode); an error reply is an error.
    pub(crate) async fn query(&self, cmd: &Cmd) -> std::result::Result<Value, Failure> {
        self.query_raw(cmd, Idempotency::Idempotent)
            .await
            .and_then(|v| lift(v).map_err(Failure::after_send))
    }

    /// Sends one command and returns its reply, an error reply included as a value.
    /// `idempotency` picks, in Cluster mode, whether the driver may re-send it by itself.
    pub(crate) async fn query_raw(
        &self,
        cmd: &Cmd,
        idempotency: Idempotency,
    ) -> std::result::Result<Value, Failure> {
        let mut conn = self.conn(idempotency).await?;
        let result = match &mut conn {
            Conn::Single { open, .. } => open.query(cmd).await,
            Conn::Cluster { conn, exact } => {
                let reply = conn.req_packed_command(cmd).await;
                match ask_of(&reply).filter(|_| *exact) {
                    None => reply,
                    Some(node) => follow_ask(conn, cmd, node).await,
                }
            }
        };
        self.settle(&conn, result)
    }

    /// Sends a pipeline (in Cluster mode every key must be in one slot) and returns one
    /// reply per command; a failed command's reply is a `Value::ServerError`. For an atomic
    /// pipeline the replies are those of the commands inside MULTI/EXEC.
    pub(crate) async fn pipeline(
        &self,
        pipe: &Pipeline,
        idempotency: Idempotency,
    ) -> std::result::Result<Vec<Value>, Failure> {
        let mut conn = self.conn(idempotency).await?;
        let result = match &mut conn {
            Conn::Single { open, .. } => open.pipeline(pipe).await,
            Conn::Cluster { conn, exact } if *exact && !pipe.is_transaction() => {
                Box::pin(one_by_one(conn, pipe)).await
            }
            Conn::Cluster { conn, .. } => run_pipeline(conn, pipe).await,
        };
        self.settle(&conn, result)
    }

    /// Sends one read to a given node.
    pub(crate) async fn query_node(
        &self,
        node: &Node,
        cmd: &Cmd,
    ) -> std::result::Result<Value, Failure> {
        let Some(route) = node.route() else {
            return self.query(cmd).await;
        };
        let mut conn = self.conn(Idempotency::Idempotent).await?;
        let result = match &mut conn {
            Conn::Cluster { conn, .. } => {
                conn.route_command(cmd.clone(), RoutingInfo::SingleNode(route))
                    .await
            }
            Conn::Single { open, .. } => open.query(cmd).await,
        };
        self.settle(&conn, result.and_then(lift))
    }

    /// Sends a non-atomic pipeline of reads to a given node.
    pub(crate) async fn pipeline_node(
        &self,
        node: &Node,
        pipe: &Pipeline,
    ) -> std::result::Result<Vec<Value>, Failure> {
        let Some(route) = node.route() else {
            return self.pipeline(pipe, Idempotency::Idempotent).await;
        };
        let mut conn = self.conn(Idempotency::Idempotent).await?;
        let result = match &mut conn {
            Conn::Cluster { conn, .. } => {
                conn.route_pipeline(pipe.clone(), 0, pipe.len(), route)
                    .await
            }
            Conn::Single { open, .. } => open.pipeline(pipe).await,
        };
        self.settle(&conn, result)
    }

    fn settle<T: Replies>(
        &self,
        conn: &Conn<'_>,
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

fn internal(msg: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Client, msg))
}

fn internal_owned(msg: String) -> RedisError {
    RedisError::from((redis::ErrorKind::Client, "unexpected reply", msg))
}
