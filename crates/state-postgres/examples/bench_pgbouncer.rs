//! Throughput through PgBouncer (transaction mode, started by the `testing` fixture in
//! front of `--url`): point get/put and batches of 100 through the backend with
//! `pgbouncer=true`, against `pgbench -M extended` running the same SQL through the same
//! PgBouncer in the same run; the backend straight to PostgreSQL for reference.
//!
//! ```text
//! cargo run --release -p state-postgres --example bench_pgbouncer -- \
//!     --url postgres://postgres@127.0.0.1:5432/test --seconds 5 --concurrency 16
//! ```
//! Measures only; asserts nothing. Works in schema `bench_pgbouncer` (dropped at the end).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use state_postgres::{PostgresConfig, PostgresStateBackend, StateBackend};
use testing::services::{PgBouncer, PgBouncerOptions};

const SCHEMA: &str = "bench_pgbouncer";
const KEYSPACE: u64 = 10_000;
const BATCH: u64 = 100;
const VALUE: [u8; 100] = [b'x'; 100];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = "postgres://postgres@127.0.0.1:5432/test".to_string();
    let mut seconds: u64 = 5;
    let mut concurrency: u64 = 16;
    let mut pool: u32 = 8;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--url" => url = value()?,
            "--seconds" => seconds = value()?.parse()?,
            "--concurrency" => concurrency = value()?.parse()?,
            "--server-connections" => pool = value()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut options = PgBouncerOptions::new(url.clone());
    options.pool_size = pool;
    let bouncer = PgBouncer::start_with(options).await?;
    let db = url
        .rsplit('/')
        .next()
        .and_then(|t| t.split('?').next())
        .unwrap_or("test")
        .to_string();
    let pooled_url = bouncer.url(&db);
    let open = |url: String, pgbouncer: bool| async move {
        let config = PostgresConfig::from_url(&url)?
            .with_schema(SCHEMA)
            .with_ssl_mode("disable")
            .with_pgbouncer(pgbouncer)
            .with_pool_size(concurrency as u32, concurrency as u32);
        PostgresStateBackend::new(config).await.map(Arc::new)
    };
    let direct = open(url.clone(), false).await?;
    let pooled = open(pooled_url.clone(), true).await?;
    let keys: Vec<Vec<u8>> = (0..KEYSPACE)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    for chunk in keys.chunks(1000) {
        let entries: Vec<(&[u8], &[u8])> = chunk.iter().map(|k| (&k[..], &VALUE[..])).collect();
        direct.batch_put(&entries).await?;
    }
    let keys = Arc::new(keys);
    let dir = std::env::temp_dir().join(format!("bench_pgbouncer_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let time = Duration::from_secs(seconds);
    println!(
        "concurrency {concurrency}, {pool} PgBouncer server connections, {seconds}s per cell, \
         value 100 B, batch {BATCH}; rows/s for batches"
    );
    for op in ["get", "put", "batch_get", "batch_put"] {
        let ours = run_ours(&pooled, &keys, op, concurrency, time).await?;
        let bench = run_pgbench(&pooled_url, &dir, op, concurrency, seconds)?;
        let reference = run_ours(&direct, &keys, op, concurrency, time).await?;
        println!(
            "{op:>9}: backend via PgBouncer {ours:>8.0}/s | pgbench -M extended via PgBouncer \
             {bench:>8.0}/s ({:.2}x) | backend direct {reference:>8.0}/s",
            ours / bench
        );
    }
    drop(pooled);
    drop(direct);
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{SCHEMA}\" CASCADE"
    )))
    .execute(&mut conn)
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn key_of(i: u64) -> u64 {
    // A cheap scramble so that tasks do not walk the keys in step.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYSPACE
}

/// Operations (rows for batches) per second over `time` with `concurrency` tasks.
async fn run_ours(
    backend: &Arc<PostgresStateBackend>,
    keys: &Arc<Vec<Vec<u8>>>,
    op: &'static str,
    concurrency: u64,
    time: Duration,
) -> Result<f64, Box<dyn std::error::Error>> {
    let rows = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (backend, keys, rows, stop) =
            (backend.clone(), keys.clone(), rows.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t * 7919;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = |j: u64| &keys[key_of(i * BATCH + j) as usize][..];
                match op {
                    "get" => drop(backend.get(key(0)).await?),
                    "put" => backend.put(key(0), &VALUE).await?,
                    "batch_get" => {
                        let batch: Vec<&[u8]> = (0..BATCH).map(key).collect();
                        drop(backend.batch_get(&batch).await?);
                    }
                    _ => {
                        let batch: Vec<(&[u8], &[u8])> =
                            (0..BATCH).map(|j| (key(j), &VALUE[..])).collect();
                        backend.batch_put(&batch).await?;
                    }
                }
                let n = if op.starts_with("batch") { BATCH } else { 1 };
                rows.fetch_add(n, Ordering::Relaxed);
            }
            Ok::<(), state_postgres::StateError>(())
        }));
    }
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await??;
    }
    Ok(rows.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// The same statements through `pgbench -M extended` (unnamed statements, which a
/// transaction pooler allows) for `seconds`; returns rows per second.
fn run_pgbench(
    url: &str,
    dir: &std::path::Path,
    op: &str,
    concurrency: u64,
    seconds: u64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let table = format!("\"{SCHEMA}\".\"state_entries\"");
    let one = "convert_to('k' || CAST(:k AS text), 'UTF8')";
    let many = format!(
        "ARRAY(SELECT convert_to('k' || CAST((:k + g) % {KEYSPACE} AS text), 'UTF8') \
         FROM generate_series(0, {}) g)",
        BATCH - 1
    );
    let value = format!("'\\x{}'::bytea", "78".repeat(VALUE.len()));
    let upsert = "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
        metadata = EXCLUDED.metadata, expires_at = EXCLUDED.expires_at, updated_at = now(), \
        created_at = CASE WHEN s.expires_at <= now() THEN now() ELSE s.created_at END";
    let sql = match op {
        "get" => format!(
            "SELECT value FROM {table} WHERE key = {one} \
             AND (expires_at IS NULL OR expires_at > now());"
        ),
        "put" => format!(
            "INSERT INTO {table} AS s (key, value, metadata, expires_at) \
             VALUES ({one}, {value}, NULL::jsonb, NULL) {upsert};"
        ),
        "batch_get" => format!(
            "SELECT value FROM {table} WHERE key = ANY({many}) \
             AND (expires_at IS NULL OR expires_at > now());"
        ),
        _ => format!(
            "INSERT INTO {table} AS s (key, value, metadata, expires_at) \
             SELECT k, {value}, NULL::jsonb, NULL::timestamptz FROM unnest({many}) k \
             ORDER BY k {upsert};"
        ),
    };
    let script = dir.join(format!("{op}.sql"));
    std::fs::write(
        &script,
        format!("\\set k random(0, {})\n{sql}\n", KEYSPACE - 1),
    )?;
    let out = std::process::Command::new("pgbench")
        .args([
            "-n",
            "-M",
            "extended",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .args(["-c", &concurrency.to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .env("PGSSLMODE", "disable")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let tps: f64 = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .ok_or_else(|| {
            format!(
                "pgbench gave no tps: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let rows = if op.starts_with("batch") { BATCH } else { 1 };
    Ok(tps * rows as f64)
}
