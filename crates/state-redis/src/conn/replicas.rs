//! Point reads from replicas (`read_from=replicas`): [`Pool::read`].
//!
//! Only `GET`, `MGET` and `PTTL` come here; everything else stays on the primary. Redis
//! replicates asynchronously, so what a replica answers may lag behind the primary (the
//! caller's own last write included): that is the documented price of the option.
//!
//! - **Sentinel**: a second set of `pool_max` slots, each dialled to a replica the Sentinels
//!   list as healthy (the driver checks its `ROLE` and picks one at random per dial). When
//!   no replica can be reached, the read goes to the primary, and replicas are not tried
//!   again for [`REPLICA_RETRY_AFTER`], so that a replica that hangs does not make every
//!   read wait for a connect timeout first.
//! - **Cluster**: a third set of cluster connections whose read-only commands the driver
//!   routes to a random replica of the key's slot (the master if the slot has none).

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::aio::ConnectionLike;
use redis::{Cmd, Value};
use state_core::Result;

use super::setup::sentinel_replica_dial;
use super::single::{Dialer, Slot, lock};
use super::{Conn, Kind, Pool, lift};
use crate::config::RedisConfig;
use crate::error::Failure;

/// How long reads go to the primary after no replica could be reached.
const REPLICA_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The replica slots of a Sentinel deployment.
pub(super) struct ReplicaSlots {
    dialer: Dialer,
    pub(super) slots: Vec<Slot>,
    /// When dialling a replica last failed.
    failed_at: Mutex<Option<Instant>>,
}

impl ReplicaSlots {
    pub(super) fn new(config: &RedisConfig, master_name: &str, target: &str) -> Result<Self> {
        Ok(ReplicaSlots {
            dialer: Dialer::new(sentinel_replica_dial(config, master_name, target)?, config),
            slots: (0..config.pool_max).map(|_| Slot::default()).collect(),
            failed_at: Mutex::new(None),
        })
    }

    /// Whether a replica dial failed less than [`REPLICA_RETRY_AFTER`] ago.
    fn resting(&self) -> bool {
        lock(&self.failed_at).is_some_and(|at| at.elapsed() < REPLICA_RETRY_AFTER)
    }
}

impl Pool {
    /// Sends one point read (`GET`, `MGET`, `PTTL`): to a replica with
    /// `read_from=replicas`, otherwise like [`query`](Pool::query).
    pub(crate) async fn read(&self, cmd: &Cmd) -> std::result::Result<Value, Failure> {
        let result = match &self.kind {
            Kind::Single {
                replicas: Some(replicas),
                ..
            } => {
                let index = self.next.fetch_add(1, Ordering::Relaxed) % replicas.slots.len().max(1);
                let Some(slot) = replicas.slots.get(index) else {
                    return self.query(cmd).await;
                };
                let open = match slot.lend() {
                    Some(open) => open,
                    None if replicas.resting() => return self.query(cmd).await,
                    // Dialling is rare and its future large: boxed, as in `Pool::conn`.
                    None => match Box::pin(slot.get_or_dial(&replicas.dialer)).await {
                        Ok(open) => open,
                        // No replica within reach: the primary answers, as the Cluster
                        // driver does for a slot without replicas.
                        Err(_) => {
                            *lock(&replicas.failed_at) = Some(Instant::now());
                            return self.query(cmd).await;
                        }
                    },
                };
                let mut open = open;
                let reply = open.query(cmd).await;
                let conn = Conn::Single {
                    open,
                    slot: index,
                    replica: true,
                };
                self.settle(&conn, reply)
            }
            Kind::Cluster {
                replica_reads: Some(set),
                ..
            } => {
                let index = self.next.fetch_add(1, Ordering::Relaxed) % set.len().max(1);
                let mut conn = match set.ready(index) {
                    Some(conn) => conn,
                    None => Box::pin(set.get(index))
                        .await
                        .map_err(Failure::before_send)?,
                };
                let reply = conn.req_packed_command(cmd).await;
                self.settle(&Conn::Cluster { conn, exact: false }, reply)
            }
            _ => return self.query(cmd).await,
        };
        result.and_then(|v| lift(v).map_err(Failure::after_send))
    }

    /// Opens slot `index` of the Cluster replica-read set, if there is one.
    pub(super) async fn open_replica_reads(
        &self,
        index: usize,
    ) -> std::result::Result<(), Failure> {
        if let Kind::Cluster {
            replica_reads: Some(set),
            ..
        } = &self.kind
        {
            set.get(index).await.map_err(Failure::before_send)?;
        }
        Ok(())
    }
}
