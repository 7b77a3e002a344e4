//! What the compression layer does to 16 KiB and 256 KiB values on the shared Redis and
//! PostgreSQL, compressible (JSON-like text) and random: the bytes the server keeps, and
//! put and get throughput with and without the layer.
//!
//! As a test (a few calls per case) it checks what must hold on real servers: text is
//! stored in less than half its size, random data as it is, and every value reads back.
//! `cargo xtask bench compression` runs it in release with `COMPRESSION_BENCH_OPS` calls per
//! case and `COMPRESSION_BENCH_RUNS` runs, and reads the table it writes to the file
//! `COMPRESSION_BENCH_OUT` names (tab-separated, one line per case and run).
//!
//! Redis keys live under a prefix of their own, PostgreSQL rows in a schema of its own;
//! both are removed at the end, whatever happened.

mod support;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use state_core::{CompressionLayer, Layer, StateBackend};
use testing::services;

/// The value sizes measured.
const SIZES: [usize; 2] = [16 << 10, 256 << 10];
/// Calls per case and operation when `COMPRESSION_BENCH_OPS` is unset: a test, not numbers.
const TEST_OPS: usize = 4;

/// The layer of each mode; `None`: bare.
fn modes() -> [(&'static str, Option<CompressionLayer>); 3] {
    [
        ("none", None),
        ("lz4", Some(CompressionLayer::lz4())),
        ("zstd-3", Some(CompressionLayer::zstd(3))),
    ]
}

/// JSON-like records, each a little different, as a service would store them.
fn text(len: usize) -> Vec<u8> {
    let mut out = String::with_capacity(len + 128);
    let mut i = 0u64;
    while out.len() < len {
        let _ = writeln!(
            out,
            "{{\"id\": {i}, \"user\": \"user-{}\", \"score\": {}, \"tags\": [\"alpha\", \
             \"beta\"], \"active\": {}}}",
            i % 97,
            i * 7919 % 1000,
            i.is_multiple_of(3)
        );
        i += 1;
    }
    out.truncate(len);
    out.into_bytes()
}

/// Incompressible bytes (xorshift).
fn random(len: usize) -> Vec<u8> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}=`{v}` is not a number")),
        Err(_) => default,
    }
}

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{}_{nanos}", std::process::id())
}

/// Runs a command, returning its trimmed stdout; panics with its stderr.
async fn output(program: &str, args: &[&str]) -> String {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Where a case runs, and how to ask the server what it keeps for a key.
enum Server {
    Redis { url: String },
    Postgres { url: String, schema: String },
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Redis { .. } => "redis",
            Server::Postgres { .. } => "postgres",
        }
    }

    async fn open(&self, prefix: &str) -> Arc<dyn StateBackend> {
        match self {
            Server::Redis { url } => support::redis(url.clone(), prefix.to_owned(), None).await,
            Server::Postgres { url, schema } => {
                let config = support::postgres_config(url)
                    .with_schema(schema)
                    .with_key_prefix(prefix)
                    .with_pool_size(1, 2)
                    .with_migrations(false);
                match state_postgres::PostgresStateBackend::new(config).await {
                    Ok(backend) => Arc::new(backend),
                    Err(e) => panic!("cannot open the PostgreSQL backend: {e}"),
                }
            }
        }
    }

    /// What the server keeps for `key`: Redis's `MEMORY USAGE`, PostgreSQL's
    /// `pg_column_size` of the value (after TOAST's own compression).
    async fn footprint(&self, key: &str) -> u64 {
        let answer = match self {
            Server::Redis { url } => {
                output("redis-cli", &["-u", url, "MEMORY", "USAGE", key]).await
            }
            Server::Postgres { url, schema } => {
                let sql = format!(
                    "SELECT pg_column_size(value) FROM \"{schema}\".state_entries \
                     WHERE key = convert_to('{key}', 'UTF8')"
                );
                output(
                    "psql",
                    &["-X", "-At", "-v", "ON_ERROR_STOP=1", url, "-c", &sql],
                )
                .await
            }
        };
        answer
            .parse()
            .unwrap_or_else(|_| panic!("{}: no size for {key}: `{answer}`", self.name()))
    }
}

/// One measured case: throughput and what is stored.
struct Measured {
    put_ops: f64,
    get_ops: f64,
    /// The stored value's length (what a client without the layer reads).
    stored: usize,
    /// What the server keeps for it.
    footprint: u64,
}

async fn measure(
    server: &Server,
    layer: Option<CompressionLayer>,
    value: &[u8],
    ops: usize,
) -> Measured {
    let prefix = format!("cbench:{}:", unique());
    let bare = server.open(&prefix).await;
    let backend = match layer {
        Some(layer) => layer.layer(bare.clone()),
        None => bare.clone(),
    };
    let keys: Vec<String> = (0..ops).map(|i| format!("k{i}")).collect();
    let start = Instant::now();
    for key in &keys {
        backend
            .put(key.as_bytes(), value)
            .await
            .unwrap_or_else(|e| panic!("put: {e}"));
    }
    let put_ops = ops as f64 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for key in &keys {
        let got = backend.get(key.as_bytes()).await;
        let got = got.unwrap_or_else(|e| panic!("get: {e}"));
        assert_eq!(got.as_deref(), Some(value), "{key} reads back");
    }
    let get_ops = ops as f64 / start.elapsed().as_secs_f64();
    let stored = bare
        .get(b"k0")
        .await
        .unwrap_or_else(|e| panic!("bare get: {e}"))
        .map_or(0, |v| v.len());
    let footprint = server.footprint(&format!("{prefix}k0")).await;
    bare.clear(b"")
        .await
        .unwrap_or_else(|e| panic!("cannot remove the bench keys under {prefix}: {e}"));
    Measured {
        put_ops,
        get_ops,
        stored,
        footprint,
    }
}

async fn run_server(server: &Server, ops: usize, runs: usize, table: &mut String) {
    for size in SIZES {
        // Fewer calls of the large values: each moves 16 times the bytes.
        let ops = if size > 16 << 10 {
            ops.div_ceil(4)
        } else {
            ops
        };
        for (data, value) in [("text", text(size)), ("random", random(size))] {
            // Modes interleaved run by run, so that a busy spell of the machine falls on
            // every mode alike rather than on one.
            for run in 0..runs {
                for (mode, layer) in modes() {
                    let m = measure(server, layer, &value, ops).await;
                    let compressed = layer.is_some() && data == "text";
                    if compressed {
                        assert!(m.stored < size / 2, "{mode} {data} {size}: {}", m.stored);
                    } else {
                        assert_eq!(m.stored, size, "{mode} {data} {size}: kept as is");
                    }
                    let _ = writeln!(
                        table,
                        "{}\t{size}\t{data}\t{mode}\t{run}\t{:.1}\t{:.1}\t{}\t{}",
                        server.name(),
                        m.put_ops,
                        m.get_ops,
                        m.stored,
                        m.footprint
                    );
                }
            }
        }
    }
}

#[test]
fn compression_shrinks_text_and_keeps_random_data_on_real_servers() {
    let ops = env_number("COMPRESSION_BENCH_OPS", TEST_OPS).max(1);
    let runs = env_number("COMPRESSION_BENCH_RUNS", 1).max(1);
    let runtime = testing::conformance::runtime();
    let mut table = String::new();
    runtime.block_on(async {
        let redis = Server::Redis {
            url: services::redis()
                .await
                .unwrap_or_else(|e| panic!("no Redis: {e}"))
                .url(),
        };
        run_server(&redis, ops, runs, &mut table).await;
        let url = services::postgres_url()
            .await
            .unwrap_or_else(|e| panic!("no PostgreSQL: {e}"));
        let schema = format!("cbench_{}", unique());
        let config = support::postgres_config(&url).with_schema(&schema);
        let migrated = state_postgres::migrate(&config).await;
        let server = Server::Postgres {
            url: url.clone(),
            schema: schema.clone(),
        };
        // Run, then drop the schema whatever happened, then report.
        let outcome = match migrated {
            Ok(_) => {
                let run = run_server(&server, ops, runs, &mut table);
                futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(run)).await
            }
            Err(e) => Err(Box::new(format!("migrating {schema} failed: {e}"))
                as Box<dyn std::any::Any + Send>),
        };
        let drop = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        output(
            "psql",
            &["-X", "-q", "-v", "ON_ERROR_STOP=1", &url, "-c", &drop],
        )
        .await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    });
    assert_eq!(
        table.lines().count(),
        2 * SIZES.len() * 2 * 3 * runs,
        "every case ran"
    );
    if let Ok(path) = std::env::var("COMPRESSION_BENCH_OUT") {
        std::fs::write(&path, &table).unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
}
