//! Uncontended acquire+release latency of each lock, as a ratio to one round trip to the
//! same server and to the same lock operations on the raw driver, measured in the same run.
//!
//! ```text
//! cargo run --release -p state-lock --example lock_latency -- \
//!     [--redis URL] [--postgres URL] [--iterations N] [--rounds R] [--cpu-idle poll|default] \
//!     [--pin CLIENT,SERVER] [--no-notes]
//! ```
//! Per server, each round alternates blocks of round trips (`PING`, `SELECT 1`) and of
//! each lock's cycles (so all see the same machine noise), over several sessions (the
//! PostgreSQL ones on fresh connections, so no side keeps one server process's luck for a
//! whole run); the report gives the median over rounds of each p50 and p99, and of each
//! round's ratio to the floor. Beside our locks: floor rows, the same lock operations
//! without our library (the Redis scripts on the raw `redis` crate, each PostgreSQL mode's
//! statements on a plain sqlx connection and through `pgbench -M prepared`, which must be
//! installed), and peers (`rslock`, sqlx's `PgAdvisoryLock`). The PostgreSQL locks work in
//! a schema of their own, dropped at the end.
//! Prints a Markdown table (what `cargo xtask bench locks` puts in BENCHMARKS.md).
//!
//! `--cpu-idle poll` holds `/dev/cpu_dma_latency` at 0 for the run (root only), as
//! latency-tuned hosts do: idle cores then poll instead of halting. On a VM a halted vCPU
//! takes tens of µs to wake, so without it a round trip costs 25 or 80 µs depending on
//! whether the two processes happen to share a core, and ratios measured minutes apart
//! disagree. `--pin 0,1` runs this process on core 0 and both servers on core 1 (root, local
//! servers; `pin.rs`): every round trip then wakes the other core, on every side alike.

mod measure;
mod pgbench;
mod pin;
mod postgres_rows;
mod redis_rows;
mod table;

use std::error::Error;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use state_lock::DistributedLock;

use measure::Timed;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

/// Calls per block of one side.
const BLOCK: usize = 100;
/// The lease of every lock taken.
const TTL: Duration = Duration::from_secs(30);

struct Options {
    redis: String,
    postgres: String,
    iterations: usize,
    rounds: usize,
    poll_idle: bool,
    pin: Option<pin::Cores>,
    notes: bool,
}

fn options() -> Result<Options> {
    let mut opts = Options {
        redis: std::env::var("STATE_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        postgres: std::env::var("STATE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
        iterations: 5_000,
        rounds: 3,
        poll_idle: false,
        pin: None,
        notes: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--redis" => opts.redis = value()?,
            "--postgres" => opts.postgres = value()?,
            "--iterations" => opts.iterations = value()?.parse()?,
            "--rounds" => opts.rounds = value()?.parse()?,
            "--no-notes" => opts.notes = false,
            "--pin" => opts.pin = Some(value()?.parse()?),
            "--cpu-idle" => {
                opts.poll_idle = match value()?.as_str() {
                    "poll" => true,
                    "default" => false,
                    other => return Err(format!("--cpu-idle poll|default, not `{other}`").into()),
                }
            }
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    Ok(opts)
}

/// Our lock's cycle: try_acquire + release of a name no one else uses; the guard must be
/// granted.
struct OursCycle {
    lock: Arc<dyn DistributedLock>,
    name: &'static str,
}

impl OursCycle {
    fn new(lock: Arc<dyn DistributedLock>, name: &'static str) -> OursCycle {
        OursCycle { lock, name }
    }
}

#[async_trait(?Send)]
impl Timed for OursCycle {
    async fn run(&mut self, _: usize) -> Result<()> {
        let guard = self
            .lock
            .try_acquire(self.name, TTL)
            .await?
            .ok_or_else(|| format!("lock {} was busy in an uncontended benchmark", self.name))?;
        self.lock.release(guard).await?;
        Ok(())
    }
}

/// A name of this run for keys, schemas and files.
fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("bench_lock_{tag}_{}_{nanos}", std::process::id())
}

/// Keeps idle cores polling instead of halting while the returned file is open.
fn hold_poll_idle() -> Result<std::fs::File> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .map_err(|e| format!("--cpu-idle poll needs /dev/cpu_dma_latency (root): {e}"))?;
    file.write_all(&0i32.to_ne_bytes())?;
    Ok(file)
}

/// `url` with one more query parameter.
fn with_param(url: &str, name: &str, value: &str) -> String {
    let has_path = url
        .split_once("://")
        .is_some_and(|(_, rest)| rest.contains('/'));
    let separator = match (url.contains('?'), has_path) {
        (true, _) => "&",
        (false, true) => "?",
        (false, false) => "/?",
    };
    format!("{url}{separator}{name}={value}")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let opts = options()?;
    let _poll_idle = if opts.poll_idle {
        Some(hold_poll_idle()?)
    } else {
        None
    };
    let _pinned = match opts.pin {
        Some(cores) => Some(pin::pin(&opts, cores).await?),
        None => None,
    };
    let mut rows = redis_rows::redis_rows(&opts).await?;
    rows.extend(postgres_rows::postgres_rows(&opts).await?);
    print!("{}", table::table(&rows, &opts));
    Ok(())
}
