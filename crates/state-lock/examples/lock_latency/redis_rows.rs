//! The Redis group: our lock, its two scripts on the raw `redis` crate (the floor), and
//! `rslock` (Redlock on one server), against `PING` on a raw connection.

use std::sync::Arc;

use async_trait::async_trait;
use state_lock::{DistributedLock, RedisDistributedLock};
use state_redis::redis;

use crate::measure::{Contender, Role, Row, Timed, measure_group};
use crate::{Options, OursCycle, Result, TTL, unique, with_param};

/// `PING` on a raw multiplexed connection.
struct Ping {
    conn: redis::aio::MultiplexedConnection,
}

#[async_trait(?Send)]
impl Timed for Ping {
    async fn run(&mut self, _: usize) -> Result<()> {
        let pong: String = redis::cmd("PING").query_async(&mut self.conn).await?;
        if pong != "PONG" {
            return Err(format!("PING answered {pong}").into());
        }
        Ok(())
    }
}

/// The floor: the lock's own two scripts (acquire, release) by EVALSHA on one raw
/// multiplexed connection, without our library around them.
struct RawScripts {
    conn: redis::aio::MultiplexedConnection,
    acquire: redis::Script,
    release: redis::Script,
    key: String,
    fence: String,
}

#[async_trait(?Send)]
impl Timed for RawScripts {
    async fn run(&mut self, _: usize) -> Result<()> {
        let token: String = self
            .acquire
            .key(&self.key)
            .key(&self.fence)
            .arg("bench-owner")
            .arg(30_000)
            .invoke_async(&mut self.conn)
            .await?;
        let released: i64 = self
            .release
            .key(&self.key)
            .arg(format!("bench-owner {token}"))
            .invoke_async(&mut self.conn)
            .await?;
        if released != 1 {
            return Err("the raw release found the lock not held".into());
        }
        Ok(())
    }
}

/// `rslock` as its README shows it: `lock(resource, ttl)`, then `unlock(&lock)`, with one
/// server (quorum 1).
struct Redlock {
    manager: rslock::LockManager,
    resource: String,
}

#[async_trait(?Send)]
impl Timed for Redlock {
    async fn run(&mut self, _: usize) -> Result<()> {
        let lock = self
            .manager
            .lock(self.resource.as_bytes(), TTL)
            .await
            .map_err(|e| format!("rslock did not take an uncontended lock: {e}"))?;
        // Best effort by design: rslock reports nothing about the unlock.
        self.manager.unlock(&lock).await;
        Ok(())
    }
}

pub async fn redis_rows(opts: &Options) -> Result<Vec<Row>> {
    let client = redis::Client::open(opts.redis.as_str())?;
    let conn = client.get_multiplexed_async_connection().await?;
    let prefix = format!("{}:", unique("redis"));
    let rows = measure_redis(opts, &client, &prefix).await;
    remove_keys(conn, &prefix).await?;
    rows
}

async fn measure_redis(opts: &Options, client: &redis::Client, prefix: &str) -> Result<Vec<Row>> {
    let url = with_param(&opts.redis, "prefix", prefix);
    let ours: Arc<dyn DistributedLock> = Arc::new(RedisDistributedLock::new(&url).await?);
    let key = format!("{prefix}raw:{{uncontended}}");
    let raw = RawScripts {
        conn: client.get_multiplexed_async_connection().await?,
        acquire: redis::Script::new(state_lock::redis_scripts::ACQUIRE),
        release: redis::Script::new(state_lock::redis_scripts::RELEASE),
        fence: format!("{key}:fence"),
        key,
    };
    let redlock = Redlock {
        manager: rslock::LockManager::new(vec![opts.redis.clone()]),
        resource: format!("{prefix}rslock"),
    };
    let mut ping = Ping {
        conn: client.get_multiplexed_async_connection().await?,
    };
    let contenders = vec![
        Contender::new(
            "Redis (standalone)",
            Role::Ours,
            OursCycle::new(ours, "uncontended"),
        ),
        Contender::new(
            "Redis: the same two scripts on the raw `redis` crate (floor)",
            Role::DriverFloor,
            raw,
        ),
        Contender::new(
            "Redis: `rslock` 0.10 (Redlock, one server; no fencing token)",
            Role::Peer,
            redlock,
        ),
    ];
    measure_group("redis", opts, &mut ping, contenders).await
}

/// The fencing counter outlives the lock by design: removes this run's keys.
async fn remove_keys(mut conn: redis::aio::MultiplexedConnection, prefix: &str) -> Result<()> {
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        for key in keys {
            let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
