//! Uncontended acquire+release latency of each lock, as a ratio to one round trip to the
//! same server measured in the same run (`PING` for Redis, `SELECT 1` for PostgreSQL).
//!
//! ```text
//! cargo run --release -p state-lock --example lock_latency -- \
//!     [--redis URL] [--postgres URL] [--iterations N] [--rounds R] [--cpu-idle poll|default] \
//!     [--no-notes]
//! ```
//! Each round alternates blocks of round trips and of lock cycles (so both see the same
//! machine noise); the report gives the median over rounds of each p50 and p99. The
//! PostgreSQL locks work in a schema of their own, dropped at the end. Floor rows run the
//! same lock operations without our library: the Redis scripts on the raw `redis` crate,
//! and each PostgreSQL mode's statements through `pgbench -M prepared` (which must be
//! installed).
//! Prints a Markdown table (what `cargo xtask bench locks` puts in BENCHMARKS.md).
//!
//! `--cpu-idle poll` holds `/dev/cpu_dma_latency` at 0 for the run (root only), as
//! latency-tuned hosts do: idle cores then poll instead of halting. On a VM a halted vCPU
//! takes tens of µs to wake, so without it a round trip costs 25 or 80 µs depending on
//! whether the two processes happen to share a core, and ratios measured minutes apart
//! disagree.

use std::error::Error;
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::Connection as _;
use state_lock::{
    DistributedLock, LockMode, PostgresDistributedLock, PostgresLockConfig, RedisDistributedLock,
    advisory_key, postgres_statements,
};
use state_redis::redis;

type Result<T> = std::result::Result<T, Box<dyn Error>>;

const BLOCK: usize = 100;
const TTL: Duration = Duration::from_secs(30);

struct Options {
    redis: String,
    postgres: String,
    iterations: usize,
    rounds: usize,
    poll_idle: bool,
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

/// p50 and p99 of one side of one round, in microseconds.
#[derive(Clone, Copy)]
struct Percentiles {
    p50: f64,
    p99: f64,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One row: the round trip and the lock cycle, medians over rounds.
struct Row {
    label: String,
    round_trip: Percentiles,
    cycle: Percentiles,
    /// Whether this row is a floor: the same lock operations without this library. A lock's
    /// row is followed by its floor's.
    floor: bool,
}

/// Each round's p50 and p99 of both sides, summarised as a [`Row`] of medians.
#[derive(Default)]
struct Rounds {
    rt50: Vec<f64>,
    rt99: Vec<f64>,
    c50: Vec<f64>,
    c99: Vec<f64>,
}

impl Rounds {
    fn push(&mut self, round_trip: Percentiles, cycle: Percentiles) {
        self.rt50.push(round_trip.p50);
        self.rt99.push(round_trip.p99);
        self.c50.push(cycle.p50);
        self.c99.push(cycle.p99);
    }

    fn into_row(self, label: String, floor: bool) -> Row {
        Row {
            label,
            round_trip: Percentiles {
                p50: median(self.rt50),
                p99: median(self.rt99),
            },
            cycle: Percentiles {
                p50: median(self.c50),
                p99: median(self.c99),
            },
            floor,
        }
    }
}

/// Runs `rounds` rounds of `iterations` round trips and lock cycles, in alternating blocks.
async fn measure<RT, RTF, LC, LCF>(
    label: &str,
    opts: &Options,
    mut round_trip: RT,
    mut cycle: LC,
) -> Result<Row>
where
    RT: FnMut() -> RTF,
    RTF: Future<Output = Result<()>>,
    LC: FnMut(usize) -> LCF,
    LCF: Future<Output = Result<()>>,
{
    // Warm-up: connections, prepared statements, scripts.
    for i in 0..BLOCK {
        round_trip().await?;
        cycle(i).await?;
    }
    let mut rounds = Rounds::default();
    for _ in 0..opts.rounds {
        let mut rts = Vec::with_capacity(opts.iterations);
        let mut cycles = Vec::with_capacity(opts.iterations);
        let mut i = 0;
        while rts.len() < opts.iterations {
            for _ in 0..BLOCK {
                let t = Instant::now();
                round_trip().await?;
                rts.push(t.elapsed());
            }
            for _ in 0..BLOCK {
                let t = Instant::now();
                cycle(i).await?;
                cycles.push(t.elapsed());
                i += 1;
            }
        }
        rounds.push(percentiles(rts), percentiles(cycles));
    }
    Ok(rounds.into_row(label.to_string(), label.ends_with("(floor)")))
}

/// try_acquire + release of a lock name no one else uses; the guard must be granted.
async fn lock_cycle(lock: &Arc<dyn DistributedLock>, name: &str) -> Result<()> {
    let guard = lock
        .try_acquire(name, TTL)
        .await?
        .ok_or_else(|| format!("lock {name} was busy in an uncontended benchmark"))?;
    lock.release(guard).await?;
    Ok(())
}

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("bench_lock_{tag}_{}_{nanos}", std::process::id())
}

/// The floor: the lock's own two scripts (acquire, release) by EVALSHA on one raw
/// multiplexed connection, without our library around them.
async fn redis_raw_row(
    opts: &Options,
    conn: &redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<Row> {
    let acquire = redis::Script::new(state_lock::redis_scripts::ACQUIRE);
    let release = redis::Script::new(state_lock::redis_scripts::RELEASE);
    let key = format!("{prefix}raw:{{uncontended}}");
    let fence = format!("{key}:fence");
    measure(
        "Redis: the same two scripts on the raw `redis` crate (floor)",
        opts,
        || {
            let mut conn = conn.clone();
            async move {
                let _: String = redis::cmd("PING").query_async(&mut conn).await?;
                Ok(())
            }
        },
        |_| {
            let mut conn = conn.clone();
            let (acquire, release, key, fence) = (&acquire, &release, &key, &fence);
            async move {
                let token: String = acquire
                    .key(key)
                    .key(fence)
                    .arg("bench-owner")
                    .arg(30_000)
                    .invoke_async(&mut conn)
                    .await?;
                let released: i64 = release
                    .key(key)
                    .arg(format!("bench-owner {token}"))
                    .invoke_async(&mut conn)
                    .await?;
                if released != 1 {
                    return Err("the raw release found the lock not held".into());
                }
                Ok(())
            }
        },
    )
    .await
}

async fn redis_rows(opts: &Options) -> Result<Vec<Row>> {
    let client = redis::Client::open(opts.redis.as_str())?;
    let conn = client.get_multiplexed_async_connection().await?;
    let prefix = format!("{}:", unique("redis"));
    let url = with_param(&opts.redis, "prefix", &prefix);
    let lock: Arc<dyn DistributedLock> = Arc::new(RedisDistributedLock::new(&url).await?);
    let name = "uncontended";
    let raw = redis_raw_row(opts, &conn, &prefix).await;
    let ours = measure(
        "Redis (standalone)",
        opts,
        || {
            let mut conn = conn.clone();
            async move {
                let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
                if pong != "PONG" {
                    return Err(format!("PING answered {pong}").into());
                }
                Ok(())
            }
        },
        |_| lock_cycle(&lock, name),
    )
    .await;
    // The fencing counter outlives the lock by design: remove this run's keys.
    let mut conn = conn.clone();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        for key in keys {
            let _: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(vec![ours?, raw?])
}

async fn postgres_rows(opts: &Options) -> Result<Vec<Row>> {
    let schema = unique("pg");
    let mut admin = sqlx::PgConnection::connect(&opts.postgres).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut admin)
        .await?;
    let rows = postgres_in(opts, &schema).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA \"{schema}\" CASCADE"
    )))
    .execute(&mut admin)
    .await?;
    rows
}

async fn postgres_in(opts: &Options, schema: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for mode in [LockMode::Session, LockMode::Lease] {
        let config = PostgresLockConfig::from_url(&opts.postgres)?
            .with_schema(schema)
            .with_mode(mode);
        let lock: Arc<dyn DistributedLock> =
            Arc::new(PostgresDistributedLock::with_config(config).await?);
        let conn = tokio::sync::Mutex::new(sqlx::PgConnection::connect(&opts.postgres).await?);
        let label = format!("PostgreSQL, {} mode", mode.as_str());
        let row = measure(
            &label,
            opts,
            || async {
                let one: i32 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&mut *conn.lock().await)
                    .await?;
                if one != 1 {
                    return Err("SELECT 1 answered something else".into());
                }
                Ok(())
            },
            |_| lock_cycle(&lock, "uncontended"),
        )
        .await?;
        rows.push(row);
        rows.push(pgbench_floor(opts, schema, mode)?);
    }
    Ok(rows)
}

/// The floor of a PostgreSQL mode: the mode's own acquire and release statements
/// (`state_lock::postgres_statements`) run by `pgbench -M prepared` on one connection,
/// against pgbench's own `SELECT 1`, alternating per round.
fn pgbench_floor(opts: &Options, schema: &str, mode: LockMode) -> Result<Row> {
    // pgbench variables for the placeholders; `:token` comes from the acquire's RETURNING.
    let name = unique("floor");
    let key = advisory_key(&name);
    let (high, low) = ((key >> 32) as i32, key as u32 as i32);
    let script = match mode {
        // `$1`, the pid the connection was opened on, is the pid itself here.
        LockMode::Session => format!(
            "{};\n{};\n",
            postgres_statements::session_acquire(schema),
            postgres_statements::SESSION_RELEASE
        )
        .replace("$1", "pg_backend_pid()")
        .replace("$2", &key.to_string()),
        LockMode::Lease => format!(
            "{} \\gset\n{};\n",
            postgres_statements::lease_acquire(schema)
                .replace("$3", "30000")
                .replace("$4", &high.to_string())
                .replace("$5", &low.to_string()),
            postgres_statements::lease_release(schema).replace("$3", ":token"),
        )
        .replace("$1", ":name")
        .replace("$2", ":owner"),
    };
    let defines = [
        ("name", name.clone()),
        ("owner", "bench-floor-owner".to_string()),
    ];
    let select_one = "SELECT 1;\n";
    pgbench(&opts.postgres, &script, &defines, 100)?;
    let mut rounds = Rounds::default();
    for _ in 0..opts.rounds {
        let rt = percentiles(pgbench(&opts.postgres, select_one, &[], opts.iterations)?);
        let c = percentiles(pgbench(&opts.postgres, &script, &defines, opts.iterations)?);
        rounds.push(rt, c);
    }
    let label = format!(
        "PostgreSQL, {} mode: the same two statements by `pgbench -M prepared` (floor)",
        mode.as_str()
    );
    Ok(rounds.into_row(label, true))
}

/// Runs `script` `transactions` times with pgbench on one connection and returns each
/// transaction's latency: the differences of the end times in pgbench's log (its own
/// latency column reads 0 for most fast transactions in pgbench 15).
fn pgbench(
    url: &str,
    script: &str,
    defines: &[(&str, String)],
    transactions: usize,
) -> Result<Vec<Duration>> {
    let dir = std::env::temp_dir().join(unique("pgbench"));
    std::fs::create_dir_all(&dir)?;
    let outcome = pgbench_in(&dir, url, script, defines, transactions);
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn pgbench_in(
    dir: &Path,
    url: &str,
    script: &str,
    defines: &[(&str, String)],
    transactions: usize,
) -> Result<Vec<Duration>> {
    let file = dir.join("script.sql");
    std::fs::write(&file, script)?;
    let mut cmd = Command::new("pgbench");
    cmd.args(["-n", "-c", "1", "-M", "prepared", "-l", "-t"])
        .arg(transactions.to_string())
        .arg("--log-prefix")
        .arg(dir.join("log"))
        .arg("-f")
        .arg(&file);
    for (name, value) in defines {
        cmd.arg("-D").arg(format!("{name}={value}"));
    }
    let out = cmd.arg(url).output().map_err(|e| {
        format!(
            "cannot run pgbench, which the PostgreSQL floor rows need ({e}); install it \
             (Debian: postgresql-client)"
        )
    })?;
    if !out.status.success() {
        return Err(format!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let mut ends = Vec::with_capacity(transactions);
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("log"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            // client transaction latency script epoch_s epoch_us
            let fields: Vec<u64> = line
                .split_whitespace()
                .filter_map(|f| f.parse().ok())
                .collect();
            if let [_, _, _, _, secs, micros, ..] = fields[..] {
                ends.push(secs * 1_000_000 + micros);
            }
        }
    }
    ends.sort_unstable();
    Ok(ends
        .windows(2)
        .map(|w| Duration::from_micros(w[1] - w[0]))
        .collect())
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

fn table(rows: &[Row], opts: &Options) -> String {
    let mut out = format!(
        "Uncontended `try_acquire` + `release` of one lock, one task, {} cycles per round, \
         median of {} rounds (blocks of {BLOCK} round trips and {BLOCK} lock cycles \
         alternate; pgbench rows alternate per round). Idle cores: {}. Goal: a cycle costs \
         at most 2.5 round trips.\n\n\
         | lock | round trip p50 / p99 (µs) | acquire+release p50 / p99 (µs) | p50 ratio | p99 ratio | goal ≤ 2.5 | cycle p50 ÷ floor's |\n\
         |---|---:|---:|---:|---:|---|---:|\n",
        opts.iterations,
        opts.rounds,
        if opts.poll_idle {
            "poll (`/dev/cpu_dma_latency` held at 0)"
        } else {
            "the kernel's default idle states"
        }
    );
    for (i, r) in rows.iter().enumerate() {
        // A lock's cycle against its floor's, measured in the same run.
        let vs_floor = match rows.get(i + 1) {
            Some(floor) if !r.floor && floor.floor => {
                format!("{:.2}", r.cycle.p50 / floor.cycle.p50)
            }
            _ => "–".to_string(),
        };
        let (x50, x99) = (
            r.cycle.p50 / r.round_trip.p50,
            r.cycle.p99 / r.round_trip.p99,
        );
        let verdict = if x50 <= 2.5 && x99 <= 2.5 {
            "met"
        } else if x50 <= 2.5 {
            "p50 met, p99 not"
        } else {
            "not met"
        };
        out.push_str(&format!(
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {x50:.2} | {x99:.2} | {verdict} | \
             {vs_floor} |\n",
            r.label, r.round_trip.p50, r.round_trip.p99, r.cycle.p50, r.cycle.p99
        ));
    }
    if !opts.notes {
        return out;
    }
    out.push_str(
        "\nWhat the rows show (measured on this machine, not assumed):\n\n\
         - Floor rows run the same lock operations without this library: the two Redis \
         scripts on the raw `redis` crate, and each PostgreSQL mode's acquire and release \
         statements (`state_lock::postgres_statements`) through `pgbench -M prepared`, whose \
         own `SELECT 1` is its round trip. A lock whose floor is above 2.5 cannot meet the \
         goal on this server by any client. The last column divides a lock's cycle by its \
         floor's: what this library adds to the same operations.\n\
         - Redis: a cycle is two Lua scripts, each one round trip. `INFO commandstats` shows \
         the acquire script (owner check, fencing counter, `TIME`, `SET PX`) at about 5 µs \
         of server time and the release at 1.4 µs, against 0.1 µs for `PING`: on a 17 µs \
         loopback round trip that is a third of one more.\n\
         - PostgreSQL Session: acquire (`pg_try_advisory_lock` + `nextval`) and release \
         (`pg_advisory_unlock`) are one prepared statement each. The p99 carries the \
         sequence's WAL flush: `nextval` logs 32 values ahead, so every 32nd acquire \
         commits with an fsync, which is what keeps tokens increasing across a server \
         crash.\n\
         - PostgreSQL Lease: acquire (an `INSERT … ON CONFLICT` upsert under a \
         transaction-level advisory lock, with `nextval`) and release (a `DELETE`) are \
         write transactions, prepared on a direct connection (through a pooler they are \
         sent as simple queries and are slower); each costs 1.5 to 2.5 times a `SELECT 1` \
         on the server, so two of them cannot fit in 2.5 round trips.\n\
         - Idle cores: with the kernel's default idle states a VM's halted vCPU takes tens \
         of µs to wake, and whether a round trip pays that depends on whether the client \
         and the server happen to run on one core; a `SELECT 1` loop and a lock loop can \
         land differently within one run, so those ratios are not comparable. With \
         `--cpu-idle poll` both sides pay the same.\n",
    );
    out
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let opts = options()?;
    let _poll_idle = if opts.poll_idle {
        Some(hold_poll_idle()?)
    } else {
        None
    };
    let mut rows = redis_rows(&opts).await?;
    rows.extend(postgres_rows(&opts).await?);
    print!("{}", table(&rows, &opts));
    Ok(())
}
