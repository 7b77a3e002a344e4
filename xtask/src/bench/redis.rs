//! `cargo xtask bench redis`: ours, the raw `redis` crate loop and `redis-benchmark`, all
//! three on a private `redis-server` started on a free loopback port and stopped afterwards,
//! so `redis-benchmark`'s `key:NNN` keys never touch the shared server.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::measure::{
    Case, KEYSPACE, Row, VALUE_SIZE, case, median_of, paired, run_one, scaled, shape_args,
};
use super::options::Options;
use super::report::{machine, verdict, write_section};
use super::tools::{build_release, reference_output, scratch_dir};
use crate::util::which;

/// 50 tasks on one multiplexed connection, as the issue asks (and `redis-benchmark -c 50`).
const CONCURRENCY: u64 = 50;
/// Requests per `redis-benchmark` test at `-P 1` and at `-P 100`.
const RB_REQUESTS_P1: u64 = 200_000;
const RB_REQUESTS_P100: u64 = 2_000_000;

fn cases() -> Vec<Case> {
    vec![
        case("get", "get", 200_000, 100),
        case("put", "put", 200_000, 100),
        case("batch-get ×100", "batch-get", 2_000_000, 100),
        case("batch-put ×100", "batch-put", 1_000_000, 100),
    ]
}

/// A `redis-server` of our own, killed (by its pid, as our child) on drop.
pub(super) struct PrivateRedis {
    child: Child,
    pub(super) port: u16,
}

impl PrivateRedis {
    pub(super) fn start() -> Result<PrivateRedis> {
        let program = which("redis-server").context(
            "redis-server is not on PATH: the Redis benchmark runs on a private server \
             (install redis-server, e.g. with `cargo xtask services up`)",
        )?;
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("cannot find a free loopback port")?
            .port();
        let child = Command::new(program)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start redis-server")?;
        let server = PrivateRedis { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.answers() {
            if Instant::now() > deadline {
                bail!("the private redis-server on port {port} did not answer within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 16];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    pub(super) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-benchmark`'s requests per second for SET and GET, from its `--csv` output.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct RbRates {
    set: f64,
    get: f64,
}

fn parse_csv(text: &str) -> Option<RbRates> {
    let mut rates = RbRates::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        match (fields.first(), fields.get(1).and_then(|r| r.parse().ok())) {
            (Some(&"SET"), Some(rps)) => rates.set = rps,
            (Some(&"GET"), Some(rps)) => rates.get = rps,
            _ => {}
        }
    }
    (rates.set > 0.0 && rates.get > 0.0).then_some(rates)
}

fn redis_benchmark(program: &Path, port: u16, pipeline: u64, requests: u64) -> Result<RbRates> {
    let mut cmd = Command::new(program);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set,get"])
        .args(["-n", &requests.to_string(), "-c", &CONCURRENCY.to_string()])
        .args(["-d", &VALUE_SIZE.to_string()])
        .args(["-r", &KEYSPACE.to_string()])
        .args(["-P", &pipeline.to_string(), "--csv"]);
    reference_output(&mut cmd, "SET/GET rates", parse_csv)
}

/// One row: ours and raw, plus the `redis-benchmark` rate of the same shape.
struct RedisRow {
    row: Row,
    rb: f64,
    rb_name: &'static str,
}

pub(super) fn run(root: &Path, opts: &Options) -> Result<()> {
    let (statectl, bench_ref) = build_release(root)?;
    let rb_program = which("redis-benchmark")
        .context("redis-benchmark is not on PATH (it comes with redis-server / redis-tools)")?;
    let server = PrivateRedis::start()?;
    println!("redis: private redis-server at {}", server.url());
    let scratch = scratch_dir("redis")?;
    let result = measure(&scratch, &statectl, &bench_ref, &rb_program, &server, opts);
    drop(server);
    let _ = std::fs::remove_dir_all(&scratch);
    let rows = result?;
    let md = markdown(&rows, opts);
    println!("\n{md}");
    if opts.write && !opts.quick {
        write_section(root, "redis", &md)?;
        println!("BENCHMARKS.md updated (section redis).");
    } else {
        println!("BENCHMARKS.md left unchanged (--quick or --no-write).");
    }
    Ok(())
}

fn measure(
    scratch: &Path,
    statectl: &Path,
    bench_ref: &Path,
    rb_program: &Path,
    server: &PrivateRedis,
    opts: &Options,
) -> Result<Vec<RedisRow>> {
    let divisor = if opts.quick { 10 } else { 1 };
    let mut p1 = Vec::new();
    let mut p100 = Vec::new();
    for run in 0..opts.runs {
        let a = redis_benchmark(rb_program, server.port, 1, RB_REQUESTS_P1 / divisor)?;
        let b = redis_benchmark(rb_program, server.port, 100, RB_REQUESTS_P100 / divisor)?;
        println!(
            "  redis-benchmark run {}: -P 1 SET {:.0} GET {:.0} req/s; -P 100 SET {:.0} GET {:.0} req/s",
            run + 1,
            a.set,
            a.get,
            b.set,
            b.get
        );
        p1.push(a);
        p100.push(b);
    }
    let med = |v: &[RbRates], f: fn(&RbRates) -> f64| median_of(v.iter().map(f).collect());
    let json = scratch.join("result.json");
    let url = server.url();
    let mut rows = Vec::new();
    for case in cases() {
        let ops = scaled(&case, opts);
        let shape = shape_args(&case, ops, CONCURRENCY, &json);
        let (ours, raw) = paired(case.label, opts.runs, |is_raw| {
            let mut cmd;
            if is_raw {
                cmd = Command::new(bench_ref);
                cmd.args(["redis", "--url", &url]);
            } else {
                cmd = Command::new(statectl);
                cmd.args(["--url", &url, "bench"]);
            }
            cmd.args(&shape).current_dir(scratch);
            run_one(&mut cmd, &json)
        })?;
        let (rb, rb_name) = match case.workload {
            "get" => (med(&p1, |r| r.get), "GET -P 1"),
            "put" => (med(&p1, |r| r.set), "SET -P 1"),
            "batch-get" => (med(&p100, |r| r.get), "GET -P 100"),
            _ => (med(&p100, |r| r.set), "SET -P 100"),
        };
        rows.push(RedisRow {
            row: Row::new(Case { ops, ..case }, &ours, &raw),
            rb,
            rb_name,
        });
    }
    Ok(rows)
}

fn markdown(rows: &[RedisRow], opts: &Options) -> String {
    let mut md = String::from("## Redis\n\n");
    let _ = writeln!(md, "{}\n", machine());
    let _ = writeln!(
        md,
        "Shape: {CONCURRENCY} concurrent tasks, values of {} B, keyspace {} (filled before \
         read workloads), median of {} runs per side, alternating which side runs first. All \
         three sides run against one private `redis-server` (7.x, no persistence) started on \
         a free loopback port for this benchmark and stopped afterwards. Ours: `statectl \
         bench` ({CONCURRENCY} tokio tasks sharing one `Arc<dyn StateBackend>` over \
         `state-redis`). Raw: `bench-ref redis` ({CONCURRENCY} tokio tasks sharing ONE \
         multiplexed connection of the `redis` crate: `GET`, `SET`, one `MGET` per batch-get, \
         one pipeline of `SET`s per batch-put; the ceiling for our driver). \
         `redis-benchmark -t set,get -c {CONCURRENCY} -d {} -r {} -P 1` (n = {RB_REQUESTS_P1}) \
         for point rows and `-P 100` (n = {RB_REQUESTS_P100}) for batch rows: a batch of 100 \
         keys (one `MGET` of 100 keys, or one pipeline of 100 `SET`s) does the work of one \
         `-P 100` pipeline of 100 `GET`s or `SET`s in one round trip, so batch rows compare \
         keys per second with `redis-benchmark`'s requests per second. Batch latencies are per \
         call. `redis-benchmark` runs first in each run with its own keys (`key:NNN`), which \
         vanish with the private server.\n",
        VALUE_SIZE, KEYSPACE, opts.runs, VALUE_SIZE, KEYSPACE,
    );
    md.push_str(
        "| op | ops | ours ops/s | ours p50 µs | ours p99 µs | raw ops/s | raw p50 µs | raw p99 µs \
         | ours/raw ops/s | ours/raw p99 | redis-benchmark | its keys/s | ours/redis-benchmark \
         | ours CPU µs/op | raw CPU µs/op |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let (o, w) = (&r.row.ours, &r.row.raw);
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | **{:.2}** | {:.2} | \
             `{}` | {:.0} | **{:.2}** | {:.2} | {:.2} |",
            r.row.case.label,
            r.row.case.ops,
            o.ops_per_sec,
            o.p50_us,
            o.p99_us,
            w.ops_per_sec,
            w.p50_us,
            w.p99_us,
            r.row.ratio,
            p99_ratio(&r.row),
            r.rb_name,
            r.rb,
            rb_ratio(r),
            o.cpu_us_per_op,
            w.cpu_us_per_op,
        );
    }
    md.push_str("\nGoals (measured, not asserted):\n\n");
    for r in rows {
        let label = r.row.case.label;
        if r.row.case.batch > 1 && r.row.case.workload.starts_with("batch") {
            let x = rb_ratio(r);
            let _ = writeln!(
                md,
                "- {label} ≥ 0.8 × `redis-benchmark {}` (keys/s): {x:.2} ({})",
                r.rb_name,
                verdict(x, 0.8, false)
            );
        } else {
            let x = r.row.ratio;
            let p = p99_ratio(&r.row);
            let _ = writeln!(
                md,
                "- {label} ≥ 0.9 × raw loop: {x:.2} ({}); p99 ≤ 1.5 × raw p99: {p:.2} ({}); \
                 for reference {:.2} × `redis-benchmark {}`",
                verdict(x, 0.9, false),
                verdict(p, 1.5, true),
                rb_ratio(r),
                r.rb_name
            );
        }
    }
    md
}

fn p99_ratio(row: &Row) -> f64 {
    if row.raw.p99_us > 0.0 {
        row.ours.p99_us / row.raw.p99_us
    } else {
        0.0
    }
}

fn rb_ratio(r: &RedisRow) -> f64 {
    if r.rb > 0.0 {
        r.row.ours.ops_per_sec / r.rb
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"1234.50\",\"0.8\"\n\
                    \"GET\",\"29850.75\",\"0.834\"\n";
        assert_eq!(
            parse_csv(text),
            Some(RbRates {
                set: 1234.5,
                get: 29850.75
            })
        );
        assert_eq!(parse_csv("\"SET\",\"10\"\n"), None);
    }
}
