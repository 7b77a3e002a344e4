//! `deadpool-postgres` over `tokio-postgres` (NoTls), set up as its README shows: a
//! `Manager` on the parsed URL with `RecyclingMethod::Fast`, a `Pool` of bounded size, and
//! on every call `pool.get()` then `prepare_cached` and the query on the checked-out client.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{NoTls, Statement};

use super::{Sql, err, tokio_calls};
use crate::harness::{Described, Peer, Res, Session};
use bench_ref::plan::Shape;

pub struct Deadpool {
    pool: Pool,
    max_size: u32,
    sql: Arc<Sql>,
}

impl Deadpool {
    /// Builds the pool; like every deadpool pool it connects lazily, on the first `get`.
    pub fn new(url: &str, sql: Arc<Sql>, max_size: u32) -> Res<Deadpool> {
        let config: tokio_postgres::Config = url.parse().map_err(err("parsing the URL"))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_size as usize)
            .build()
            .map_err(err("building the deadpool pool"))?;
        Ok(Deadpool {
            pool,
            max_size,
            sql,
        })
    }

    /// Closes the pool and its connections.
    pub fn close(&self) {
        self.pool.close();
    }
}

impl Described for Deadpool {
    fn describe(&self, shape: &Shape) -> String {
        format!(
            "{} tokio tasks sharing one deadpool-postgres Pool (max_size {}, RecyclingMethod::Fast, \
             tokio-postgres NoTls), pool.get() + prepare_cached per call",
            shape.concurrency, self.max_size
        )
    }
}

impl Peer for Deadpool {
    type Session = DeadpoolSession;

    async fn session(&self) -> Res<DeadpoolSession> {
        Ok(DeadpoolSession {
            pool: self.pool.clone(),
            sql: self.sql.clone(),
        })
    }
}

pub struct DeadpoolSession {
    pool: Pool,
    sql: Arc<Sql>,
}

impl DeadpoolSession {
    /// A pooled client and `sql` prepared on it (cached per connection).
    async fn prepared(&self, sql: &str) -> Res<(deadpool_postgres::Client, Statement)> {
        let client = self.pool.get().await.map_err(err("pool get"))?;
        let stmt = client.prepare_cached(sql).await.map_err(err("prepare"))?;
        Ok((client, stmt))
    }
}

impl Session for DeadpoolSession {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        let (client, stmt) = self.prepared(&self.sql.put).await?;
        tokio_calls::put(&client, &stmt, key, value).await
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        let (client, stmt) = self.prepared(&self.sql.get).await?;
        tokio_calls::get(&client, &stmt, key).await
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        let (client, stmt) = self.prepared(&self.sql.batch_put).await?;
        tokio_calls::batch_put(&client, &stmt, keys, value).await
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        let (client, stmt) = self.prepared(&self.sql.batch_get).await?;
        tokio_calls::batch_get(&client, &stmt, keys).await
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        let (client, stmt) = self.prepared(&self.sql.cas).await?;
        tokio_calls::cas(&client, &stmt, key, old, new).await
    }
}
