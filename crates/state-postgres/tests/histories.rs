//! RELIABILITY 29–31 on PostgreSQL: concurrent histories (8 clients, 4 keys, every
//! operation) recorded while the library's own connections are broken every 200 ms, then
//! checked for linearizability and counted for anomalies.
//!
//! The library talks through a `FaultProxy`; the faults rotate between
//! `pg_terminate_backend` of the server processes behind the proxy's upstream connections
//! (never another client's), proxy resets and a reply dropped after the server committed,
//! with one round of half-open connections. One server is linearizable: the history must be, with no anomaly.
//!
//! `STATE_HISTORY_SECS` (default 3) and `STATE_HISTORY_RUNS` (default 1) size the runs;
//! `STATE_HISTORY_LOG` collects their JSON records.

mod common;

use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection as _;
use state_core::StateBackend;
use state_postgres::{PostgresConfig, PostgresStateBackend};
use testing::conformance::unique_namespace;
use testing::faults::{FaultProxy, proxy_in_front_of};
use testing::history::{FaultLog, Trial, WorkloadConfig, trial};

/// How often a fault is injected.
const FAULT_EVERY: Duration = Duration::from_millis(200);

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Terminates the server processes of the proxy's upstream connections; returns how many.
async fn terminate_ours(admin: &mut sqlx::PgConnection, proxy: &FaultProxy) -> usize {
    let ports: Vec<i32> = proxy
        .upstream_local_addrs()
        .iter()
        .map(|a| i32::from(a.port()))
        .collect();
    let terminated = sqlx::query_scalar::<_, i64>(
        // Chosen first, terminated after: in one WHERE clause the server may call
        // pg_terminate_backend before the other conditions, on any backend.
        "WITH ours AS MATERIALIZED ( \
           SELECT pid FROM pg_stat_activity \
           WHERE client_port = ANY($1) AND client_addr = '127.0.0.1' \
             AND pid <> pg_backend_pid()) \
         SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ours",
    )
    .bind(ports)
    .fetch_one(admin)
    .await;
    terminated.map_or(0, |n| usize::try_from(n).unwrap_or(0))
}

/// One fault of the rotation. A half-open connection is noticed only at the client's
/// deadline (statement timeout + 5 s), so it comes once per run, at the sixth fault.
async fn fault(round: usize, proxy: &FaultProxy, admin: &mut sqlx::PgConnection, log: &FaultLog) {
    if round == 5 {
        log.note("half-open", proxy.half_open_all());
        return;
    }
    match round % 3 {
        0 => log.note("pg_terminate_backend", terminate_ours(admin, proxy).await),
        1 => log.note("proxy reset", proxy.reset_all()),
        _ => {
            let lost = proxy.drop_next_reply();
            let dropped = tokio::time::timeout(FAULT_EVERY / 2, lost.dropped()).await;
            log.note("reply dropped", usize::from(dropped.is_ok()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histories_under_connection_faults_are_linearizable() -> TestResult {
    let url = common::url().await;
    for run in 0..trial::runs() {
        let config = WorkloadConfig {
            prefix: unique_namespace(),
            duration: trial::run_duration(),
            ..WorkloadConfig::default()
        };
        let (proxy, proxied) = proxy_in_front_of(&url).await?;
        let backend = PostgresStateBackend::new(
            PostgresConfig::new(&proxied)
                .with_schema(common::SHARED_SCHEMA)
                .with_ssl_mode("disable")
                .with_key_prefix(&config.prefix)
                .with_pool_size(1, 4)
                // A half-open connection is given up after 1 s + the 5 s client margin.
                .with_statement_timeout(Duration::from_secs(1))
                .with_connect_timeout(Duration::from_secs(1)),
        )
        .await?;
        let backend: Arc<dyn StateBackend> = Arc::new(backend);
        let mut admin = sqlx::PgConnection::connect(&url).await?;
        let log = FaultLog::new();
        let faults = {
            let (proxy, log, admin) = (&proxy, Arc::clone(&log), &mut admin);
            async move {
                for round in 0..10_000 {
                    tokio::time::sleep(FAULT_EVERY).await;
                    fault(round, proxy, admin, &log).await;
                }
            }
        };
        let name = format!("postgres, connection faults (run {})", run + 1);
        let trial = Trial::run(&name, backend, config, Arc::clone(&log), faults).await;
        let _ = admin.close().await;
        assert!(log.injections() > 0, "no fault was injected");
        trial.assert_correct();
    }
    Ok(())
}
