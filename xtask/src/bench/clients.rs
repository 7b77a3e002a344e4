//! The clients of `cargo xtask bench peers` (ours and each peer) per engine: where they
//! run, how one run of one client is started, and the shape options they all take. Used
//! by the tables (bench/peers.rs) and the curves (bench/scaling.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use super::embedded::RAW_CACHE_SIZE;
use super::measure::{Case, Stats, case, json_string, run_one};
use super::postgres::{base_url, find_tool, psql, with_params};
use super::tools::unique;

/// Server connections a pooled client may open: ours and the pool peers alike.
pub(super) const POOL: u64 = 16;

/// Where an engine's clients run.
pub(super) enum Target {
    /// A private `redis-server` (its URL).
    Redis(String),
    /// The shared PostgreSQL: ours works in a fresh schema per run, dropped afterwards.
    Postgres {
        url: String,
        psql: PathBuf,
        id: String,
    },
    /// A redb file in the scratch directory, removed before every run.
    Redb(PathBuf),
}

/// One engine: its clients and where they run.
pub(super) struct Engine {
    pub(super) key: &'static str,
    pub(super) title: &'static str,
    /// `bench-ref` engine argument, then each peer's `--client` value (redb has one peer,
    /// the raw engine, and no `--client`).
    pub(super) bench_ref: &'static str,
    pub(super) peers: &'static [&'static str],
    /// The peers that can run at every concurrency of the curves.
    pub(super) curve_peers: &'static [&'static str],
    pub(super) target: Target,
    pub(super) cases: Vec<Case>,
    pub(super) ours_note: &'static str,
}

/// The programs and scratch space every run uses.
pub(super) struct Tools {
    pub(super) statectl: PathBuf,
    pub(super) bench_ref: PathBuf,
    pub(super) scratch: PathBuf,
    pub(super) json: PathBuf,
}

/// What one run of one client reported.
pub(super) struct Sample {
    pub(super) stats: Stats,
    pub(super) execution: String,
}

impl Engine {
    /// Runs `client` ("ours" or a peer) once: `tasks` tasks, the rest of the shape in the
    /// options `shape` (see [`shape`]).
    pub(super) fn run(
        &self,
        tools: &Tools,
        client: &str,
        tasks: u64,
        shape: &[String],
    ) -> Result<Sample> {
        let mut cmd;
        let mut schema = None;
        if client == "ours" {
            cmd = Command::new(&tools.statectl);
            let url = match &self.target {
                Target::Redis(url) => url.clone(),
                Target::Postgres { url, id, .. } => {
                    let name = format!("peers_{id}_{}", unique());
                    let pool = tasks.min(POOL);
                    let ours = with_params(
                        url,
                        &format!("schema={name}&pool_min={pool}&pool_max={pool}"),
                    );
                    schema = Some(name);
                    ours
                }
                Target::Redb(db) => {
                    let _ = std::fs::remove_file(db);
                    format!("redb:{}?durability=eventual", db.display())
                }
            };
            cmd.args(["--url", &url, "bench"]);
        } else {
            cmd = Command::new(&tools.bench_ref);
            cmd.arg(self.bench_ref);
            match &self.target {
                Target::Redis(url) | Target::Postgres { url, .. } => {
                    cmd.args(["--url", url, "--client", client]);
                }
                Target::Redb(db) => {
                    let _ = std::fs::remove_file(db);
                    cmd.arg("--path").arg(db).args([
                        "--durability",
                        "none",
                        "--cache-size",
                        RAW_CACHE_SIZE,
                    ]);
                }
            }
        }
        cmd.args(shape)
            .arg("--json")
            .arg(&tools.json)
            .current_dir(&tools.scratch);
        let stats = run_one(&mut cmd, &tools.json);
        if let (Some(name), Target::Postgres { url, psql: bin, .. }) = (schema, &self.target) {
            psql(
                bin,
                url,
                &format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"),
            )?;
        }
        let execution = std::fs::read_to_string(&tools.json)
            .ok()
            .and_then(|text| json_string(&text, "execution"))
            .unwrap_or_default();
        Ok(Sample {
            stats: stats?,
            execution,
        })
    }

    /// "ours" then every peer.
    pub(super) fn clients(&self) -> Vec<&'static str> {
        let mut all = vec!["ours"];
        all.extend(self.peers);
        all
    }
}

/// The options of one case at `tasks` tasks and `value_size`-byte values.
pub(super) fn shape(
    case: &Case,
    ops: u64,
    tasks: u64,
    value_size: u64,
    keyspace: u64,
) -> Vec<String> {
    [
        "--workload",
        case.workload,
        "--ops",
        &ops.to_string(),
        "--concurrency",
        &tasks.to_string(),
        "--value-size",
        &value_size.to_string(),
        "--keyspace",
        &keyspace.to_string(),
        "--batch",
        &case.batch.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

pub(super) fn engines(redis_url: &str, scratch: &Path) -> Result<Vec<Engine>> {
    let point = |get, put, mixed, cas, bget, bput| {
        vec![
            case("get", "get", get, 100),
            case("put", "put", put, 100),
            case("mixed 90/10", "mixed", mixed, 100),
            case("cas", "cas", cas, 100),
            case("batch-get ×100", "batch-get", bget, 100),
            case("batch-put ×100", "batch-put", bput, 100),
        ]
    };
    Ok(vec![
        Engine {
            key: "redis",
            title: "Redis",
            bench_ref: "redis",
            peers: &["multiplexed", "fred", "deadpool", "bb8"],
            curve_peers: &["multiplexed", "fred", "deadpool", "bb8"],
            target: Target::Redis(redis_url.to_string()),
            // Runs of about a second at 64 tasks: runs of a third of one spread by ±20 %
            // within a cell on a 2-core VM.
            cases: point(300_000, 300_000, 300_000, 150_000, 1_000_000, 1_000_000),
            ours_note: "`statectl bench` on `state-redis` with its defaults (one multiplexed \
                        connection per pool slot)",
        },
        Engine {
            key: "postgres",
            title: "PostgreSQL",
            bench_ref: "postgres",
            peers: &["connection", "pgpool", "deadpool", "pipelined"],
            // One dedicated connection per task cannot reach 256 tasks under the server's
            // `max_connections`.
            curve_peers: &["pgpool", "deadpool", "pipelined"],
            // Every client without TLS: the tokio-postgres peers connect with `NoTls`, as
            // their READMEs show, while ours and sqlx's take TLS when the server offers it
            // (`sslmode=prefer`, libpq's default), which on loopback is most of a large
            // value's read (callgrind: 120k against 28k instructions per 16 KiB get).
            target: Target::Postgres {
                url: with_params(&base_url(), "sslmode=disable"),
                psql: find_tool("psql")?,
                id: std::process::id().to_string(),
            },
            // The batch runs last about two seconds for ours: at under one second (300k and
            // 100k keys) one cell's runs spread by ±20 %, more than the gaps they measured.
            cases: point(100_000, 30_000, 50_000, 20_000, 1_000_000, 200_000),
            ours_note: "`statectl bench` on `state-postgres`, `pool_min = pool_max = min(tasks, \
                        16)`, coalescing on (its default), a fresh schema per run; every \
                        client here connects with `sslmode=disable` (the tokio-postgres peers \
                        have no TLS)",
        },
        Engine {
            key: "redb",
            title: "redb (commits without fsync)",
            bench_ref: "redb",
            peers: &["raw"],
            curve_peers: &["raw"],
            target: Target::Redb(scratch.join("peers.redb")),
            // Reads of about a second or more, for the same reason (half a second before).
            cases: point(2_000_000, 50_000, 100_000, 50_000, 2_000_000, 200_000),
            ours_note: "`statectl bench` on `redb:…?durability=eventual` (flushed every 1 s); \
                        the peer is the raw redb API with `Durability::None` and the same \
                        64 MiB cache, OS threads sharing one `Database`",
        },
    ])
}
