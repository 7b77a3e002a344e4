//! One cell of the test matrix: the conformance suite and the model-based properties on
//! the backend and topology `STATE_MATRIX_CELL` names, bare or under the full layer stack
//! (`STATE_MATRIX_LAYERS=bare|full`), with `PROPTEST_CASES` cases per property.
//! `cargo xtask test-all --matrix` runs this binary once per cell and prints the table;
//! the counts go to the file `STATE_MATRIX_REPORT` names.
//!
//! Unset, the cell is `memory` under the full stack, so a plain `cargo test` runs it too.
//! Every cell starts its own servers through the fixtures (a Sentinel or a Cluster, a TLS
//! Redis, a PgBouncer, a streaming replica, containers), except `redis` and `postgres`,
//! which use the shared services (`STATE_TEST_REDIS_URL` / `STATE_TEST_POSTGRES_URL`).

mod support;

use std::any::Any;
use std::sync::Arc;

use state_core::{MemoryBackend, MemoryStore, Stack, StateBackend};
use state_embedded::{Durability, RedbConfig};
use testing::conformance::Factory;
use testing::matrix::{CELL_ENV, LAYERS_ENV};
use testing::services::{
    self, LocalPostgres, LocalPostgresOptions, LocalRedis, LocalRedisOptions, PgBouncer,
    RedisCluster, RedisSentinel, RedisTls, ServiceError, TestCerts,
};

/// Every cell this binary knows, in the matrix's order.
const CELLS: &[&str] = &[
    "memory",
    "redb-immediate",
    "redb-eventual",
    "redis",
    "redis-sentinel",
    "redis-sentinel-replicas",
    "redis-cluster",
    "redis-cluster-replicas",
    "redis-tls",
    "redis-container",
    "postgres",
    "postgres-pgbouncer",
    "postgres-replica-reads",
    "postgres-container",
];

/// Conformance cases at a time: most of a case's time is spent waiting (on a server, or
/// for a TTL to pass), so more than the cores.
const PARALLEL: usize = 8;

/// What a cell started and must keep running until its suites are done.
type Keep = Vec<Box<dyn Any>>;

#[test]
fn matrix_cell_passes_the_suites() {
    let cell = std::env::var(CELL_ENV).unwrap_or_else(|_| "memory".to_owned());
    let layers = std::env::var(LAYERS_ENV).unwrap_or_else(|_| "full".to_owned());
    assert!(
        CELLS.contains(&cell.as_str()),
        "{CELL_ENV}={cell} is not a cell; the cells are {CELLS:?}"
    );
    let stack = match layers.as_str() {
        "bare" => Stack::new(),
        "full" => support::full_stack(),
        other => panic!("{LAYERS_ENV}={other} is not a layer set; use bare or full"),
    };
    let runtime = testing::conformance::runtime();
    let mut keep: Keep = Vec::new();
    let factory = runtime
        .block_on(open(&cell, stack, &mut keep))
        .unwrap_or_else(|e| panic!("cell {cell}: its servers did not start: {e}"));
    let report = testing::matrix::run_cell(&factory, PARALLEL);
    eprintln!("cell {cell} ({layers}): {}", report.line());
    report
        .write()
        .unwrap_or_else(|e| panic!("cannot write the cell's report: {e}"));
    runtime.block_on(async move { drop(keep) });
    assert!(
        report.failed.is_empty(),
        "cell {cell} ({layers}): {} of {} cases failed, in {:?} (their panics are above)",
        report.cases - report.passed,
        report.cases,
        report.failed
    );
}

/// Starts what `cell` needs (kept in `keep`) and returns its factory under `stack`.
async fn open(cell: &str, stack: Stack, keep: &mut Keep) -> Result<Factory, ServiceError> {
    let factory = match cell {
        "memory" => {
            // One store for the whole run, so namespaces share storage as on a server.
            let store = MemoryStore::new();
            support::layered(stack, move |namespace| {
                let backend = MemoryBackend::builder()
                    .store(store.clone())
                    .key_prefix(namespace)
                    .build()
                    .unwrap_or_else(|e| panic!("cannot build the memory backend: {e}"));
                async move { Arc::new(backend) as Arc<dyn StateBackend> }
            })
        }
        "redb-immediate" => redb(stack, Durability::Immediate, keep)?,
        "redb-eventual" => redb(
            stack,
            Durability::Eventual {
                flush_interval: Durability::DEFAULT_FLUSH_INTERVAL,
            },
            keep,
        )?,
        "redis" => redis(stack, services::redis().await?.url(), None),
        "redis-sentinel" | "redis-sentinel-replicas" => {
            let sentinel = RedisSentinel::start().await?;
            let url = replica_reads(cell, sentinel.url());
            keep.push(Box::new(sentinel));
            redis(stack, url, None)
        }
        "redis-cluster" | "redis-cluster-replicas" => {
            let cluster = RedisCluster::start().await?;
            let url = replica_reads(cell, cluster.url());
            keep.push(Box::new(cluster));
            redis(stack, url, None)
        }
        "redis-tls" => {
            let certs = TestCerts::generate().await?;
            let ca = certs.read(&certs.ca_cert())?;
            let server = LocalRedis::start(LocalRedisOptions {
                files: vec![
                    ("ca.crt".into(), ca.clone()),
                    ("server.crt".into(), certs.read(&certs.server_cert())?),
                    ("server.key".into(), certs.read(&certs.server_key())?),
                ],
                tls: Some(RedisTls {
                    cert_file: "server.crt".into(),
                    key_file: "server.key".into(),
                    ca_file: "ca.crt".into(),
                    auth_clients: false,
                }),
                ..LocalRedisOptions::default()
            })
            .await?;
            let url = server.url();
            keep.push(Box::new(server));
            keep.push(Box::new(certs));
            redis(stack, url, Some(ca))
        }
        "redis-container" => redis(stack, container(true, keep).await?, None),
        "postgres" => postgres(stack, services::postgres_url().await?, None).await,
        "postgres-pgbouncer" => {
            let direct = services::postgres_url().await?;
            let bouncer = PgBouncer::start(&direct).await?;
            let url = format!("{}?pgbouncer=true", bouncer.url("test"));
            keep.push(Box::new(bouncer));
            // Migrations run on the direct connection, as the guide says to.
            postgres(stack, url, Some(direct)).await
        }
        "postgres-replica-reads" => {
            // A synchronous standby and `remote_apply`: a write is acknowledged once the
            // replica has applied it, so reads there see it (what the suites check).
            let primary = LocalPostgres::start(LocalPostgresOptions {
                config: vec!["synchronous_standby_names = '*'".to_owned()],
                ..LocalPostgresOptions::default()
            })
            .await?;
            // Migrated before the replica is cloned (so it starts with the tables), with a
            // local commit: no standby is there yet to confirm it.
            support::migrate(&format!("{}?synchronous_commit=local", primary.url())).await;
            let replica = primary.start_replica().await?;
            let url = format!(
                "{}?replicas=127.0.0.1:{}&read_from=replicas&synchronous_commit=remote_apply",
                primary.url(),
                replica.port()
            );
            keep.push(Box::new(replica));
            keep.push(Box::new(primary));
            support::layered(stack, move |namespace| {
                support::postgres(url.clone(), namespace)
            })
        }
        "postgres-container" => postgres(stack, container(false, keep).await?, None).await,
        other => return Err(ServiceError::from_message(format!("no cell {other}"))),
    };
    Ok(factory)
}

/// `url` with reads from replicas for the `-replicas` cells, each write acknowledged only
/// once a replica has it (`WAIT 1`): what lets reads there see it, as the suites check.
fn replica_reads(cell: &str, url: String) -> String {
    if !cell.ends_with("-replicas") {
        return url;
    }
    let joint = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joint}read_from=replicas&wait_replicas=1")
}

fn redb(stack: Stack, durability: Durability, keep: &mut Keep) -> Result<Factory, ServiceError> {
    let dir = tempfile::tempdir()
        .map_err(|e| ServiceError::from_message(format!("no temporary directory: {e}")))?;
    // One file for the run: redb opens a file once, and namespaces share its storage.
    let database = RedbConfig::new(dir.path().join("matrix.redb"))
        .durability(durability)
        .open()
        .map_err(|e| ServiceError::from_message(format!("cannot open the redb file: {e}")))?;
    keep.push(Box::new(dir));
    let database = Arc::new(database);
    Ok(support::layered(stack, move |namespace| {
        let backend = database.with_prefix(namespace);
        async move { Arc::new(backend) as Arc<dyn StateBackend> }
    }))
}

fn redis(stack: Stack, url: String, ca: Option<Vec<u8>>) -> Factory {
    support::layered(stack, move |namespace| {
        support::redis(url.clone(), namespace, ca.clone())
    })
}

/// Migrates the schema through `direct` (else `url` itself), then a factory on `url`.
async fn postgres(stack: Stack, url: String, direct: Option<String>) -> Factory {
    support::migrate(direct.as_deref().unwrap_or(&url)).await;
    support::layered(stack, move |namespace| {
        support::postgres(url.clone(), namespace)
    })
}

#[cfg(feature = "containers")]
async fn container(redis: bool, keep: &mut Keep) -> Result<String, ServiceError> {
    use testing::services::containers;
    if !containers::docker_reachable().await {
        return Err(ServiceError::from_message(
            "no Docker engine answers: run `cargo xtask services up` as root and export \
             what it prints (DOCKER_HOST, STATE_TEST_REDIS_IMAGE, STATE_TEST_POSTGRES_IMAGE)",
        ));
    }
    let started = if redis {
        containers::start_redis().await?
    } else {
        containers::start_postgres().await?
    };
    let url = started.url();
    keep.push(Box::new(started));
    Ok(url)
}

#[cfg(not(feature = "containers"))]
async fn container(_redis: bool, _keep: &mut Keep) -> Result<String, ServiceError> {
    Err(ServiceError::from_message(
        "the container cells need the `containers` feature of `testing` \
         (cargo test -p testing --features containers --test matrix)",
    ))
}
