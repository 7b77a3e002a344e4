//! The `fred` crate as its README and pool examples set it up: a round-robin `Pool` of
//! clients (one connection each, commands auto-pipelined), `TCP_NODELAY` on, shared by every
//! task.

use fred::bytes::Bytes;
use fred::bytes_utils::Str;
use fred::prelude::{
    Builder, ClientLike, Config, Error, KeysInterface, LuaInterface, Pool, TcpConfig,
};

use super::CAS;
use crate::harness::{Described, Peer, Res, Session};
use bench_ref::plan::Shape;

fn ferr(what: &'static str) -> impl FnOnce(Error) -> String {
    move |e| format!("fred {what} failed: {e}")
}

pub struct Fred {
    pool: Pool,
    /// The SHA1 of [`CAS`], loaded once by `SCRIPT LOAD`.
    sha: Str,
}

impl Fred {
    /// Connects a pool of `size` clients to `url` and loads the compare-and-swap script.
    pub async fn connect(url: &str, size: usize) -> Res<Fred> {
        let config = Config::from_url(url).map_err(ferr("reading the URL"))?;
        let pool = Builder::from_config(config)
            .with_connection_config(|config| {
                config.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
            })
            .build_pool(size)
            .map_err(ferr("building the pool"))?;
        // The connection tasks run on their own; their handle is not needed.
        let _connections = pool.init().await.map_err(ferr("connecting"))?;
        let sha: String = pool.script_load(CAS).await.map_err(ferr("SCRIPT LOAD"))?;
        Ok(Fred {
            pool,
            sha: Str::from(sha),
        })
    }
}

impl Described for Fred {
    fn describe(&self, shape: &Shape) -> String {
        format!(
            "{} tokio tasks sharing one fred round-robin pool of {} clients (one auto-pipelined \
             connection each, TCP_NODELAY)",
            shape.concurrency,
            self.pool.size()
        )
    }
}

impl Peer for Fred {
    type Session = FredSession;

    async fn session(&self) -> Res<FredSession> {
        Ok(FredSession {
            pool: self.pool.clone(),
            sha: self.sha.clone(),
        })
    }
}

pub struct FredSession {
    pool: Pool,
    sha: Str,
}

impl Session for FredSession {
    async fn put(&mut self, key: &str, value: &[u8]) -> Res<()> {
        self.pool
            .set::<(), _, _>(key, value, None, None, false)
            .await
            .map_err(ferr("SET"))
    }

    async fn get(&mut self, key: &str) -> Res<()> {
        let value: Option<Bytes> = self.pool.get(key).await.map_err(ferr("GET"))?;
        std::hint::black_box(value);
        Ok(())
    }

    async fn batch_put(&mut self, keys: &[String], value: &[u8]) -> Res<()> {
        let pipeline = self.pool.next().pipeline();
        for k in keys {
            // Only queues the command; `all` sends the pipeline.
            pipeline
                .set::<(), _, _>(k.as_str(), value, None, None, false)
                .await
                .map_err(ferr("queueing SET"))?;
        }
        pipeline.all::<()>().await.map_err(ferr("pipelined SET"))
    }

    async fn batch_get(&mut self, keys: &[String]) -> Res<()> {
        let values: Vec<Option<Bytes>> = self
            .pool
            .mget(keys.iter().map(String::as_str).collect::<Vec<_>>())
            .await
            .map_err(ferr("MGET"))?;
        std::hint::black_box(values);
        Ok(())
    }

    async fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> Res<bool> {
        let swapped: i64 = self
            .pool
            .evalsha(self.sha.clone(), key, [old, new])
            .await
            .map_err(ferr("EVALSHA"))?;
        Ok(swapped == 1)
    }
}
