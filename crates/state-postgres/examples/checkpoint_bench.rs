//! Times `create_checkpoint` and `restore_checkpoint` on N rows (default 1,000,000) against
//! the same `INSERT … SELECT` statements run by hand through psql, in the same run, and
//! reports the client's resident memory around each step.
//!
//! ```text
//! cargo run --release -p state-postgres --example checkpoint_bench -- \
//!     --url 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable' --rows 1000000
//! ```
//! Measures only; asserts nothing. Works in schema `bench_checkpoint` (dropped at the end).

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use state_postgres::{PostgresConfig, PostgresStateBackend};

const SCHEMA: &str = "bench_checkpoint";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut url = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".to_string();
    let mut rows: u64 = 1_000_000;
    let mut rounds = 3;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--url" => url = args.next().ok_or("--url needs a value")?,
            "--rows" => rows = args.next().ok_or("--rows needs a value")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds needs a value")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let config = PostgresConfig::from_url(&url)?
        .with_schema(SCHEMA)
        .with_key_prefix("cp:")
        .with_statement_timeout(Duration::from_secs(600));
    let backend = PostgresStateBackend::new(config).await?;
    let mut conn = PgConnection::connect(&url).await?;
    let t = "\"bench_checkpoint\".\"state_entries\"";
    let cp = "\"bench_checkpoint\".\"state_entries_checkpoints\"";
    let cpr = "\"bench_checkpoint\".\"state_entries_checkpoint_rows\"";
    let fill = format!(
        "TRUNCATE {t}; INSERT INTO {t} (key, value) SELECT convert_to('cp:k' || lpad(i::text, 9, '0'), 'UTF8'), \
         decode(repeat('ab', 50), 'hex') FROM generate_series(1, {rows}) AS i"
    );
    let started = Instant::now();
    sqlx::raw_sql(sqlx::AssertSqlSafe(fill))
        .execute(&mut conn)
        .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {t}")))
        .execute(&mut conn)
        .await?;
    println!(
        "filled {rows} rows in {:?}; client RSS {} KiB",
        started.elapsed(),
        rss_kib()
    );

    let live = "(expires_at IS NULL OR expires_at > now())";
    let range = "key >= 'cp:'::bytea AND key < 'cp;'::bytea";
    let psql_overhead = time_psql(&url, "SELECT 1")?;
    let (mut ours_cp, mut hand_cp, mut ours_rs, mut hand_rs) = (vec![], vec![], vec![], vec![]);
    for round in 0..rounds {
        // Alternate which side goes first, so neither always inherits a warmer cache.
        let hand_first = round % 2 == 1;
        let hand_cp_sql = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; \
             WITH h AS (INSERT INTO {cp} (key_prefix) VALUES ('cp:'::bytea) RETURNING checkpoint_id) \
             INSERT INTO {cpr} (checkpoint_id, key, value, metadata, created_at, updated_at, expires_at) \
             SELECT (SELECT checkpoint_id FROM h), key, value, metadata, created_at, updated_at, expires_at \
             FROM {t} WHERE {range} AND {live}; COMMIT"
        );
        if hand_first {
            hand_cp.push(time_psql(&url, &hand_cp_sql)?.saturating_sub(psql_overhead));
        }
        let started = Instant::now();
        let id = backend.create_checkpoint().await?;
        ours_cp.push(started.elapsed());
        let rss_cp = rss_kib();
        if !hand_first {
            hand_cp.push(time_psql(&url, &hand_cp_sql)?.saturating_sub(psql_overhead));
        }

        let hand_rs_sql = format!(
            "BEGIN; DELETE FROM {t} WHERE {range}; \
             DELETE FROM \"bench_checkpoint\".\"state_entries_fences\" WHERE {range}; \
             INSERT INTO {t} (key, value, metadata, created_at, updated_at, expires_at) \
             SELECT key, value, metadata, created_at, updated_at, expires_at FROM {cpr} \
             WHERE checkpoint_id = {id} AND {live}; COMMIT"
        );
        if hand_first {
            hand_rs.push(time_psql(&url, &hand_rs_sql)?.saturating_sub(psql_overhead));
        }
        let started = Instant::now();
        let restored = backend.restore_checkpoint(id).await?;
        ours_rs.push(started.elapsed());
        let rss_rs = rss_kib();
        if !hand_first {
            hand_rs.push(time_psql(&url, &hand_rs_sql)?.saturating_sub(psql_overhead));
        }
        println!(
            "round {round}: checkpoint {:?} (by hand {:?}), restore of {restored} rows {:?} \
             (by hand {:?}); client RSS after checkpoint {rss_cp} KiB, after restore {rss_rs} KiB",
            ours_cp[round], hand_cp[round], ours_rs[round], hand_rs[round]
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("TRUNCATE {cp}, {cpr}")))
            .execute(&mut conn)
            .await?;
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (oc, hc, or, hr) = (
        median(&mut ours_cp),
        median(&mut hand_cp),
        median(&mut ours_rs),
        median(&mut hand_rs),
    );
    println!(
        "median over {rounds} rounds, {rows} rows: checkpoint {oc:?} vs by hand {hc:?} (ratio {:.2}); \
         restore {or:?} vs by hand {hr:?} (ratio {:.2}); final client RSS {} KiB",
        oc.as_secs_f64() / hc.as_secs_f64(),
        or.as_secs_f64() / hr.as_secs_f64(),
        rss_kib()
    );
    drop(backend);
    sqlx::raw_sql("DROP SCHEMA bench_checkpoint CASCADE")
        .execute(&mut conn)
        .await?;
    Ok(())
}

fn time_psql(url: &str, sql: &str) -> Result<Duration, Box<dyn std::error::Error>> {
    // libpq does not know our own parameters: hand it the plain URL.
    let plain = url.split('?').next().unwrap_or(url);
    let started = Instant::now();
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", plain, "-c", sql])
        .env("PGSSLMODE", "disable")
        .output()?;
    if !out.status.success() {
        return Err(format!("psql failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(started.elapsed())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
