//! sqlx with one dedicated `PgConnection` per task: no pool in between, the fastest a raw
//! sqlx user gets.

use std::sync::Arc;

use sqlx::{Connection, PgConnection};

use super::{Sql, err, sqlx_calls};
use crate::harness::{Described, Peer, Res, Session};
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
        sqlx_calls::put(&mut self.conn, &self.sql, key, value).await
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        sqlx_calls::get(&mut self.conn, &self.sql, key).await
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        sqlx_calls::batch_put(&mut self.conn, &self.sql, keys, value).await
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        sqlx_calls::batch_get(&mut self.conn, &self.sql, keys).await
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        sqlx_calls::cas(&mut self.conn, &self.sql, key, old, new).await
    }
}
