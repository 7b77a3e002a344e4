//! sqlx with one dedicated `PgConnection` per task: no pool in between, the fastest a raw
//! sqlx user gets.

use std::sync::Arc;

use sqlx::{Connection, PgConnection};

use super::{Described, Sql, as_bytes, err, unique_sorted};
use crate::harness::{Peer, Res, Session};
use bench_ref::plan::Shape;

pub struct Dedicated {
    url: String,
    sql: Arc<Sql>,
}

impl Dedicated {
    pub fn new(url: &str, sql: Arc<Sql>) -> Dedicated {
        Dedicated {
            url: url.to_owned(),
            sql,
        }
    }
}

impl Described for Dedicated {
    fn describe(&self, shape: &Shape) -> String {
        format!(
            "{} tokio tasks, each with a dedicated sqlx PgConnection",
            shape.concurrency
        )
    }
}

impl Peer for Dedicated {
    type Session = DedicatedSession;

    async fn session(&self) -> Res<DedicatedSession> {
        Ok(DedicatedSession {
            conn: PgConnection::connect(&self.url)
                .await
                .map_err(err("connect"))?,
            sql: self.sql.clone(),
        })
    }
}

pub struct DedicatedSession {
    conn: PgConnection,
    sql: Arc<Sql>,
}

impl Session for DedicatedSession {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        sqlx::query(sqlx::AssertSqlSafe(self.sql.put.clone()))
            .bind(key.as_bytes())
            .bind(value)
            .bind(None::<serde_json::Value>)
            .bind(None::<f64>)
            .execute(&mut self.conn)
            .await
            .map_err(err("put"))?;
        Ok(())
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.sql.get.clone()))
            .bind(key.as_bytes())
            .fetch_optional(&mut self.conn)
            .await
            .map_err(err("get"))?;
        std::hint::black_box(row);
        Ok(())
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        let keys = unique_sorted(keys);
        let values: Vec<&[u8]> = keys.iter().map(|_| value).collect();
        sqlx::query(sqlx::AssertSqlSafe(self.sql.batch_put.clone()))
            .bind(&keys)
            .bind(&values)
            .bind(None::<f64>)
            .execute(&mut self.conn)
            .await
            .map_err(err("batch put"))?;
        Ok(())
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql.batch_get.clone()))
            .bind(as_bytes(keys))
            .fetch_all(&mut self.conn)
            .await
            .map_err(err("batch get"))?;
        std::hint::black_box(rows);
        Ok(())
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        let done = sqlx::query(sqlx::AssertSqlSafe(self.sql.cas.clone()))
            .bind(key.as_bytes())
            .bind(new)
            .bind(old)
            .bind(None::<f64>)
            .execute(&mut self.conn)
            .await
            .map_err(err("cas"))?;
        Ok(done.rows_affected() == 1)
    }
}
