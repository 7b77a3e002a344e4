//! `bench-ref postgres`: the workloads on the PostgreSQL clients a user would pick instead
//! of ours.
//!
//! `--client` picks the peer, each set up the way its README recommends:
//! - `connection` (the default): sqlx, every task owning one dedicated `PgConnection`.
//! - `pgpool`: sqlx's `PgPool` with its defaults but `max_connections` = min(tasks, 16);
//!   every statement checks a connection out of the pool.
//! - `deadpool`: `deadpool-postgres` over `tokio-postgres` (NoTls), pool size min(tasks, 16),
//!   `pool.get()` then `prepare_cached` on every call, as its README shows.
//! - `pipelined`: `tokio-postgres` on min(tasks, 4) connections, each `Client` shared by
//!   the tasks assigned to it round-robin, statements prepared once per connection:
//!   concurrent queries on one connection are pipelined.
//!
//! The statements are the ones `state-postgres` prepares, on a table of the same shape (its
//! migration's columns and indexes) in a schema of the run's own, dropped at the end.

mod connection;
mod deadpool;
mod pgpool;
mod pipelined;
mod sqlx_calls;
mod tokio_calls;

use std::collections::BTreeSet;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use sqlx::{Connection, PgConnection};

use crate::harness::{self, Described, Res};
use bench_ref::plan::{self, Shape, ShapeArgs};
use bench_ref::report::{OpResult, Report, redacted};

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
    /// The client library, used the way its README recommends.
    #[arg(long, value_enum, default_value_t = PostgresClient::Connection)]
    pub client: PostgresClient,
    /// The workload and its shape.
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// The PostgreSQL clients `bench-ref postgres` can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PostgresClient {
    /// sqlx: one dedicated `PgConnection` per task.
    Connection,
    /// sqlx: one shared `PgPool` (max_connections = min(tasks, 16)), a checkout per statement.
    Pgpool,
    /// deadpool-postgres (pool size min(tasks, 16)): `get()` + `prepare_cached` per call.
    Deadpool,
    /// tokio-postgres: min(tasks, 4) shared connections, queries pipelined on each.
    Pipelined,
}

/// The most connections a pooled peer opens: pool size = tasks, bounded as a careful user
/// bounds it (and so a run at 64 tasks stays well under the server's `max_connections`).
const POOL_MAX: u64 = 16;

/// The connections of the pipelined peer: a few, as a user tuning for throughput picks.
const PIPELINED_CONNECTIONS: u64 = 4;

/// The size of a pooled peer's pool: one connection per task, at most [`POOL_MAX`].
fn pool_size(shape: &Shape) -> u32 {
    u32::try_from(shape.concurrency.clamp(1, POOL_MAX)).unwrap_or(1)
}

fn err<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> String {
    move |e| format!("postgres {what} failed: {e}")
}

const LIVE: &str = "(expires_at IS NULL OR expires_at > now())";
const UPSERT: &str = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
    metadata = EXCLUDED.metadata, expires_at = EXCLUDED.expires_at, updated_at = now(), \
    created_at = CASE WHEN s.expires_at <= now() THEN now() ELSE s.created_at END";

/// The statements, for the table `t`.
pub struct Sql {
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
    let (results, execution) = outcome?;
    dropped?;
    Ok(Report {
        tool: "bench-ref postgres".into(),
        url: shown,
        shape: args.shape.shape(),
        execution,
        results,
    })
}

async fn run_ops(args: &PostgresArgs, table: &str) -> Res<(Vec<OpResult>, String)> {
    let shape = args.shape.shape();
    let sql = Arc::new(Sql::new(table));
    let prefix = plan::run_prefix();
    let workload = args.shape.workload;
    match args.client {
        PostgresClient::Connection => {
            let peer = connection::Dedicated::new(&args.url, sql);
            let results = harness::run_ops(&peer, &shape, workload, &prefix).await?;
            Ok((results, peer.describe(&shape)))
        }
        PostgresClient::Pgpool => {
            let peer = pgpool::Pooled::connect(&args.url, sql, pool_size(&shape)).await?;
            let results = harness::run_ops(&peer, &shape, workload, &prefix).await;
            let described = peer.describe(&shape);
            peer.close().await;
            Ok((results?, described))
        }
        PostgresClient::Deadpool => {
            let peer = deadpool::Deadpool::new(&args.url, sql, pool_size(&shape))?;
            let results = harness::run_ops(&peer, &shape, workload, &prefix).await;
            let described = peer.describe(&shape);
            peer.close();
            Ok((results?, described))
        }
        PostgresClient::Pipelined => {
            let connections = shape.concurrency.clamp(1, PIPELINED_CONNECTIONS);
            let peer = pipelined::Pipelined::connect(&args.url, &sql, connections).await?;
            let results = harness::run_ops(&peer, &shape, workload, &prefix).await?;
            Ok((results, peer.describe(&shape)))
        }
    }
}

/// Keys of one batch write, each once and sorted: one INSERT cannot touch a row twice, and
/// sorted keys keep concurrent batches from deadlocking.
fn unique_sorted(keys: &[String]) -> Vec<Vec<u8>> {
    let unique: BTreeSet<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    unique.into_iter().map(<[u8]>::to_vec).collect()
}

fn as_bytes(keys: &[String]) -> Vec<Vec<u8>> {
    keys.iter().map(|k| k.as_bytes().to_vec()).collect()
}
