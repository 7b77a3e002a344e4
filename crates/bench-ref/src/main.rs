//! `bench-ref`: the `statectl bench` workloads straight on a raw engine, the denominator of
//! every ratio in BENCHMARKS.md. See the crate README.
#![forbid(unsafe_code)]

mod harness;
mod postgres;
mod redb;
mod redis;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Runs the statectl bench workloads on a raw engine (no state-* crates in between).
#[derive(Debug, Parser)]
#[command(name = "bench-ref", version)]
struct Cli {
    #[command(subcommand)]
    engine: Engine,
}

// One variant and one module per engine: `redis` and `postgres` modes plug in here.
#[derive(Debug, Subcommand)]
enum Engine {
    /// The raw redb API on a local file.
    Redb(redb::RedbArgs),
    /// Redis clients (`--client`): the redis crate's multiplexed connection, fred,
    /// deadpool-redis, bb8-redis.
    Redis(redis::RedisArgs),
    /// PostgreSQL clients (`--client`): one sqlx PgConnection per task, sqlx's PgPool,
    /// deadpool-postgres, tokio-postgres pipelined.
    Postgres(postgres::PostgresArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (report, json) = match &cli.engine {
        Engine::Redb(args) => (redb::run(args), args.shape.json.as_deref()),
        Engine::Redis(args) => (redis::run(args), args.shape.json.as_deref()),
        Engine::Postgres(args) => (postgres::run(args), args.shape.json.as_deref()),
    };
    let outcome = report.and_then(|report| {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (`| head`) is not worth failing the run for.
        let _ = stdout.write_all(report.table().as_bytes());
        match json {
            Some(path) => report.write_json(path),
            None => Ok(()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("bench-ref: {message}");
            ExitCode::FAILURE
        }
    }
}
