//! `bench-ref redb`: the workloads as a plain loop over the raw redb API.
//!
//! Each worker is an OS thread (what a raw redb user without an async runtime writes), all
//! sharing one `Database`. One read transaction per `get`, one write transaction per `put`
//! or `cas`, one transaction per batch. Keys and values are stored as raw bytes in one table.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Barrier;
use std::time::Instant;

use clap::{Args, ValueEnum};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use bench_ref::plan::{self, MIXED_PUT_PERCENT, Op, Shape, ShapeArgs, Worker};
use bench_ref::report::{Latencies, OpResult, Report, process_cpu_time};

const TABLE: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("bench-ref");

/// Options of `bench-ref redb`.
#[derive(Debug, Args)]
pub struct RedbArgs {
    /// The database file (created if absent; the run's keys are removed at the end).
    #[arg(long, value_name = "P")]
    pub path: PathBuf,
    /// Commit durability: `immediate` (fsync per commit, redb's default) or `none`.
    #[arg(long, value_enum, default_value_t = DurabilityArg::Immediate)]
    pub durability: DurabilityArg,
    /// redb's page cache in bytes (redb's own default is 1 GiB).
    #[arg(long, value_name = "BYTES")]
    pub cache_size: Option<usize>,
    /// The workload and its shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// redb's commit durability, as a command-line value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Durable when `commit` returns.
    Immediate,
    /// Not durable until a later durable commit.
    None,
}

impl DurabilityArg {
    fn redb(self) -> redb::Durability {
        match self {
            DurabilityArg::Immediate => redb::Durability::Immediate,
            DurabilityArg::None => redb::Durability::None,
        }
    }
}

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("redb {what} failed: {e}")
}

struct Bench<'a> {
    db: &'a Database,
    prefix: &'a str,
    value: &'a [u8],
    alt_value: &'a [u8],
    durability: redb::Durability,
}

/// Runs the workload and returns the report (the caller prints it and writes the JSON).
pub fn run(args: &RedbArgs) -> Res<Report> {
    let mut builder = redb::Builder::new();
    if let Some(bytes) = args.cache_size {
        builder.set_cache_size(bytes);
    }
    let db = builder
        .create(&args.path)
        .map_err(|e| format!("cannot open the redb file {}: {e}", args.path.display()))?;
    let shape = args.shape.shape();
    let prefix = plan::run_prefix();
    let value = shape.value();
    let alt_value = shape.alt_value();
    let bench = Bench {
        db: &db,
        prefix: &prefix,
        value: &value,
        alt_value: &alt_value,
        durability: args.durability.redb(),
    };
    let template = Latencies::new()?;
    let mut results = Vec::new();
    let mut filled = false;
    let outcome = (|| {
        for op in args.shape.workload.ops() {
            if op.needs_fill() && !filled {
                bench.fill(&shape)?;
                filled = true;
            }
            results.push(bench.measure(op, &shape, &template)?);
        }
        Ok::<(), String>(())
    })();
    let cleanup = bench.cleanup();
    outcome?;
    cleanup?;
    Ok(Report {
        tool: "bench-ref redb".into(),
        url: format!("redb:{}", args.path.display()),
        shape,
        execution: format!(
            "{} OS threads, durability {:?}",
            shape.concurrency, args.durability
        ),
        results,
    })
}

impl Bench<'_> {
    fn fill(&self, shape: &Shape) -> Res<()> {
        let mut key = String::new();
        for chunk in shape.fill_chunks() {
            let txn = self.write_txn()?;
            {
                let mut table = txn.open_table(TABLE).map_err(err("open_table"))?;
                for i in chunk {
                    plan::key_into(&mut key, self.prefix, i);
                    table
                        .insert(key.as_bytes(), self.value)
                        .map_err(err("insert"))?;
                }
            }
            txn.commit().map_err(err("commit"))?;
        }
        Ok(())
    }

    fn cleanup(&self) -> Res<()> {
        let txn = self.db.begin_write().map_err(err("begin_write"))?;
        {
            let mut table = txn.open_table(TABLE).map_err(err("open_table"))?;
            let prefix = self.prefix.as_bytes();
            table
                .retain(|k, _| !k.starts_with(prefix))
                .map_err(err("retain"))?;
        }
        txn.commit().map_err(err("commit"))
    }

    fn write_txn(&self) -> Res<redb::WriteTransaction> {
        let mut txn = self.db.begin_write().map_err(err("begin_write"))?;
        txn.set_durability(self.durability)
            .map_err(err("set_durability"))?;
        Ok(txn)
    }

    fn measure(&self, op: Op, shape: &Shape, template: &Latencies) -> Res<OpResult> {
        let workers = shape.workers(op);
        let start_line = Barrier::new(workers.len() + 1);
        let cpu_before = process_cpu_time();
        let (elapsed, per_worker) = std::thread::scope(|s| {
            let handles: Vec<_> = workers
                .into_iter()
                .map(|w| {
                    let mut lat = template.clone();
                    let start_line = &start_line;
                    s.spawn(move || {
                        start_line.wait();
                        self.worker(op, w, &mut lat).map(|()| lat)
                    })
                })
                .collect();
            start_line.wait();
            let started = Instant::now();
            let joined: Vec<Res<Latencies>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("a benchmark thread panicked".into()))
                })
                .collect();
            (started.elapsed(), joined)
        });
        let mut latencies = template.clone();
        for lat in per_worker {
            latencies.merge(&lat?)?;
        }
        Ok(OpResult::new(op, shape, elapsed, latencies, cpu_before))
    }

    fn worker(&self, op: Op, mut w: Worker, lat: &mut Latencies) -> Res<()> {
        let mut key = String::new();
        let mut keys: Vec<String> = vec![String::new(); w.keys_per_call as usize];
        for _ in 0..w.calls {
            let t = Instant::now();
            match op {
                Op::Put => {
                    plan::key_into(&mut key, self.prefix, w.picker.next_index());
                    self.put(&key)?;
                }
                Op::Get => {
                    plan::key_into(&mut key, self.prefix, w.picker.next_index());
                    self.get(&key)?;
                }
                Op::Mixed => {
                    let is_put = w.picker.chance(MIXED_PUT_PERCENT);
                    plan::key_into(&mut key, self.prefix, w.picker.next_index());
                    if is_put {
                        self.put(&key)?;
                    } else {
                        self.get(&key)?;
                    }
                }
                Op::BatchPut | Op::BatchGet => {
                    for k in keys.iter_mut() {
                        plan::key_into(k, self.prefix, w.picker.next_index());
                    }
                    if op == Op::BatchPut {
                        self.batch_put(&keys)?;
                    } else {
                        self.batch_get(&keys)?;
                    }
                }
                Op::Cas => {
                    let (index, flipped) = w.next_cas().ok_or("a cas worker has no keys")?;
                    plan::key_into(&mut key, self.prefix, index);
                    let (old, new) = if flipped {
                        (self.alt_value, self.value)
                    } else {
                        (self.value, self.alt_value)
                    };
                    self.cas(&key, old, new)?;
                }
            }
            lat.record(t.elapsed());
        }
        Ok(())
    }

    fn put(&self, key: &str) -> Res<()> {
        let txn = self.write_txn()?;
        {
            let mut table = txn.open_table(TABLE).map_err(err("open_table"))?;
            table
                .insert(key.as_bytes(), self.value)
                .map_err(err("insert"))?;
        }
        txn.commit().map_err(err("commit"))
    }

    fn get(&self, key: &str) -> Res<()> {
        let txn = self.db.begin_read().map_err(err("begin_read"))?;
        let table = txn.open_table(TABLE).map_err(err("open_table"))?;
        let value = table.get(key.as_bytes()).map_err(err("get"))?;
        // Copy the value out, as a caller handed an owned value would.
        black_box(value.map(|v| v.value().to_vec()));
        Ok(())
    }

    fn batch_put(&self, keys: &[String]) -> Res<()> {
        let txn = self.write_txn()?;
        {
            let mut table = txn.open_table(TABLE).map_err(err("open_table"))?;
            for key in keys {
                table
                    .insert(key.as_bytes(), self.value)
                    .map_err(err("insert"))?;
            }
        }
        txn.commit().map_err(err("commit"))
    }

    fn batch_get(&self, keys: &[String]) -> Res<()> {
        let txn = self.db.begin_read().map_err(err("begin_read"))?;
        let table = txn.open_table(TABLE).map_err(err("open_table"))?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            let value = table.get(key.as_bytes()).map_err(err("get"))?;
            values.push(value.map(|v| v.value().to_vec()));
        }
        black_box(values);
        Ok(())
    }

    fn cas(&self, key: &str, old: &[u8], new: &[u8]) -> Res<()> {
        let txn = self.write_txn()?;
        {
            let mut table = txn.open_table(TABLE).map_err(err("open_table"))?;
            let matches = table
                .get(key.as_bytes())
                .map_err(err("get"))?
                .is_some_and(|v| v.value() == old);
            if !matches {
                return Err(format!("cas found an unexpected value under {key}"));
            }
            table.insert(key.as_bytes(), new).map_err(err("insert"))?;
        }
        txn.commit().map_err(err("commit"))
    }
}
