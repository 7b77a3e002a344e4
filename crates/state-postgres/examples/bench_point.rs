//! Point get/put throughput of the backend against a raw loop of dedicated sqlx
//! connections running the same SQL (and prints the pgbench script for the third side).
//!
//! ```text
//! cargo run --release -p state-postgres --example bench_point -- \
//!     --url postgres://postgres@127.0.0.1/test --ops 100000 --concurrency 16
//! ```
//! Measures only; asserts nothing. Works in schema `bench_point` (dropped at the end).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sqlx::{Connection, PgConnection};
use state_postgres::{PostgresConfig, PostgresStateBackend, StateBackend};

const SCHEMA: &str = "bench_point";
const KEYSPACE: u64 = 10_000;
const VALUE: [u8; 100] = [b'x'; 100];

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = "postgres://postgres@127.0.0.1:5432/test".to_string();
    let mut ops: u64 = 100_000;
    let mut concurrency: u64 = 16;
    let mut rounds: usize = 5;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = args.next().ok_or("--url needs a value")?,
            "--ops" => ops = args.next().ok_or("--ops needs a value")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds needs a value")?.parse()?,
            "--concurrency" => {
                concurrency = args.next().ok_or("--concurrency needs a value")?.parse()?
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let config = PostgresConfig::from_url(&url)?
        .with_schema(SCHEMA)
        .with_key_prefix("bench_")
        .with_pool_size(concurrency as u32, concurrency as u32);
    let backend = Arc::new(PostgresStateBackend::new(config).await?);
    let keys: Vec<Vec<u8>> = (0..KEYSPACE)
        .map(|i| format!("k{i}").into_bytes())
        .collect();
    for chunk in keys.chunks(1000) {
        let entries: Vec<(&[u8], &[u8])> = chunk.iter().map(|k| (&k[..], &VALUE[..])).collect();
        backend.batch_put(&entries).await?;
    }
    let keys = Arc::new(keys);
    let dir = std::env::temp_dir().join(format!("bench_point_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for op in ["get", "put"] {
        // Writes wait for WAL flushes: fewer of them keep the rounds comparable in time.
        let n = if op == "get" { ops } else { ops / 10 };
        let (mut ours, mut raw, mut pgb) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            ours.push(run_ours(&backend, &keys, op, n, concurrency).await?);
            raw.push(run_raw(&url, &keys, op, n, concurrency).await?);
            pgb.push(run_pgbench(&url, &dir, op, concurrency)?);
            println!(
                "{op} round {round}: backend {:.0}/s, raw sqlx {:.0}/s, pgbench {:.0}/s",
                ours[round], raw[round], pgb[round]
            );
        }
        let (o, r, p) = (median(&mut ours), median(&mut raw), median(&mut pgb));
        println!(
            "{op} median of {rounds}: backend {o:.0}/s, raw sqlx {r:.0}/s ({:.2}x), pgbench -M prepared {p:.0}/s ({:.2}x)",
            o / r,
            o / p
        );
    }
    std::fs::remove_dir_all(&dir)?;
    println!("{:?}", backend.stats().await);
    drop(backend);
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::raw_sql("DROP SCHEMA bench_point CASCADE")
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The same statements through `pgbench -M prepared` for 5 seconds; returns its tps.
fn run_pgbench(
    url: &str,
    dir: &std::path::Path,
    op: &str,
    concurrency: u64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let key = "convert_to('bench_k' || CAST(:k AS text), 'UTF8')";
    let value = format!("'\\x{}'::bytea", "78".repeat(VALUE.len()));
    let sql = if op == "get" {
        format!(
            "SELECT value FROM \"{SCHEMA}\".\"state_entries\" WHERE key = {key} \
             AND (expires_at IS NULL OR expires_at > now());"
        )
    } else {
        format!(
            "INSERT INTO \"{SCHEMA}\".\"state_entries\" AS s (key, value, metadata, expires_at) \
             VALUES ({key}, {value}, NULL::jsonb, now() + NULL::float8 * interval '1 millisecond') \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
             metadata = EXCLUDED.metadata, expires_at = EXCLUDED.expires_at, updated_at = now(), \
             created_at = CASE WHEN s.expires_at <= now() THEN now() ELSE s.created_at END;"
        )
    };
    let script = dir.join(format!("{op}.sql"));
    std::fs::write(
        &script,
        format!("\\set k random(0, {})\n{sql}\n", KEYSPACE - 1),
    )?;
    let plain = url.split('?').next().unwrap_or(url);
    let out = std::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-j", "2", "-T", "5"])
        .args(["-c", &concurrency.to_string(), "-f"])
        .arg(&script)
        .arg(plain)
        .env("PGSSLMODE", "disable")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2)?.parse().ok())
        .ok_or_else(|| {
            format!(
                "pgbench gave no tps: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into()
        })
}

fn key_of(i: u64) -> u64 {
    // A cheap scramble so that tasks do not walk the keys in step.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % KEYSPACE
}

async fn run_ours(
    backend: &Arc<PostgresStateBackend>,
    keys: &Arc<Vec<Vec<u8>>>,
    op: &'static str,
    ops: u64,
    concurrency: u64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (backend, keys, next) = (backend.clone(), keys.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok::<(), state_postgres::StateError>(());
                }
                let key = &keys[key_of(i) as usize];
                if op == "get" {
                    backend.get(key).await?;
                } else {
                    backend.put(key, &VALUE).await?;
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

async fn run_raw(
    url: &str,
    keys: &Arc<Vec<Vec<u8>>>,
    op: &'static str,
    ops: u64,
    concurrency: u64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let get = format!(
        "SELECT value FROM \"{SCHEMA}\".\"state_entries\" WHERE key = $1 \
         AND (expires_at IS NULL OR expires_at > now())"
    );
    let put = format!(
        "INSERT INTO \"{SCHEMA}\".\"state_entries\" AS s (key, value, metadata, expires_at) \
         VALUES ($1, $2, $3::jsonb, now() + $4::float8 * interval '1 millisecond') \
         ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, \
         metadata = EXCLUDED.metadata, expires_at = EXCLUDED.expires_at, updated_at = now(), \
         created_at = CASE WHEN s.expires_at <= now() THEN now() ELSE s.created_at END"
    );
    let sql: Arc<str> = Arc::from(if op == "get" { get } else { put });
    let mut conns = Vec::new();
    for _ in 0..concurrency {
        conns.push(PgConnection::connect(url).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let (keys, next, sql) = (keys.clone(), next.clone(), sql.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= ops {
                    return Ok::<(), sqlx::Error>(());
                }
                let mut key = b"bench_".to_vec();
                key.extend_from_slice(&keys[key_of(i) as usize]);
                let query = sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(key);
                if op == "get" {
                    query.fetch_optional(&mut conn).await?;
                } else {
                    query
                        .bind(&VALUE[..])
                        .bind(None::<serde_json::Value>)
                        .bind(None::<f64>)
                        .execute(&mut conn)
                        .await?;
                }
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}
