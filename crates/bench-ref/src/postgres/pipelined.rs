//! `tokio-postgres` (NoTls) tuned for throughput: a few connections, each `Client` shared
//! (`Arc`) by the tasks assigned to it round-robin, the statements prepared once per
//! connection. tokio-postgres pipelines the concurrent queries of one client: each is sent
//! without waiting for the replies of those before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_postgres::{Client, NoTls, Statement};

use super::{Sql, err, tokio_calls};
use crate::harness::{Described, Peer, Res, Session};
use bench_ref::plan::Shape;

/// One connection and its prepared statements.
struct Conn {
    client: Client,
    put: Statement,
    get: Statement,
    batch_put: Statement,
    batch_get: Statement,
    cas: Statement,
}

impl Conn {
    async fn open(url: &str, sql: &Sql) -> Res<Conn> {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .map_err(err("connect"))?;
        // The connection's I/O runs on a task of its own; it ends when the client is dropped.
        // An error there fails every query on the client, which reports it.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("bench-ref: postgres connection failed: {e}");
            }
        });
        let prepare = async |text: &str| client.prepare(text).await.map_err(err("prepare"));
        let put = prepare(&sql.put).await?;
        let get = prepare(&sql.get).await?;
        let batch_put = prepare(&sql.batch_put).await?;
        let batch_get = prepare(&sql.batch_get).await?;
        let cas = prepare(&sql.cas).await?;
        Ok(Conn {
            client,
            put,
            get,
            batch_put,
            batch_get,
            cas,
        })
    }
}

pub struct Pipelined {
    conns: Vec<Arc<Conn>>,
    next: AtomicUsize,
}

impl Pipelined {
    /// Opens `connections` connections and prepares the statements on each.
    pub async fn connect(url: &str, sql: &Sql, connections: u64) -> Res<Pipelined> {
        let mut conns = Vec::new();
        for _ in 0..connections.max(1) {
            conns.push(Arc::new(Conn::open(url, sql).await?));
        }
        Ok(Pipelined {
            conns,
            next: AtomicUsize::new(0),
        })
    }
}

impl Described for Pipelined {
    fn describe(&self, shape: &Shape) -> String {
        format!(
            "{} tokio tasks over {} tokio-postgres connections (NoTls), each Client shared by \
             its tasks (round-robin), statements prepared once per connection, queries pipelined",
            shape.concurrency,
            self.conns.len()
        )
    }
}

impl Peer for Pipelined {
    type Session = PipelinedSession;

    async fn session(&self) -> Res<PipelinedSession> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len().max(1);
        let conn = self.conns.get(i).ok_or("no postgres connections")?.clone();
        Ok(PipelinedSession { conn })
    }
}

pub struct PipelinedSession {
    conn: Arc<Conn>,
}

impl Session for PipelinedSession {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        tokio_calls::put(&self.conn.client, &self.conn.put, key, value).await
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        tokio_calls::get(&self.conn.client, &self.conn.get, key).await
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        tokio_calls::batch_put(&self.conn.client, &self.conn.batch_put, keys, value).await
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        tokio_calls::batch_get(&self.conn.client, &self.conn.batch_get, keys).await
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        tokio_calls::cas(&self.conn.client, &self.conn.cas, key, old, new).await
    }
}
