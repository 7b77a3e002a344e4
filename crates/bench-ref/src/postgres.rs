//! `bench-ref postgres`: the workloads as a plain loop over the raw `sqlx` driver.
//!
//! Every worker is a tokio task that owns one dedicated `PgConnection` (16 workers, 16
//! connections): no pool in between, the fastest a raw sqlx user gets. The statements are
//! the ones `state-postgres` prepares, on a table of the same shape (its migration's
//! columns and indexes) in a schema of the run's own, dropped at the end.

use std::collections::BTreeSet;
use std::time::Instant;

use clap::Args;
use sqlx::{Connection, PgConnection};

use bench_ref::plan::{self, MIXED_PUT_PERCENT, Op, Shape, ShapeArgs, Worker};
use bench_ref::report::{Latencies, OpResult, Report, process_cpu_time, redacted};

/// Options of `bench-ref postgres`.
#[derive(Debug, Args)]
pub struct PostgresArgs {
    /// The database: `postgres://user[:pass]@host:port/db` (libpq parameters such as
    /// `sslmode=` allowed). The run works in a schema of its own and drops it at the end.
    #[arg(
        long,
        value_name = "URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    pub url: String,
    /// The workload and its shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

type Res<T> = Result<T, String>;

fn err(what: &'static str) -> impl FnOnce(sqlx::Error) -> String {
    move |e| format!("postgres {what} failed: {e}")
}

const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";
const UPSERT: &str = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
    metadata = EXCLUDED.metadata, expires_at = EXCLUDED.expires_at, updated_at = now(), \
    created_at = CASE WHEN s.expires_at <= now() THEN now() ELSE s.created_at END";

/// The statements, for the table `t`.
#[derive(Clone)]
struct Sql {
    put: String,
    get: String,
    batch_put: String,
    batch_get: String,
    cas: String,
}

impl Sql {
    fn new(t: &str) -> Sql {
        Sql {
            put: format!(
                "INSERT INTO {t} AS s (key, value, metadata, expires_at) VALUES ($1, $2, \
                 $3::jsonb, now() + $4::float8 * interval '1 millisecond') {UPSERT}"
            ),
            get: format!("SELECT value FROM {t} WHERE key = $1 AND {LIVE}"),
            batch_put: format!(
                "INSERT INTO {t} AS s (key, value, metadata, expires_at) SELECT u.k, u.v, NULL, \
                 now() + $3::float8 * interval '1 millisecond' FROM unnest($1::bytea[], \
                 $2::bytea[]) AS u(k, v) {UPSERT}"
            ),
            batch_get: format!(
                "SELECT k.ord, s.value FROM unnest($1::bytea[]) WITH ORDINALITY AS k(key, ord) \
                 JOIN {t} s ON s.key = k.key WHERE s.expires_at IS NULL OR s.expires_at > now()"
            ),
            cas: format!(
                "UPDATE {t} SET value = $2, metadata = NULL, expires_at = now() + $4::float8 * \
                 interval '1 millisecond', updated_at = now() WHERE key = $1 AND value = $3 AND {LIVE}"
            ),
        }
    }
}

/// Runs the workload and returns the report.
pub fn run(args: &PostgresArgs) -> Res<Report> {
    bench_ref::block_on(run_async(args))
}

async fn run_async(args: &PostgresArgs) -> Res<Report> {
    let shown = redacted(&args.url);
    let mut admin = PgConnection::connect(&args.url)
        .await
        .map_err(|e| format!("cannot connect to {shown}: {e}"))?;
    let schema = format!("bench_ref_{}", std::process::id());
    let table = format!("\"{schema}\".\"state_entries\"");
    let ddl = format!(
        "CREATE SCHEMA \"{schema}\"; \
         CREATE TABLE {table} (key BYTEA PRIMARY KEY, value BYTEA NOT NULL, metadata JSONB, \
           created_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
           updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), expires_at TIMESTAMPTZ); \
         CREATE INDEX ON {table} (expires_at) WHERE expires_at IS NOT NULL; \
         CREATE INDEX ON {table} USING GIN (metadata jsonb_path_ops); \
         CREATE INDEX ON {table} (updated_at DESC);"
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(&mut admin)
        .await
        .map_err(err("creating the bench schema"))?;
    let outcome = run_ops(args, &table).await;
    let dropped = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&mut admin)
    .await
    .map_err(err("dropping the bench schema"));
    let results = outcome?;
    dropped?;
    let shape = args.shape.shape();
    Ok(Report {
        tool: "bench-ref postgres".into(),
        url: shown,
        shape,
        execution: format!(
            "{} tokio tasks, each with a dedicated sqlx PgConnection",
            shape.concurrency
        ),
        results,
    })
}

async fn run_ops(args: &PostgresArgs, table: &str) -> Res<Vec<OpResult>> {
    let shape = args.shape.shape();
    let sql = Sql::new(table);
    let value = shape.value();
    let alt_value = shape.alt_value();
    let prefix = plan::run_prefix();
    let template = Latencies::new()?;
    let mut conns = Vec::new();
    for _ in 0..shape.concurrency {
        conns.push(
            PgConnection::connect(&args.url)
                .await
                .map_err(err("connect"))?,
        );
    }
    let mut results = Vec::new();
    let mut filled = false;
    for op in args.shape.workload.ops() {
        if op.needs_fill() && !filled {
            fill(&mut conns[0], &sql, &shape, &prefix, &value).await?;
            filled = true;
        }
        let workers = shape.workers(op);
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(workers.len() + 1));
        let mut handles = Vec::new();
        for (w, conn) in workers.into_iter().zip(conns.drain(..)) {
            let (barrier, mut lat) = (barrier.clone(), template.clone());
            let ctx = Ctx {
                sql: sql.clone(),
                prefix: prefix.clone(),
                value: value.clone(),
                alt_value: alt_value.clone(),
            };
            handles.push(tokio::spawn(async move {
                let mut conn = conn;
                barrier.wait().await;
                let outcome = ctx.worker(&mut conn, op, w, &mut lat).await;
                (conn, outcome.map(|()| lat))
            }));
        }
        let cpu_before = process_cpu_time();
        barrier.wait().await;
        let started = Instant::now();
        let mut latencies = template.clone();
        let mut first_error = None;
        for h in handles {
            match h.await {
                Ok((conn, outcome)) => {
                    conns.push(conn);
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
        // Workers beyond the op's count (cas on a tiny keyspace) keep their connections.
        while (conns.len() as u64) < shape.concurrency {
            conns.push(
                PgConnection::connect(&args.url)
                    .await
                    .map_err(err("connect"))?,
            );
        }
        results.push(OpResult::new(op, &shape, elapsed, latencies, cpu_before));
    }
    Ok(results)
}

async fn fill(
    conn: &mut PgConnection,
    sql: &Sql,
    shape: &Shape,
    prefix: &str,
    value: &[u8],
) -> Res<()> {
    for chunk in shape.fill_chunks() {
        let keys: Vec<Vec<u8>> = chunk.map(|i| plan::key(prefix, i).into_bytes()).collect();
        let values: Vec<&[u8]> = keys.iter().map(|_| value).collect();
        sqlx::query(sqlx::AssertSqlSafe(sql.batch_put.clone()))
            .bind(&keys)
            .bind(&values)
            .bind(None::<f64>)
            .execute(&mut *conn)
            .await
            .map_err(err("fill"))?;
    }
    Ok(())
}

struct Ctx {
    sql: Sql,
    prefix: String,
    value: Vec<u8>,
    alt_value: Vec<u8>,
}

impl Ctx {
    async fn worker(
        &self,
        conn: &mut PgConnection,
        op: Op,
        mut w: Worker,
        lat: &mut Latencies,
    ) -> Res<()> {
        let mut key = String::new();
        for _ in 0..w.calls {
            let t = Instant::now();
            match op {
                Op::Put => {
                    plan::key_into(&mut key, &self.prefix, w.picker.next_index());
                    self.put(conn, &key).await?;
                }
                Op::Get => {
                    plan::key_into(&mut key, &self.prefix, w.picker.next_index());
                    self.get(conn, &key).await?;
                }
                Op::Mixed => {
                    let is_put = w.picker.chance(MIXED_PUT_PERCENT);
                    plan::key_into(&mut key, &self.prefix, w.picker.next_index());
                    if is_put {
                        self.put(conn, &key).await?;
                    } else {
                        self.get(conn, &key).await?;
                    }
                }
                Op::BatchPut => {
                    // One INSERT cannot touch a row twice (repeated picks are written once),
                    // and sorted keys keep concurrent batches from deadlocking.
                    let mut unique: BTreeSet<Vec<u8>> = BTreeSet::new();
                    for _ in 0..w.keys_per_call {
                        plan::key_into(&mut key, &self.prefix, w.picker.next_index());
                        unique.insert(key.as_bytes().to_vec());
                    }
                    let keys: Vec<Vec<u8>> = unique.into_iter().collect();
                    let values: Vec<&[u8]> = keys.iter().map(|_| &self.value[..]).collect();
                    sqlx::query(sqlx::AssertSqlSafe(self.sql.batch_put.clone()))
                        .bind(&keys)
                        .bind(&values)
                        .bind(None::<f64>)
                        .execute(&mut *conn)
                        .await
                        .map_err(err("batch put"))?;
                }
                Op::BatchGet => {
                    let keys: Vec<Vec<u8>> = (0..w.keys_per_call)
                        .map(|_| plan::key(&self.prefix, w.picker.next_index()).into_bytes())
                        .collect();
                    let rows = sqlx::query(sqlx::AssertSqlSafe(self.sql.batch_get.clone()))
                        .bind(&keys)
                        .fetch_all(&mut *conn)
                        .await
                        .map_err(err("batch get"))?;
                    std::hint::black_box(rows);
                }
                Op::Cas => {
                    let (index, flipped) = w.next_cas().ok_or("a cas worker has no keys")?;
                    plan::key_into(&mut key, &self.prefix, index);
                    let (old, new) = if flipped {
                        (&self.alt_value, &self.value)
                    } else {
                        (&self.value, &self.alt_value)
                    };
                    let done = sqlx::query(sqlx::AssertSqlSafe(self.sql.cas.clone()))
                        .bind(key.as_bytes())
                        .bind(&new[..])
                        .bind(&old[..])
                        .bind(None::<f64>)
                        .execute(&mut *conn)
                        .await
                        .map_err(err("cas"))?;
                    if done.rows_affected() != 1 {
                        return Err(format!("cas found an unexpected value under {key}"));
                    }
                }
            }
            lat.record(t.elapsed());
        }
        Ok(())
    }

    async fn put(&self, conn: &mut PgConnection, key: &str) -> Res<()> {
        sqlx::query(sqlx::AssertSqlSafe(self.sql.put.clone()))
            .bind(key.as_bytes())
            .bind(&self.value[..])
            .bind(None::<serde_json::Value>)
            .bind(None::<f64>)
            .execute(conn)
            .await
            .map_err(err("put"))?;
        Ok(())
    }

    async fn get(&self, conn: &mut PgConnection, key: &str) -> Res<()> {
        let row = sqlx::query(sqlx::AssertSqlSafe(self.sql.get.clone()))
            .bind(key.as_bytes())
            .fetch_optional(conn)
            .await
            .map_err(err("get"))?;
        std::hint::black_box(row);
        Ok(())
    }
}
