//! sqlx's `PgPool`, as most sqlx users write it: `PgPoolOptions::new().max_connections(N)`
//! with every other option at its default (so `test_before_acquire`: a ping whenever an idle
//! connection is checked out), every statement run on `&pool`.

use std::sync::Arc;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::{Sql, err, sqlx_calls};
use crate::harness::{Described, Peer, Res, Session};
use bench_ref::plan::Shape;

pub struct Pooled {
    pool: PgPool,
    max_connections: u32,
    sql: Arc<Sql>,
}

impl Pooled {
    /// Opens the pool (and its first connection, so a bad URL fails here).
    pub async fn connect(url: &str, sql: Arc<Sql>, max_connections: u32) -> Res<Pooled> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect(url)
            .await
            .map_err(err("connect (pool)"))?;
        Ok(Pooled {
            pool,
            max_connections,
            sql,
        })
    }

    /// Closes the pool's connections (so none lingers while the schema is dropped).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Described for Pooled {
    fn describe(&self, shape: &Shape) -> String {
        format!(
            "{} tokio tasks sharing one sqlx PgPool (max_connections {}, other options default: \
             test_before_acquire pings on checkout), one checkout per statement",
            shape.concurrency, self.max_connections
        )
    }
}

impl Peer for Pooled {
    type Session = PooledSession;

    async fn session(&self) -> Res<PooledSession> {
        Ok(PooledSession {
            pool: self.pool.clone(),
            sql: self.sql.clone(),
        })
    }
}

pub struct PooledSession {
    pool: PgPool,
    sql: Arc<Sql>,
}

impl Session for PooledSession {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        sqlx_calls::put(&self.pool, &self.sql, key, value).await
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        sqlx_calls::get(&self.pool, &self.sql, key).await
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        sqlx_calls::batch_put(&self.pool, &self.sql, keys, value).await
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        sqlx_calls::batch_get(&self.pool, &self.sql, keys).await
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        sqlx_calls::cas(&self.pool, &self.sql, key, old, new).await
    }
}
