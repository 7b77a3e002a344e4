//! `bb8` with `bb8-redis` as their docs set them up: a pool with the default builder over a
//! `RedisConnectionManager` (multiplexed connections of the `redis` crate), a connection
//! checked out for every call.

use bb8_redis::RedisConnectionManager;
use bb8_redis::bb8::{Pool, PooledConnection};

use super::{CAS, commands, err};
use crate::harness::{Described, Peer, Res, Session};
use bench_ref::plan::Shape;

/// bb8's default `Builder::max_size` (the pool does not expose it).
const DEFAULT_MAX_SIZE: u32 = 10;

pub struct Bb8 {
    pool: Pool<RedisConnectionManager>,
    cas: redis::Script,
}

impl Bb8 {
    /// Builds the pool for `url` and opens all its connections (before the clock starts).
    pub async fn connect(url: &str) -> Res<Bb8> {
        let manager = RedisConnectionManager::new(url).map_err(err("reading the URL"))?;
        let pool = Pool::builder()
            .build(manager)
            .await
            .map_err(err("building the bb8 pool"))?;
        // Hold every connection the pool may open at once, so none is opened while timed.
        let mut held = Vec::new();
        for _ in 0..DEFAULT_MAX_SIZE {
            held.push(checkout(&pool).await?);
        }
        drop(held);
        Ok(Bb8 {
            pool,
            cas: redis::Script::new(CAS),
        })
    }
}

async fn checkout(
    pool: &Pool<RedisConnectionManager>,
) -> Res<PooledConnection<'_, RedisConnectionManager>> {
    pool.get()
        .await
        .map_err(|e| format!("bb8 cannot check out a connection: {e}"))
}

impl Described for Bb8 {
    fn describe(&self, shape: &Shape) -> String {
        format!(
            "{} tokio tasks sharing one bb8 pool (default builder: max {} connections, {} open; \
             one checkout per call, tested with PING on checkout)",
            shape.concurrency,
            DEFAULT_MAX_SIZE,
            self.pool.state().connections
        )
    }
}

impl Peer for Bb8 {
    type Session = Bb8Session;

    async fn session(&self) -> Res<Bb8Session> {
        Ok(Bb8Session {
            pool: self.pool.clone(),
            cas: self.cas.clone(),
        })
    }
}

pub struct Bb8Session {
    pool: Pool<RedisConnectionManager>,
    cas: redis::Script,
}

impl Session for Bb8Session {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        commands::put(&mut *checkout(&self.pool).await?, key, value).await
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        commands::get(&mut *checkout(&self.pool).await?, key).await
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        commands::batch_put(&mut *checkout(&self.pool).await?, keys, value).await
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        commands::batch_get(&mut *checkout(&self.pool).await?, keys).await
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        commands::cas(&mut *checkout(&self.pool).await?, &self.cas, key, old, new).await
    }
}
