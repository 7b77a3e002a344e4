//! Latency histograms, the results table and the JSON report, shared by `statectl bench` and
//! `bench-ref` so both sides of a ratio are measured and rounded the same way.
//!
//! Memory stays bounded: each worker keeps one HDR histogram (nanoseconds, 3 significant
//! digits, a few hundred KB), never per-operation samples.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::plan::{Op, Shape};

/// The slowest latency recorded exactly; slower calls are counted at this value.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// One worker's (or one op's merged) latency histogram.
#[derive(Debug, Clone)]
pub struct Latencies(Histogram<u64>);

impl Latencies {
    /// An empty histogram; clone it for each worker.
    pub fn new() -> Result<Latencies, String> {
        Histogram::new_with_max(MAX_LATENCY_NS, 3)
            .map(Latencies)
            .map_err(|e| format!("could not create a latency histogram ({e:?})"))
    }

    /// Records one call's latency.
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(ns.max(1));
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Latencies) -> Result<(), String> {
        self.0
            .add(&other.0)
            .map_err(|e| format!("could not merge latency histograms ({e:?})"))
    }

    /// How many calls were recorded.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The latency at quantile `q` (0.5, 0.99, 0.999) in microseconds.
    pub fn quantile_us(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1_000.0
    }
}

/// The measurement of one op.
#[derive(Debug, Clone)]
pub struct OpResult {
    /// Which op.
    pub op: Op,
    /// Keys handled: calls for point ops, entries for batch ops.
    pub ops: u64,
    /// Calls made (batches, for batch ops).
    pub calls: u64,
    /// Keys per call.
    pub keys_per_call: u64,
    /// Wall time from the first call's start to the last call's end.
    pub elapsed: Duration,
    /// Latency of each call (per batch, for batch ops).
    pub latencies: Latencies,
    /// CPU time the whole process used while the op ran (all threads), where known.
    pub cpu: Option<Duration>,
    /// Calls that failed, by kind of error (`statectl bench` without `--fail-fast` goes on
    /// after an error and counts it here); `ops`, `calls` and the latencies count only the
    /// calls that succeeded.
    pub errors: BTreeMap<String, u64>,
}

impl OpResult {
    /// The result of running `op` in `shape`: `elapsed` wall time, the merged `latencies`,
    /// and the process CPU time since `cpu_before` (a [`process_cpu_time`] reading taken
    /// when the op started).
    pub fn new(
        op: Op,
        shape: &Shape,
        elapsed: Duration,
        latencies: Latencies,
        cpu_before: Option<Duration>,
    ) -> OpResult {
        OpResult {
            op,
            ops: shape.calls(op) * shape.keys_per_call(op),
            calls: shape.calls(op),
            keys_per_call: shape.keys_per_call(op),
            elapsed,
            latencies,
            cpu: cpu_before.and_then(|b| process_cpu_time().map(|a| a.saturating_sub(b))),
            errors: BTreeMap::new(),
        }
    }

    /// The same row with `errors` (failed calls by kind): the failed calls leave `calls`
    /// and `ops`, so that throughput counts only what succeeded.
    pub fn with_errors(mut self, errors: BTreeMap<String, u64>) -> OpResult {
        let failed: u64 = errors.values().sum();
        self.calls = self.calls.saturating_sub(failed);
        self.ops = self.calls * self.keys_per_call;
        self.errors = errors;
        self
    }

    /// How many calls failed.
    pub fn failed_calls(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Keys per second.
    pub fn ops_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }

    /// The JSON object of this row.
    pub fn to_json(&self) -> Value {
        let mut row = json!({
            "op": self.op.name(),
            "ops": self.ops,
            "ops_per_sec": round(self.ops_per_sec(), 1),
            "p50_us": round(self.latencies.quantile_us(0.5), 3),
            "p99_us": round(self.latencies.quantile_us(0.99), 3),
            "p999_us": round(self.latencies.quantile_us(0.999), 3),
            "elapsed_ms": round(self.elapsed.as_secs_f64() * 1e3, 3),
        });
        if let Some(obj) = row.as_object_mut() {
            if self.op.is_batch() {
                obj.insert("batches".into(), self.calls.into());
                obj.insert("batch_size".into(), self.keys_per_call.into());
            }
            if let Some(cpu) = self.cpu {
                obj.insert("cpu_ms".into(), round(cpu.as_secs_f64() * 1e3, 1).into());
            }
            if !self.errors.is_empty() {
                obj.insert("errors".into(), json!(self.errors));
            }
        }
        row
    }
}

/// User plus system CPU time of this process so far (every thread), from `/proc/self/stat`;
/// `None` where that file does not exist. Its 10 ms tick is fine for phases of seconds, and
/// unlike wall time it does not move when other programs load the machine.
pub fn process_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may contain spaces; the fields after it start at `state`.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ, the unit of these fields, is 100 on every Linux architecture in use.
    Some(Duration::from_millis((utime + stime) * 10))
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}

/// A whole run: what was measured where, and the rows.
#[derive(Debug, Clone)]
pub struct Report {
    /// The program and mode (`statectl`, `bench-ref redb`).
    pub tool: String,
    /// The target, with any password already removed.
    pub url: String,
    /// The options of the run.
    pub shape: Shape,
    /// How the workers run (`tokio tasks`, `OS threads`…).
    pub execution: String,
    /// One row per op, in run order.
    pub results: Vec<OpResult>,
}

impl Report {
    /// The JSON document: `{"url":…, "results":[{"op":…, "ops":…, "ops_per_sec":…,
    /// "p50_us":…, "p99_us":…, "p999_us":…}, …]}` plus the options of the run.
    pub fn to_json(&self) -> Value {
        json!({
            "tool": self.tool,
            "url": self.url,
            "execution": self.execution,
            "concurrency": self.shape.concurrency,
            "value_size": self.shape.value_size,
            "keyspace": self.shape.keyspace,
            "batch": self.shape.batch,
            "results": self.results.iter().map(OpResult::to_json).collect::<Vec<_>>(),
        })
    }

    /// Writes [`to_json`](Self::to_json) to `path`, with a sentence saying what failed.
    pub fn write_json(&self, path: &Path) -> Result<(), String> {
        let mut text = serde_json::to_string_pretty(&self.to_json())
            .map_err(|e| format!("could not encode the JSON report ({e})"))?;
        text.push('\n');
        std::fs::write(path, text).map_err(|e| {
            format!(
                "could not write the JSON report to {} ({e})",
                path.display()
            )
        })
    }

    /// The results as an aligned text table, with a note on what batch rows count.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} on {} ({}; concurrency {}, value {} B, keyspace {})",
            self.tool,
            self.url,
            self.execution,
            self.shape.concurrency,
            self.shape.value_size,
            self.shape.keyspace
        );
        let _ = writeln!(
            out,
            "{:<10} {:>10} {:>9} {:>12} {:>10} {:>10} {:>10}",
            "op", "ops", "batches", "ops/s", "p50 µs", "p99 µs", "p99.9 µs"
        );
        for r in &self.results {
            let batches = if r.op.is_batch() {
                format!("{}x{}", r.calls, r.keys_per_call)
            } else {
                "-".to_string()
            };
            let _ = writeln!(
                out,
                "{:<10} {:>10} {:>9} {:>12.0} {:>10.1} {:>10.1} {:>10.1}",
                r.op.name(),
                r.ops,
                batches,
                r.ops_per_sec(),
                r.latencies.quantile_us(0.5),
                r.latencies.quantile_us(0.99),
                r.latencies.quantile_us(0.999),
            );
        }
        if self.results.iter().any(|r| r.op.is_batch()) {
            let _ = writeln!(
                out,
                "batch rows: ops and ops/s count keys (entries); latencies are per batch call"
            );
        }
        for r in self.results.iter().filter(|r| !r.errors.is_empty()) {
            let kinds: Vec<String> = r.errors.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let _ = writeln!(
                out,
                "{}: {} calls failed ({}); the rows count only the calls that succeeded",
                r.op.name(),
                r.failed_calls(),
                kinds.join(", ")
            );
        }
        out
    }
}

/// `url` without its password (`user:***`), for the report.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_string()
            };
            format!("{}{masked}{}", &url[..scheme_end + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_json_rows() -> Result<(), String> {
        let mut a = Latencies::new()?;
        let mut b = a.clone();
        for us in 1..=1000u64 {
            a.record(Duration::from_micros(us));
        }
        b.record(Duration::from_secs(3600)); // saturates instead of failing
        a.merge(&b)?;
        assert_eq!(a.len(), 1001);
        let p50 = a.quantile_us(0.5);
        assert!((499.0..=502.0).contains(&p50), "{p50}");
        let row = OpResult {
            op: Op::BatchPut,
            ops: 1000,
            calls: 10,
            keys_per_call: 100,
            elapsed: Duration::from_millis(500),
            latencies: a,
            cpu: Some(Duration::from_millis(120)),
            errors: BTreeMap::new(),
        };
        let json = row.to_json();
        assert_eq!(json["op"], "batch-put");
        assert_eq!(json["ops_per_sec"], 2000.0);
        assert_eq!(json["batches"], 10);
        assert!(json["p999_us"].as_f64().is_some_and(|v| v >= p50));
        assert_eq!(json["cpu_ms"], 120.0);
        assert!(json.get("errors").is_none());
        let failed = row.with_errors(BTreeMap::from([("connection".to_string(), 2)]));
        let json = failed.to_json();
        assert_eq!(json["batches"], 8);
        assert_eq!(json["ops"], 800);
        assert_eq!(json["errors"]["connection"], 2);
        Ok(())
    }

    #[test]
    fn cpu_time_is_read_and_grows() {
        let before = process_cpu_time();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = process_cpu_time();
        assert!(before.is_some() && after >= before, "{before:?} {after:?}");
    }

    #[test]
    fn the_password_is_masked() {
        assert_eq!(redacted("redis://u:secret@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(redacted("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redacted("redis://h:1"), "redis://h:1");
        assert_eq!(
            redacted("postgres://u:secret@h:1/db"),
            "postgres://u:***@h:1/db"
        );
    }
}
