//! The measuring loop every network client shares: workers, barrier, timing, histograms.
//!
//! An engine module describes a client as a [`Peer`] (how a worker gets its handle) and a
//! [`Session`] (the five calls on that handle); [`run_ops`] runs the workload's operations
//! on it exactly as `statectl bench` runs them on ours: the same workers, keys and values,
//! the keyspace filled once before the first read, every call timed into a histogram.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bench_ref::plan::{self, MIXED_PUT_PERCENT, Op, Shape, Worker, Workload};
use bench_ref::report::{Latencies, OpResult, process_cpu_time};

pub type Res<T> = Result<T, String>;

/// A client library as its README has users set it up, shared by every worker task.
pub trait Peer: Send + Sync + 'static {
    /// What one worker task holds: a clone of a shared connection, a handle on a pool, or a
    /// connection of its own.
    type Session: Session;

    /// A new worker handle (made before the clock starts).
    fn session(&self) -> impl Future<Output = Res<Self::Session>> + Send;
}

/// What a report says about how a peer ran (its pool or connection count, say).
pub trait Described: Peer {
    fn describe(&self, shape: &Shape) -> String;
}

/// The calls of the benchmark on one worker's handle. Reads drop their values through
/// `black_box`, so no peer skips decoding.
pub trait Session: Send + 'static {
    /// Writes `value` under `key`.
    fn put(&mut self, key: &str, value: &[u8]) -> impl Future<Output = Res<()>> + Send;
    /// Reads `key`.
    fn get(&mut self, key: &str) -> impl Future<Output = Res<()>> + Send;
    /// Writes `value` under every key, as one call (keys may repeat).
    fn batch_put(&mut self, keys: &[String], value: &[u8]) -> impl Future<Output = Res<()>> + Send;
    /// Reads every key, as one call.
    fn batch_get(&mut self, keys: &[String]) -> impl Future<Output = Res<()>> + Send;
    /// Replaces `old` by `new` under `key`; whether it did.
    fn cas(&mut self, key: &str, old: &[u8], new: &[u8]) -> impl Future<Output = Res<bool>> + Send;
}

/// What every worker reads: the run's key prefix and the two values.
struct Ctx {
    prefix: String,
    value: Vec<u8>,
    alt_value: Vec<u8>,
}

/// Runs each operation of `workload` on `peer` with `shape.concurrency` sessions (kept
/// from one operation to the next), filling the keyspace under `prefix` before the first
/// read; one result row per operation.
pub async fn run_ops<P: Peer>(
    peer: &P,
    shape: &Shape,
    workload: Workload,
    prefix: &str,
) -> Res<Vec<OpResult>> {
    let ctx = Arc::new(Ctx {
        prefix: prefix.to_owned(),
        value: shape.value(),
        alt_value: shape.alt_value(),
    });
    let template = Latencies::new()?;
    let mut sessions = Vec::new();
    for _ in 0..shape.concurrency {
        sessions.push(peer.session().await?);
    }
    let mut results = Vec::new();
    let mut filled = false;
    for op in workload.ops() {
        if op.needs_fill() && !filled {
            let first = sessions.first_mut().ok_or("no sessions")?;
            fill(first, shape, &ctx).await?;
            filled = true;
        }
        let workers = shape.workers(op);
        let barrier = Arc::new(tokio::sync::Barrier::new(workers.len() + 1));
        let mut handles = Vec::new();
        for (w, mut session) in workers.into_iter().zip(sessions.drain(..)) {
            let (barrier, ctx, mut lat) = (barrier.clone(), ctx.clone(), template.clone());
            handles.push(tokio::spawn(async move {
                barrier.wait().await;
                let outcome = worker(&mut session, &ctx, op, w, &mut lat).await;
                (session, outcome.map(|()| lat))
            }));
        }
        let cpu_before = process_cpu_time();
        barrier.wait().await;
        let started = Instant::now();
        let mut latencies = template.clone();
        let mut first_error = None;
        for h in handles {
            match h.await {
                Ok((session, outcome)) => {
                    sessions.push(session);
                    match outcome {
                        Ok(lat) => latencies.merge(&lat)?,
                        Err(e) => {
                            first_error.get_or_insert(e);
                        }
                    }
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
        // Workers beyond the op's count (cas on a tiny keyspace) kept their sessions idle.
        while (sessions.len() as u64) < shape.concurrency {
            sessions.push(peer.session().await?);
        }
        results.push(OpResult::new(op, shape, elapsed, latencies, cpu_before));
    }
    Ok(results)
}

/// Bytes of values per fill call at most: large values in the plan's chunks would make one
/// call big enough to run into a client's response timeout.
const FILL_BYTES: u64 = 4 << 20;

async fn fill<S: Session>(session: &mut S, shape: &Shape, ctx: &Ctx) -> Res<()> {
    let per_call = (FILL_BYTES / shape.value_size.max(1)).max(1) as usize;
    for chunk in shape.fill_chunks() {
        let keys: Vec<String> = chunk.map(|i| plan::key(&ctx.prefix, i)).collect();
        for part in keys.chunks(per_call) {
            session.batch_put(part, &ctx.value).await?;
        }
    }
    Ok(())
}

async fn worker<S: Session>(
    session: &mut S,
    ctx: &Ctx,
    op: Op,
    mut w: Worker,
    lat: &mut Latencies,
) -> Res<()> {
    let mut key = String::new();
    let mut keys: Vec<String> = vec![String::new(); w.keys_per_call as usize];
    for _ in 0..w.calls {
        let t = Instant::now();
        match op {
            Op::Put => {
                plan::key_into(&mut key, &ctx.prefix, w.picker.next_index());
                session.put(&key, &ctx.value).await?;
            }
            Op::Get => {
                plan::key_into(&mut key, &ctx.prefix, w.picker.next_index());
                session.get(&key).await?;
            }
            Op::Mixed => {
                let is_put = w.picker.chance(MIXED_PUT_PERCENT);
                plan::key_into(&mut key, &ctx.prefix, w.picker.next_index());
                if is_put {
                    session.put(&key, &ctx.value).await?;
                } else {
                    session.get(&key).await?;
                }
            }
            Op::BatchPut => {
                for k in keys.iter_mut() {
                    plan::key_into(k, &ctx.prefix, w.picker.next_index());
                }
                session.batch_put(&keys, &ctx.value).await?;
            }
            Op::BatchGet => {
                for k in keys.iter_mut() {
                    plan::key_into(k, &ctx.prefix, w.picker.next_index());
                }
                session.batch_get(&keys).await?;
            }
            Op::Cas => {
                let (index, flipped) = w.next_cas().ok_or("a cas worker has no keys")?;
                plan::key_into(&mut key, &ctx.prefix, index);
                let (old, new) = if flipped {
                    (&ctx.alt_value, &ctx.value)
                } else {
                    (&ctx.value, &ctx.alt_value)
                };
                if !session.cas(&key, old, new).await? {
                    return Err(format!("cas found an unexpected value under {key}"));
                }
            }
        }
        lat.record(t.elapsed());
    }
    Ok(())
}
