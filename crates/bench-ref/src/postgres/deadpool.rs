//! `deadpool-postgres` over `tokio-postgres` (NoTls), set up as its README shows: a
//! `Manager` on the parsed URL with `RecyclingMethod::Fast`, a `Pool` of bounded size, and
//! on every call `pool.get()` then `prepare_cached` and the query on the checked-out client.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{Described, Sql, as_bytes, err, unique_sorted};
use crate::harness::{Peer, Res, Session};
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
    async fn client(&self) -> Res<deadpool_postgres::Client> {
        self.pool.get().await.map_err(err("pool get"))
    }
}

impl Session for DeadpoolSession {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.put)
            .await
            .map_err(err("prepare put"))?;
        client
            .execute(
                &stmt,
                &[
                    &key.as_bytes(),
                    &value,
                    &None::<serde_json::Value>,
                    &None::<f64>,
                ],
            )
            .await
            .map_err(err("put"))?;
        Ok(())
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.get)
            .await
            .map_err(err("prepare get"))?;
        let row = client
            .query_opt(&stmt, &[&key.as_bytes()])
            .await
            .map_err(err("get"))?;
        std::hint::black_box(row);
        Ok(())
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        let keys = unique_sorted(keys);
        let values: Vec<&[u8]> = keys.iter().map(|_| value).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.batch_put)
            .await
            .map_err(err("prepare batch put"))?;
        client
            .execute(&stmt, &[&keys, &values, &None::<f64>])
            .await
            .map_err(err("batch put"))?;
        Ok(())
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        let keys = as_bytes(keys);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.batch_get)
            .await
            .map_err(err("prepare batch get"))?;
        let rows = client
            .query(&stmt, &[&keys])
            .await
            .map_err(err("batch get"))?;
        std::hint::black_box(rows);
        Ok(())
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&self.sql.cas)
            .await
            .map_err(err("prepare cas"))?;
        let done = client
            .execute(&stmt, &[&key.as_bytes(), &new, &old, &None::<f64>])
            .await
            .map_err(err("cas"))?;
        Ok(done == 1)
    }
}
