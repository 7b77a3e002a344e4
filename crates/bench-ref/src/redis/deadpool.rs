//! `deadpool-redis` as its README sets it up: a pool configured from the URL with the
//! defaults, a connection checked out for every call.

use deadpool_redis::{Config, Pool, Runtime};

use super::{CAS, commands};
use crate::harness::{Described, Peer, Res, Session};
use bench_ref::plan::Shape;

pub struct Deadpool {
    pool: Pool,
    cas: redis::Script,
}

impl Deadpool {
    /// Creates the pool for `url` and opens all its connections (before the clock starts).
    pub async fn connect(url: &str) -> Res<Deadpool> {
        let pool = Config::from_url(url)
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| format!("deadpool-redis cannot create the pool: {e}"))?;
        // Hold every connection the pool may open at once, so none is opened while timed.
        let mut held = Vec::new();
        for _ in 0..pool.status().max_size {
            held.push(checkout(&pool).await?);
        }
        drop(held);
        Ok(Deadpool {
            pool,
            cas: redis::Script::new(CAS),
        })
    }
}

async fn checkout(pool: &Pool) -> Res<deadpool_redis::Connection> {
    pool.get()
        .await
        .map_err(|e| format!("deadpool-redis cannot check out a connection: {e}"))
}

impl Described for Deadpool {
    fn describe(&self, shape: &Shape) -> String {
        let status = self.pool.status();
        format!(
            "{} tokio tasks sharing one deadpool-redis pool (default config: max {} \
             connections, {} open; one checkout per call, recycled with UNWATCH+PING)",
            shape.concurrency, status.max_size, status.size
        )
    }
}

impl Peer for Deadpool {
    type Session = DeadpoolSession;

    async fn session(&self) -> Res<DeadpoolSession> {
        Ok(DeadpoolSession {
            pool: self.pool.clone(),
            cas: self.cas.clone(),
        })
    }
}

pub struct DeadpoolSession {
    pool: Pool,
    cas: redis::Script,
}

impl Session for DeadpoolSession {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        commands::put(&mut checkout(&self.pool).await?, key, value).await
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        commands::get(&mut checkout(&self.pool).await?, key).await
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        commands::batch_put(&mut checkout(&self.pool).await?, keys, value).await
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        commands::batch_get(&mut checkout(&self.pool).await?, keys).await
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        commands::cas(&mut checkout(&self.pool).await?, &self.cas, key, old, new).await
    }
}
