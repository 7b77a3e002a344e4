//! The `redis` crate's multiplexed connection: one connection, cloned into every task.

use redis::aio::MultiplexedConnection;

use super::{CAS, err};
use crate::harness::{Described, Peer, Res, Session};
use bench_ref::plan::Shape;

pub struct Multiplexed {
    conn: MultiplexedConnection,
    cas: redis::Script,
}

impl Multiplexed {
    pub fn new(conn: MultiplexedConnection) -> Multiplexed {
        Multiplexed {
            conn,
            cas: redis::Script::new(CAS),
        }
    }
}

impl Described for Multiplexed {
    fn describe(&self, shape: &Shape) -> String {
        format!(
            "{} tokio tasks on one multiplexed connection",
            shape.concurrency
        )
    }
}

impl Peer for Multiplexed {
    type Session = MultiplexedSession;

    async fn session(&self) -> Res<MultiplexedSession> {
        Ok(MultiplexedSession {
            conn: self.conn.clone(),
            cas: self.cas.clone(),
        })
    }
}

pub struct MultiplexedSession {
    conn: MultiplexedConnection,
    cas: redis::Script,
}

impl Session for MultiplexedSession {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(err("SET"))
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn)
            .await
            .map_err(err("GET"))?;
        std::hint::black_box(value);
        Ok(())
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.set(k.as_str(), value).ignore();
        }
        pipe.query_async::<()>(&mut self.conn)
            .await
            .map_err(err("pipelined SET"))
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut self.conn)
            .await
            .map_err(err("MGET"))?;
        std::hint::black_box(values);
        Ok(())
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        let swapped: i64 = self
            .cas
            .key(key)
            .arg(old)
            .arg(new)
            .invoke_async(&mut self.conn)
            .await
            .map_err(err("EVALSHA"))?;
        Ok(swapped == 1)
    }
}
