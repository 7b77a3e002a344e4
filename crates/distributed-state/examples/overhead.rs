//! What the observing layers cost, measured through the registry by URL, so it measures
//! whatever `stats=true&metrics=true&tracing=true` builds today:
//!
//! ```text
//! cargo run --release -p distributed-state --example overhead -- \
//!     [--calls N] [--runs R] [--seconds S] [--slice S] [--concurrency C] \
//!     [--redis URL | --no-redis] [--each-layer] [--layers QUERY]
//! ```
//!
//! - `memory://`: one task, `--calls` gets of one existing key (default 2,000,000), bare
//!   (`memory://`) and layered (`memory://?stats=true&metrics=true&tracing=true`) one after
//!   the other, `--runs` pairs (default 5), alternating which side goes first. Nanoseconds per
//!   get of each run.
//! - Redis (`--redis`, else `$STATE_TEST_REDIS_URL`, else `redis://127.0.0.1:6379`): point
//!   gets of 1000 existing 64-byte values by `--concurrency` tasks (default 16) on a
//!   multi-thread runtime for `--seconds` each (default 3), the same pairs; each run is cut
//!   into slices of `--slice` seconds (default 0.1), the two sides' slices alternating, so
//!   that a burst of other work lands on both (whole runs back to back moved by up to 40%
//!   on a shared 2-core machine). Gets per second and the process's CPU time per get of
//!   each run. The keys live under a prefix of this run's own (`prefix=bench:overhead:…:`),
//!   removed at the end. `--layers stats=true` (say) puts other layers on the layered Redis
//!   side (and on the memory one), to see what each one costs.
//!
//! The real Prometheus recorder is installed (on 127.0.0.1, a free port) before any layered
//! backend is opened; no tracing subscriber is. `--each-layer` then measures each layer
//! alone on `memory://` (interleaved rounds, medians) and prints that on stderr.
//!
//! Prints one JSON object on stdout, every run's figure in order (what `cargo xtask bench
//! overhead` reads, summarises and writes to BENCHMARKS.md), progress on stderr.

use std::error::Error;
use std::fmt::Write as _;
use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bench_plan::report::process_cpu_time;
use distributed_state::{Registry, StateBackend};
use tokio::task::JoinSet;

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

/// The URL parameters of the layered side: every observing layer, as a service turns them on.
const LAYERS: &str = "stats=true&metrics=true&tracing=true";
/// The one key the memory gets read.
const KEY: &[u8] = b"overhead:key";
/// Values in bytes, as in every other benchmark of this workspace.
const VALUE_SIZE: usize = 64;
/// Keys the Redis gets cycle through.
const REDIS_KEYS: usize = 1000;
/// A Redis run is cut into slices of about this many seconds (`--slice`), the two sides'
/// slices alternating, so that a burst of other work on the machine lands on both sides.
const SLICE_SECONDS: f64 = 0.1;

struct Options {
    calls: u64,
    runs: usize,
    seconds: f64,
    slice: f64,
    concurrency: usize,
    redis: Option<String>,
    each_layer: bool,
    /// The layered side's URL parameters: [`LAYERS`] unless `--layers` names others.
    layers: String,
}

fn options() -> Result<Options> {
    let mut opts = Options {
        calls: 2_000_000,
        runs: 5,
        seconds: 3.0,
        slice: SLICE_SECONDS,
        concurrency: 16,
        redis: Some(
            std::env::var("STATE_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        ),
        each_layer: false,
        layers: LAYERS.to_string(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--calls" => opts.calls = value()?.parse()?,
            "--runs" => opts.runs = value()?.parse()?,
            "--seconds" => opts.seconds = value()?.parse()?,
            "--slice" => opts.slice = value()?.parse()?,
            "--concurrency" => opts.concurrency = value()?.parse()?,
            "--redis" => opts.redis = Some(value()?),
            "--no-redis" => opts.redis = None,
            "--each-layer" => opts.each_layer = true,
            "--layers" => opts.layers = value()?,
            other => return Err(format!("unknown argument `{other}`").into()),
        }
    }
    if opts.calls == 0 || opts.runs == 0 || opts.concurrency == 0 {
        return Err("--calls, --runs and --concurrency must be at least 1".into());
    }
    if ![opts.seconds, opts.slice]
        .iter()
        .all(|s| s.is_finite() && *s > 0.0)
    {
        return Err("--seconds and --slice must be positive numbers".into());
    }
    Ok(opts)
}

fn main() -> ExitCode {
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime ({e})").into())
        .and_then(|runtime| runtime.block_on(run()));
    match outcome {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("overhead: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<String> {
    let opts = options()?;
    // The real recorder, as a service runs it (its upkeep task drains the histograms),
    // installed before any layered backend registers its handles.
    install_recorder()?;
    let registry = distributed_state::registry();
    let mut json = String::from("{\n");
    let _ = writeln!(json, "  \"calls\": {},", opts.calls);
    let _ = writeln!(json, "  \"runs\": {},", opts.runs);
    let memory = memory(&registry, &opts).await?;
    let _ = writeln!(json, "  \"memory_bare_ns\": {},", array(&memory.bare));
    let _ = write!(json, "  \"memory_layered_ns\": {}", array(&memory.layered));
    if opts.each_layer {
        each_layer(&registry, &opts).await?;
    }
    if let Some(url) = &opts.redis {
        let redis = redis(&registry, url, &opts).await?;
        json.push_str(",\n");
        let _ = writeln!(json, "  \"concurrency\": {},", opts.concurrency);
        let _ = writeln!(json, "  \"seconds\": {},", opts.seconds);
        let _ = writeln!(json, "  \"redis_keys\": {REDIS_KEYS},");
        let _ = writeln!(
            json,
            "  \"redis_bare_ops_per_sec\": {},",
            array(&redis.bare)
        );
        let _ = writeln!(
            json,
            "  \"redis_layered_ops_per_sec\": {},",
            array(&redis.layered)
        );
        let _ = writeln!(
            json,
            "  \"redis_bare_cpu_us_per_op\": {},",
            array(&redis.bare_cpu)
        );
        let _ = write!(
            json,
            "  \"redis_layered_cpu_us_per_op\": {}",
            array(&redis.layered_cpu)
        );
    }
    json.push_str("\n}");
    Ok(json)
}

fn install_recorder() -> Result<()> {
    let addr = "127.0.0.1:0".parse()?;
    distributed_state::metrics::prometheus::install(addr)?;
    Ok(())
}

fn array(values: &[f64]) -> String {
    let items: Vec<String> = values.iter().map(|v| format!("{v:.3}")).collect();
    format!("[{}]", items.join(", "))
}

/// Each pair's two sides, in the order they ran: bare first in even pairs, layered first
/// in odd ones, so neither side always meets the warmer (or busier) machine.
fn order(pair: usize) -> [bool; 2] {
    if pair.is_multiple_of(2) {
        [false, true]
    } else {
        [true, false]
    }
}

fn side(layered: bool) -> &'static str {
    if layered { "layered" } else { "bare" }
}

/// Every run of both sides, in pair order.
#[derive(Default)]
struct Pairs {
    bare: Vec<f64>,
    layered: Vec<f64>,
    bare_cpu: Vec<f64>,
    layered_cpu: Vec<f64>,
}

async fn open_memory(registry: &Registry, url: &str) -> Result<Arc<dyn StateBackend>> {
    let backend = registry.connect(url).await?;
    backend.put(KEY, &[b'v'; VALUE_SIZE]).await?;
    Ok(backend)
}

async fn memory(registry: &Registry, opts: &Options) -> Result<Pairs> {
    let bare = open_memory(registry, "memory://").await?;
    let layered = open_memory(registry, &format!("memory://?{}", opts.layers)).await?;
    // One warm-up run per side (caches, allocator, the recorder's first handles).
    ns_per_get(&bare, opts.calls / 10 + 1).await?;
    ns_per_get(&layered, opts.calls / 10 + 1).await?;
    let mut pairs = Pairs::default();
    for pair in 0..opts.runs {
        for is_layered in order(pair) {
            let backend = if is_layered { &layered } else { &bare };
            let ns = ns_per_get(backend, opts.calls).await?;
            eprintln!(
                "  memory:// pair {} {:<7} {ns:8.1} ns per get",
                pair + 1,
                side(is_layered)
            );
            if is_layered {
                pairs.layered.push(ns);
            } else {
                pairs.bare.push(ns);
            }
        }
    }
    Ok(pairs)
}

/// Wall time per get of `calls` gets of [`KEY`], one after the other on this task.
async fn ns_per_get(backend: &Arc<dyn StateBackend>, calls: u64) -> Result<f64> {
    if backend.get(KEY).await?.is_none() {
        return Err("the memory backend lost its key".into());
    }
    let started = Instant::now();
    for _ in 0..calls {
        black_box(backend.get(black_box(KEY)).await?);
    }
    Ok(started.elapsed().as_nanos() as f64 / calls as f64)
}

/// Each layer alone and all three, rounds interleaved as in the pairs, medians on stderr.
async fn each_layer(registry: &Registry, opts: &Options) -> Result<()> {
    let mut variants = Vec::new();
    let all = format!("?{LAYERS}");
    for (name, query) in [
        ("none", ""),
        ("stats=true", "?stats=true"),
        ("tracing=true", "?tracing=true"),
        ("metrics=true", "?metrics=true"),
        ("all three", all.as_str()),
    ] {
        let backend = open_memory(registry, &format!("memory://{query}")).await?;
        variants.push((name, backend, Vec::new()));
    }
    for round in 0..opts.runs {
        eprintln!("  each layer: round {} of {}", round + 1, opts.runs);
        for (_, backend, times) in &mut variants {
            times.push(ns_per_get(backend, opts.calls).await?);
        }
    }
    let base = median(variants[0].2.clone());
    eprintln!("\n| layers over memory:// | ns per get | added |\n|---|---:|---:|");
    for (name, _, times) in variants {
        let m = median(times);
        eprintln!("| {name} | {m:.0} | {:+.0} |", m - base);
    }
    eprintln!();
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// A run's own key prefix on the shared server: the process id and the clock.
fn unique_prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("bench:overhead:{}_{nanos:x}:", std::process::id())
}

async fn redis(registry: &Registry, url: &str, opts: &Options) -> Result<Pairs> {
    let separator = if url.contains('?') { '&' } else { '?' };
    let bare_url = format!("{url}{separator}prefix={}", unique_prefix());
    let bare = registry.connect(&bare_url).await?;
    eprintln!(
        "  Redis at {} ({} tasks, {} s per run)",
        registry.parse(&bare_url)?.redacted(),
        opts.concurrency,
        opts.seconds
    );
    let outcome = redis_pairs(registry, &bare, &bare_url, opts).await;
    // The keys go whatever happened; a failure to remove them is reported after the
    // measurement's own error, if any.
    let cleared = bare.clear(b"").await;
    let pairs = outcome?;
    cleared.map_err(|e| format!("the benchmark's keys could not be removed: {e}"))?;
    Ok(pairs)
}

async fn redis_pairs(
    registry: &Registry,
    bare: &Arc<dyn StateBackend>,
    bare_url: &str,
    opts: &Options,
) -> Result<Pairs> {
    let keys: Arc<[Vec<u8>]> = (0..REDIS_KEYS)
        .map(|i| format!("k{i:05}").into_bytes())
        .collect();
    let value = [b'v'; VALUE_SIZE];
    let entries: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (&k[..], &value[..])).collect();
    bare.batch_put(&entries).await?;
    let layered = registry
        .connect(&format!("{bare_url}&{}", opts.layers))
        .await?;
    let slices = (opts.seconds / opts.slice).ceil().max(1.0);
    let slice = opts.seconds / slices;
    let warm_up = slice.min(1.0);
    gets_for(bare, &keys, opts.concurrency, warm_up).await?;
    gets_for(&layered, &keys, opts.concurrency, warm_up).await?;
    let mut pairs = Pairs::default();
    for pair in 0..opts.runs {
        let mut tallies = [Tally::default(), Tally::default()];
        for _ in 0..slices as usize {
            for is_layered in order(pair) {
                let backend = if is_layered { &layered } else { bare };
                let t = gets_for(backend, &keys, opts.concurrency, slice).await?;
                tallies[usize::from(is_layered)].add(&t);
            }
        }
        if tallies.iter().any(|t| t.gets == 0) {
            return Err(format!("no Redis get completed in {} s", opts.seconds).into());
        }
        for is_layered in order(pair) {
            let t = &tallies[usize::from(is_layered)];
            let (rate, cpu) = (t.rate(), t.cpu_us_per_get());
            eprintln!(
                "  Redis pair {} {:<7} {rate:10.0} gets/s  CPU {cpu:6.2} µs per get",
                pair + 1,
                side(is_layered)
            );
            if is_layered {
                pairs.layered.push(rate);
                pairs.layered_cpu.push(cpu);
            } else {
                pairs.bare.push(rate);
                pairs.bare_cpu.push(cpu);
            }
        }
    }
    Ok(pairs)
}

/// What some slices of one side did: gets, wall time, the process's CPU time.
struct Tally {
    gets: u64,
    wall: Duration,
    /// `None` where `/proc/self/stat` is missing.
    cpu: Option<Duration>,
}

impl Default for Tally {
    fn default() -> Tally {
        Tally {
            gets: 0,
            wall: Duration::ZERO,
            cpu: Some(Duration::ZERO),
        }
    }
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.gets += other.gets;
        self.wall += other.wall;
        self.cpu = self.cpu.zip(other.cpu).map(|(a, b)| a + b);
    }

    fn rate(&self) -> f64 {
        self.gets as f64 / self.wall.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// CPU µs per get, 0 where unknown.
    fn cpu_us_per_get(&self) -> f64 {
        match self.cpu {
            Some(cpu) if self.gets > 0 => cpu.as_secs_f64() * 1e6 / self.gets as f64,
            _ => 0.0,
        }
    }
}

/// What `concurrency` tasks reading `keys` for `seconds` did.
async fn gets_for(
    backend: &Arc<dyn StateBackend>,
    keys: &Arc<[Vec<u8>]>,
    concurrency: usize,
    seconds: f64,
) -> Result<Tally> {
    let stop = Arc::new(AtomicBool::new(false));
    let cpu_before = process_cpu_time();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for task in 0..concurrency {
        let (backend, keys, stop) = (backend.clone(), keys.clone(), stop.clone());
        tasks.spawn(async move {
            // Tasks start at different keys and each walks the whole set.
            let mut i = task * keys.len() / concurrency;
            let mut gets = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = &keys[i % keys.len()];
                if let Err(e) = backend.get(key).await.and_then(|v| {
                    v.map(drop).ok_or_else(|| {
                        distributed_state::StateError::config("a benchmark key is missing")
                    })
                }) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                i += 1;
                gets += 1;
            }
            Ok(gets)
        });
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut gets = 0;
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(n)) => gets += n,
            Ok(Err(e)) => {
                first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                first_error.get_or_insert(format!("a benchmark task failed: {e}"));
            }
        }
    }
    let elapsed = started.elapsed();
    if let Some(e) = first_error {
        return Err(e.into());
    }
    let cpu = match (cpu_before, process_cpu_time()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before)),
        _ => None,
    };
    Ok(Tally {
        gets,
        wall: elapsed,
        cpu,
    })
}
