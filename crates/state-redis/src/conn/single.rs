//! Standalone and Sentinel: `pool_max` slots, each holding one multiplexed connection and a
//! generation number, dialled again by us after a failure that broke it.
//!
//! For Sentinel every dial asks the Sentinels where the primary is now, so a failover is
//! found by the next request after the old connection broke.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::aio::MultiplexedConnection;
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, Pipeline, RedisError, RedisResult, Value,
};

use super::lend::{Lent, Stash};
use super::nagle::{Load, NagleUnderLoad};

use crate::config::RedisConfig;

/// A new connection, with what we keep of its socket if we opened it ourselves.
pub(super) type Dialled = (MultiplexedConnection, Option<OwnSocket>);

/// A connection we opened ourselves ([`Dialer::open`]): the task driving it, and the count
/// of its requests waiting for replies, which decides how it writes (see `nagle.rs`).
pub(super) struct OwnSocket {
    task: ConnTask,
    load: Arc<Load>,
}

/// How a slot reaches its server.
pub(super) struct Dialer {
    how: Dial,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    tcp_nodelay: Option<bool>,
}

pub(super) enum Dial {
    Direct(Client),
    Sentinel {
        client: tokio::sync::Mutex<SentinelClient>,
        /// One plain client per Sentinel, to ask whether it knows the master name when the
        /// driver found no primary (see [`Dialer::dial`]).
        sentinels: Vec<Client>,
        master_name: String,
    },
    /// A replica the Sentinels list as healthy (`read_from=replicas`).
    SentinelReplica {
        client: tokio::sync::Mutex<SentinelClient>,
    },
}

#[derive(Default)]
pub(super) struct Slot {
    current: Mutex<Option<Open>>,
    dialing: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// Clones of the current connection, lent to requests (`lend.rs`).
    pub(super) stash: Stash<Open>,
}

/// A slot's open connection, with its generation. Requests use clones; when the slot has
/// forgotten the connection and the last request using it is done, the connection's task
/// stops and its socket closes (as the driver does for the connections it spawns itself).
#[derive(Clone)]
pub(super) struct Open {
    pub(super) generation: u64,
    conn: MultiplexedConnection,
    /// Its requests waiting for replies, counted on our own sockets only.
    load: Option<Arc<Load>>,
    _task: Option<Arc<ConnTask>>,
}

/// The task that drives a connection we opened ourselves ([`Dialer::open`]), stopped when
/// dropped.
pub(super) struct ConnTask(tokio::task::AbortHandle);

impl Drop for ConnTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Open {
    /// Sends one command, counted as waiting until its reply (or its caller's end).
    ///
    /// Scripts count too. They once did not: a script costs the server several times a
    /// plain command (the compare-and-swap script about 5 µs, a GET under 1 µs), and on
    /// one VM merging them at 16 tasks turned that into idle time (63-74k/s merged against
    /// 72-108k/s sent at once). But on another, merged scripts at 64 tasks ran 229-233k/s
    /// against 203-205k/s unmerged; since a loaded connection now tries both ways and keeps
    /// the faster (`nagle.rs`), the machine decides.
    pub(super) async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        let _waiting = self.load.as_deref().map(Load::waiting);
        self.conn.req_packed_command(cmd).await
    }

    /// Sends a pipeline, counted as one request waiting until its replies.
    pub(super) async fn pipeline(&mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        let _waiting = self.load.as_deref().map(Load::waiting);
        super::run_pipeline(&mut self.conn, pipe).await
    }
}

impl Lent<'_, Open> {
    /// Sends one command on the lent connection ([`Open::query`]).
    pub(super) async fn query(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self.get_mut() {
            Some(open) => open.query(cmd).await,
            None => Err(given_back()),
        }
    }

    /// Sends a pipeline on the lent connection ([`Open::pipeline`]).
    pub(super) async fn pipeline(&mut self, pipe: &Pipeline) -> RedisResult<Vec<Value>> {
        match self.get_mut() {
            Some(open) => open.pipeline(pipe).await,
            None => Err(given_back()),
        }
    }
}

/// The error of a request on a connection already given back: never seen, since only
/// `drop` gives it back.
fn given_back() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Client,
        "internal error: a request used a pooled connection after giving it back",
    ))
}

impl Slot {
    /// A clone of the open connection, if any, lent to one request: from this thread's
    /// stash, else cloned (the hot path, with no await).
    pub(super) fn lend(&self) -> Option<Lent<'_, Open>> {
        Lent::from_stash(&self.stash).or_else(|| {
            let open = lock(&self.current).clone()?;
            Some(Lent::new(open.generation, open, &self.stash))
        })
    }

    /// The open connection, dialling one (only one task dials a slot at a time).
    pub(super) async fn get_or_dial(&self, dialer: &Dialer) -> Result<Lent<'_, Open>, RedisError> {
        if let Some(open) = self.lend() {
            return Ok(open);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(open) = self.lend() {
            return Ok(open);
        }
        let (conn, own) = dialer.dial().await?;
        let (task, load) = own.map(|own| (own.task, own.load)).unzip();
        let open = Open {
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            conn,
            load,
            _task: task.map(Arc::new),
        };
        *lock(&self.current) = Some(open.clone());
        self.stash.set_live(open.generation);
        Ok(Lent::new(open.generation, open, &self.stash))
    }

    /// Forgets the connection of `generation` (a newer one is kept).
    pub(super) fn forget(&self, generation: u64) {
        let mut current = lock(&self.current);
        if current
            .as_ref()
            .is_some_and(|open| open.generation == generation)
        {
            *current = None;
            drop(current);
            self.stash.clear();
        }
    }
}

impl Dialer {
    pub(super) fn new(how: Dial, config: &RedisConfig) -> Dialer {
        Dialer {
            how,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(config.connect_timeout))
                .set_response_timeout(Some(config.response_timeout)),
            connect_timeout: config.connect_timeout,
            tcp_nodelay: config.tcp_nodelay,
        }
    }

    /// Opens a connection to the server, or for Sentinel to the primary the Sentinels name.
    ///
    /// For Sentinel, a failure to reach a primary is looked at again through the Sentinels
    /// themselves (see [`sentinel_view`](Self::sentinel_view)): if they know the master
    /// name, a primary that is missing, not a primary, or refusing connections is a
    /// failover in progress, `MASTERDOWN` (retryable); a name no Sentinel knows is a
    /// configuration error (`MasterNameNotFoundBySentinel`).
    pub(super) async fn dial(&self) -> Result<Dialled, RedisError> {
        let client = match &self.how {
            Dial::Direct(client) => client.clone(),
            Dial::Sentinel {
                client,
                sentinels,
                master_name,
            } => {
                // Asked on every dial: after a failover the Sentinels name the new primary.
                let found = {
                    let mut client = client.lock().await;
                    tokio::time::timeout(self.connect_timeout, client.async_get_client()).await
                };
                let failure = match found {
                    Ok(Ok(client)) => match self.open(&client).await {
                        Ok(conn) => return Ok(conn),
                        Err(err) => err,
                    },
                    Ok(Err(err)) => err,
                    Err(_) => timeout_error(),
                };
                return Err(self.sentinel_view(sentinels, master_name, failure).await);
            }
            // Asked on every dial: replicas come and go with failovers.
            Dial::SentinelReplica { client } => {
                let mut client = client.lock().await;
                tokio::time::timeout(self.connect_timeout, client.async_get_client())
                    .await
                    .map_err(|_| timeout_error())??
            }
        };
        self.open(&client).await
    }

    /// Connects to `client`'s server. Over plain TCP we open the socket ourselves, to put
    /// [`NagleUnderLoad`] under the multiplexed connection; TLS and Unix sockets go
    /// through the driver's own dialling.
    async fn open(&self, client: &Client) -> Result<Dialled, RedisError> {
        let info = client.get_connection_info();
        let ConnectionAddr::Tcp(host, port) = info.addr() else {
            let conn = client
                .get_multiplexed_async_connection_with_config(&self.config)
                .await?;
            return Ok((conn, None));
        };
        let handshake = async {
            let load = Arc::new(Load::default());
            let socket = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            let (conn, driver) = MultiplexedConnection::new_with_config(
                info.redis_settings(),
                NagleUnderLoad::new(socket, self.tcp_nodelay, load.clone())?,
                self.config.clone(),
            )
            .await?;
            let task = ConnTask(tokio::spawn(driver).abort_handle());
            Ok::<_, RedisError>((conn, Some(OwnSocket { task, load })))
        };
        tokio::time::timeout(self.connect_timeout, handshake)
            .await
            .map_err(|_| timeout_error())?
    }

    /// What a failure to reach the primary means, by asking the Sentinels directly
    /// whether they know `master_name`: a known name makes it a failover in progress
    /// (`MASTERDOWN`), a name every answering Sentinel ignores a configuration error, and
    /// no answer at all leaves `err` as it is (the Sentinels are unreachable).
    async fn sentinel_view(
        &self,
        sentinels: &[Client],
        master_name: &str,
        err: RedisError,
    ) -> RedisError {
        if matches!(
            err.kind(),
            redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig
        ) || err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm)
        {
            return err;
        }
        let mut ask = redis::cmd("SENTINEL");
        ask.arg("get-master-addr-by-name").arg(master_name);
        let mut answered = false;
        for sentinel in sentinels {
            let answer = tokio::time::timeout(self.connect_timeout, async {
                let mut conn = sentinel
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await?;
                ask.query_async::<Value>(&mut conn).await
            })
            .await;
            match answer {
                Ok(Ok(Value::Nil)) => answered = true,
                // A Sentinel that knows the name: the primary is down or being replaced.
                Ok(Ok(_)) => {
                    return RedisError::from((
                        redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown),
                        "the Sentinels know the master name, but the primary they name is \
                         not reachable or not a primary (a failover is in progress)",
                        err.to_string(),
                    ));
                }
                // An unreachable Sentinel tells nothing; another may answer.
                Ok(Err(_)) | Err(_) => {}
            }
        }
        if answered {
            // Every Sentinel that answered has never heard of the name.
            return RedisError::from((
                redis::ErrorKind::MasterNameNotFoundBySentinel,
                "no Sentinel monitors a master of this name",
            ));
        }
        err
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn timeout_error() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "connecting timed out",
    ))
}

#[cfg(test)]
mod tests {
    use super::super::setup::{node_info, open_client};
    use super::*;

    /// A clone comes back to the stash and is lent again; once the slot forgets its
    /// connection, no clone of it is lent or kept, also one given back afterwards.
    #[tokio::test]
    async fn lends_clones_again_but_never_one_of_a_forgotten_connection()
    -> Result<(), Box<dyn std::error::Error>> {
        let service = testing::services::redis().await?;
        let config = RedisConfig::builder().url(service.url()).build()?;
        let host = config.hosts.first().ok_or("no host")?;
        let client = open_client(node_info(&config, &host.host, host.port)?, &config)?;
        let dialer = Dialer::new(Dial::Direct(client), &config);
        let slot = Slot::default();

        let first = slot.get_or_dial(&dialer).await?;
        let generation = first.generation();
        drop(first);
        assert_eq!(slot.stash.kept(), 1, "the dialled clone is kept");
        let mut lent = slot.lend().ok_or("no connection to lend")?;
        assert_eq!(slot.stash.kept(), 0, "the kept clone is lent");
        assert_eq!(
            lent.query(&redis::cmd("PING")).await?,
            Value::SimpleString("PONG".into())
        );
        let second = slot.lend().ok_or("no connection to lend")?;
        drop((lent, second));
        assert_eq!(
            slot.stash.kept(),
            2,
            "both clones are kept for later requests"
        );

        slot.forget(generation);
        assert_eq!(
            slot.stash.kept(),
            0,
            "a forgotten connection's clones are dropped"
        );
        assert!(slot.lend().is_none(), "nothing to lend once forgotten");

        let redialled = slot.get_or_dial(&dialer).await?;
        assert_eq!(redialled.generation(), generation + 1);
        slot.forget(redialled.generation());
        drop(redialled);
        assert_eq!(
            slot.stash.kept(),
            0,
            "a clone given back after forget is dropped"
        );
        Ok(())
    }
}
