//! `bench-ref redis`: the workloads as a plain loop over the raw `redis` crate.
//!
//! Every worker is a tokio task and all of them share ONE multiplexed connection (what a
//! raw redis-rs user writes), so the server sees the same pipelining as from one client.
//! The commands are those a careful user would pick and that `state-redis` sends: `SET`,
//! `GET`, a pipeline of `SET`s per batch, one `MGET` per batch, and compare-and-swap as a
//! Lua script by `EVALSHA`.

use std::time::Instant;

use clap::Args;
use redis::aio::MultiplexedConnection;

use bench_ref::plan::{self, MIXED_PUT_PERCENT, Op, Shape, ShapeArgs, Worker};
use bench_ref::report::{Latencies, OpResult, Report, process_cpu_time, redacted};

/// Options of `bench-ref redis`.
#[derive(Debug, Args)]
pub struct RedisArgs {
    /// The server: `redis://[user:pass@]host:port[/db]` (the run's keys are removed at the
    /// end; nothing else is touched).
    #[arg(long, value_name = "URL", default_value = "redis://127.0.0.1:6379")]
    pub url: String,
    /// The workload and its shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

type Res<T> = Result<T, String>;

fn err(what: &'static str) -> impl FnOnce(redis::RedisError) -> String {
    move |e| format!("redis {what} failed: {e}")
}

/// The compare-and-swap script: the same logic `state-redis` runs.
const CAS: &str = "local cur = redis.call('GET', KEYS[1]) \
    if cur ~= ARGV[1] then return 0 end \
    redis.call('SET', KEYS[1], ARGV[2]) return 1";

#[derive(Clone)]
struct Bench {
    conn: MultiplexedConnection,
    prefix: String,
    value: Vec<u8>,
    alt_value: Vec<u8>,
    cas: redis::Script,
}

/// Runs the workload and returns the report.
pub fn run(args: &RedisArgs) -> Res<Report> {
    bench_ref::block_on(run_async(args))
}

async fn run_async(args: &RedisArgs) -> Res<Report> {
    let shown = redacted(&args.url);
    let client = redis::Client::open(args.url.as_str())
        .map_err(|e| format!("bad Redis URL {shown}: {e}"))?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
    let shape = args.shape.shape();
    let bench = Bench {
        conn,
        prefix: plan::run_prefix(),
        value: shape.value(),
        alt_value: shape.alt_value(),
        cas: redis::Script::new(CAS),
    };
    let template = Latencies::new()?;
    let mut results = Vec::new();
    let mut filled = false;
    let mut outcome = Ok(());
    for op in args.shape.workload.ops() {
        if op.needs_fill() && !filled {
            if let Err(e) = bench.fill(&shape).await {
                outcome = Err(e);
                break;
            }
            filled = true;
        }
        match bench.measure(op, &shape, &template).await {
            Ok(result) => results.push(result),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let cleanup = bench.cleanup().await;
    outcome?;
    cleanup?;
    Ok(Report {
        tool: "bench-ref redis".into(),
        url: shown,
        shape,
        execution: format!(
            "{} tokio tasks on one multiplexed connection",
            shape.concurrency
        ),
        results,
    })
}

impl Bench {
    async fn fill(&self, shape: &Shape) -> Res<()> {
        let mut conn = self.conn.clone();
        for chunk in shape.fill_chunks() {
            let mut pipe = redis::pipe();
            for i in chunk {
                pipe.set(plan::key(&self.prefix, i), &self.value[..])
                    .ignore();
            }
            pipe.query_async::<()>(&mut conn)
                .await
                .map_err(err("fill"))?;
        }
        Ok(())
    }

    async fn cleanup(&self) -> Res<()> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}*", self.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(err("SCAN"))?;
            if !keys.is_empty() {
                redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await
                    .map_err(err("DEL"))?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    async fn measure(&self, op: Op, shape: &Shape, template: &Latencies) -> Res<OpResult> {
        let workers = shape.workers(op);
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(workers.len() + 1));
        let handles: Vec<_> = workers
            .into_iter()
            .map(|w| {
                let (bench, barrier, mut lat) = (self.clone(), barrier.clone(), template.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    bench.worker(op, w, &mut lat).await.map(|()| lat)
                })
            })
            .collect();
        let cpu_before = process_cpu_time();
        barrier.wait().await;
        let started = Instant::now();
        let mut latencies = template.clone();
        let mut first_error = None;
        for h in handles {
            match h.await {
                Ok(Ok(lat)) => latencies.merge(&lat)?,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(format!("a benchmark task failed: {e}"));
                }
            }
        }
        let elapsed = started.elapsed();
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(OpResult::new(op, shape, elapsed, latencies, cpu_before))
    }

    async fn worker(&self, op: Op, mut w: Worker, lat: &mut Latencies) -> Res<()> {
        let mut conn = self.conn.clone();
        let mut key = String::new();
        let mut keys: Vec<String> = vec![String::new(); w.keys_per_call as usize];
        for _ in 0..w.calls {
            let t = Instant::now();
            match op {
                Op::Put => {
                    plan::key_into(&mut key, &self.prefix, w.picker.next_index());
                    self.put(&mut conn, &key).await?;
                }
                Op::Get => {
                    plan::key_into(&mut key, &self.prefix, w.picker.next_index());
                    self.get(&mut conn, &key).await?;
                }
                Op::Mixed => {
                    let is_put = w.picker.chance(MIXED_PUT_PERCENT);
                    plan::key_into(&mut key, &self.prefix, w.picker.next_index());
                    if is_put {
                        self.put(&mut conn, &key).await?;
                    } else {
                        self.get(&mut conn, &key).await?;
                    }
                }
                Op::BatchPut => {
                    let mut pipe = redis::pipe();
                    for k in keys.iter_mut() {
                        plan::key_into(k, &self.prefix, w.picker.next_index());
                        pipe.set(k.as_str(), &self.value[..]).ignore();
                    }
                    pipe.query_async::<()>(&mut conn)
                        .await
                        .map_err(err("pipelined SET"))?;
                }
                Op::BatchGet => {
                    for k in keys.iter_mut() {
                        plan::key_into(k, &self.prefix, w.picker.next_index());
                    }
                    let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                        .arg(&keys)
                        .query_async(&mut conn)
                        .await
                        .map_err(err("MGET"))?;
                    std::hint::black_box(values);
                }
                Op::Cas => {
                    let (index, flipped) = w.next_cas().ok_or("a cas worker has no keys")?;
                    plan::key_into(&mut key, &self.prefix, index);
                    let (old, new) = if flipped {
                        (&self.alt_value, &self.value)
                    } else {
                        (&self.value, &self.alt_value)
                    };
                    let swapped: i64 = self
                        .cas
                        .key(key.as_str())
                        .arg(&old[..])
                        .arg(&new[..])
                        .invoke_async(&mut conn)
                        .await
                        .map_err(err("EVALSHA"))?;
                    if swapped != 1 {
                        return Err(format!("cas found an unexpected value under {key}"));
                    }
                }
            }
            lat.record(t.elapsed());
        }
        Ok(())
    }

    async fn put(&self, conn: &mut MultiplexedConnection, key: &str) -> Res<()> {
        redis::cmd("SET")
            .arg(key)
            .arg(&self.value[..])
            .query_async::<()>(conn)
            .await
            .map_err(err("SET"))
    }

    async fn get(&self, conn: &mut MultiplexedConnection, key: &str) -> Res<()> {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(key)
            .query_async(conn)
            .await
            .map_err(err("GET"))?;
        std::hint::black_box(value);
        Ok(())
    }
}
