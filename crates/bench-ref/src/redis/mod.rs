//! `bench-ref redis`: the workloads on the Redis clients a user would pick instead of ours.
//!
//! `--client` picks the peer, each set up the way its README recommends:
//! - `multiplexed` (the default): the `redis` crate's one multiplexed connection, cloned
//!   into every task, so the server sees the same pipelining as from one client.
//! - `fred`: the `fred` crate's round-robin `Pool` of auto-pipelining clients
//!   (`--fred-pool-size`, 1 by default: the README's one client; its axum and actix
//!   examples use 8, which measured slower here, each client's router task taking CPU
//!   from the others on 2 cores), `TCP_NODELAY` on as in its README; the script loaded
//!   once by `SCRIPT LOAD`, then `EVALSHA`.
//! - `deadpool`: a `deadpool-redis` pool from the URL with the default config (2 × the CPU
//!   count connections at most), one checkout per call.
//! - `bb8`: a `bb8` pool with the default builder (10 connections at most) over
//!   `bb8-redis`'s manager, one checkout per call (bb8 PINGs each checkout by default).
//!
//! The pools are filled before the clock starts.
//!
//! The commands are those a careful user would pick and that `state-redis` sends: `SET`,
//! `GET`, a pipeline of `SET`s per batch, one `MGET` per batch, and compare-and-swap as a
//! Lua script by `EVALSHA`.

mod bb8;
mod commands;
mod deadpool;
mod fred;
mod multiplexed;

use clap::{Args, ValueEnum};
use redis::aio::MultiplexedConnection;

use crate::harness::{self, Described, Res};
use bench_ref::plan::{self, ShapeArgs};
use bench_ref::report::{OpResult, Report, redacted};

/// Options of `bench-ref redis`.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// The server: `redis://[user:pass@]host:port[/db]` (the run's keys are removed at the
    /// end; nothing else is touched).
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// The client library, used the way its README recommends.
    #[arg(long, value_enum, default_value_t = RedisClient::Multiplexed)]
    pub client: RedisClient,
    /// `--client fred` only: the number of clients (connections) in its pool.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    pub fred_pool_size: u16,
    /// The workload and its shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// The Redis clients `bench-ref redis` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisClient {
    /// The `redis` crate: one multiplexed connection shared by every task.
    Multiplexed,
    /// The `fred` crate: a round-robin pool of auto-pipelining clients.
    Fred,
    /// `deadpool-redis`: a pool of the `redis` crate's connections, one checkout per call.
    Deadpool,
    /// `bb8-redis`: a bb8 pool of the `redis` crate's connections, one checkout per call.
    Bb8,
}

fn err(what: &'static str) -> impl FnOnce(redis::RedisError) -> String {
    move |e| format!("redis {what} failed: {e}")
}

/// The compare-and-swap script: the same logic `state-redis` runs.
const CAS: &str = "local cur = redis.call('GET', KEYS[1]) \
    if cur ~= ARGV[1] then return 0 end \
    redis.call('SET', KEYS[1], ARGV[2]) return 1";

/// Runs the workload and returns the report.
pub fn run(args: &RedisArgs) -> Res<Report> {
    bench_ref::block_on(run_async(args))
}

async fn run_async(args: &RedisArgs) -> Res<Report> {
    let shown = redacted(&args.url);
    let client = redis::Client::open(args.url.as_str())
        .map_err(|e| format!("bad Redis URL {shown}: {e}"))?;
    // The run's keys are removed through a connection of the `redis` crate, whichever
    // client is measured.
    let mut admin = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
    let shape = args.shape.shape();
    let prefix = plan::run_prefix();
    let workload = args.shape.workload;
    // Nothing is written before a peer is ready, so a peer that cannot connect leaves no
    // keys behind.
    let (outcome, execution) = match args.client {
        RedisClient::Multiplexed => {
            let peer = multiplexed::Multiplexed::new(admin.clone());
            measure(&peer, &shape, workload, &prefix).await
        }
        RedisClient::Fred => {
            let peer = fred::Fred::connect(&args.url, args.fred_pool_size.into()).await?;
            measure(&peer, &shape, workload, &prefix).await
        }
        RedisClient::Deadpool => {
            let peer = deadpool::Deadpool::connect(&args.url).await?;
            measure(&peer, &shape, workload, &prefix).await
        }
        RedisClient::Bb8 => {
            let peer = bb8::Bb8::connect(&args.url).await?;
            measure(&peer, &shape, workload, &prefix).await
        }
    };
    let cleanup = cleanup(&mut admin, &prefix).await;
    let results = outcome?;
    cleanup?;
    Ok(Report {
        tool: "bench-ref redis".into(),
        url: shown,
        shape,
        execution,
        results,
    })
}

/// Runs the workload on `peer`; the results and how the peer ran.
async fn measure<P: Described>(
    peer: &P,
    shape: &plan::Shape,
    workload: plan::Workload,
    prefix: &str,
) -> (Res<Vec<OpResult>>, String) {
    let outcome = harness::run_ops(peer, shape, workload, prefix).await;
    (outcome, peer.describe(shape))
}

/// Removes the run's keys (`SCAN MATCH prefix*`, `DEL`).
async fn cleanup(conn: &mut MultiplexedConnection, prefix: &str) -> Res<()> {
    let pattern = format!("{prefix}*");
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .map_err(err("SCAN"))?;
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<()>(conn)
                .await
                .map_err(err("DEL"))?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
