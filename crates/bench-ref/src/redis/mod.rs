//! `bench-ref redis`: the workloads on the Redis clients a user would pick instead of ours.
//!
//! `--client` picks the peer, each set up the way its README recommends:
//! - `multiplexed` (the default): the `redis` crate's one multiplexed connection, cloned
//!   into every task, so the server sees the same pipelining as from one client.
//!
//! The commands are those a careful user would pick and that `state-redis` sends: `SET`,
//! `GET`, a pipeline of `SET`s per batch, one `MGET` per batch, and compare-and-swap as a
//! Lua script by `EVALSHA`.

mod multiplexed;

use clap::{Args, ValueEnum};
use redis::aio::MultiplexedConnection;

use crate::harness::{self, Peer, Res};
use bench_ref::plan::{self, ShapeArgs};
use bench_ref::report::{Report, redacted};

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
    /// The workload and its shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// The Redis clients `bench-ref redis` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisClient {
    /// The `redis` crate: one multiplexed connection shared by every task.
    Multiplexed,
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
    let (outcome, execution) = match args.client {
        RedisClient::Multiplexed => {
            let peer = multiplexed::Multiplexed::new(admin.clone());
            (
                harness::run_ops(&peer, &shape, workload, &prefix).await,
                peer.describe(&shape),
            )
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

/// What a report says about how a peer ran.
trait Described: Peer {
    fn describe(&self, shape: &plan::Shape) -> String;
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
