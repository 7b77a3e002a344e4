//! The backend through a real PgBouncer in transaction mode (the fixture's, with fewer
//! server connections than the backend has client connections, so that statements of one
//! client really land on different server connections): the whole conformance and
//! property suites, migrations through the pooler, detection of an undeclared pooler, and
//! concurrent load on shared server connections.

mod common;

use std::sync::Arc;

use state_postgres::{PostgresConfig, PostgresStateBackend, StateBackend};
use testing::services::{PgBouncer, PgBouncerOptions};
use tokio::sync::OnceCell;

/// The schema of the suites through the pooler, migrated through it once per process.
const BOUNCER_SCHEMA: &str = "state_pg_bouncer";

/// The pooler every test of this process shares (a static: the fixture's reaper stops it
/// when the process exits). Two server connections for up to eight client connections.
async fn bouncer() -> &'static PgBouncer {
    static BOUNCER: OnceCell<PgBouncer> = OnceCell::const_new();
    BOUNCER
        .get_or_init(|| async {
            let mut options = PgBouncerOptions::new(common::url().await);
            options.pool_size = 2;
            PgBouncer::start_with(options)
                .await
                .unwrap_or_else(|e| panic!("cannot start pgbouncer: {e}"))
        })
        .await
}

/// The test database's URL through the pooler, with `extra` query parameters.
async fn bouncer_url(extra: &str) -> String {
    let direct = common::url().await;
    let db = direct
        .rsplit('/')
        .next()
        .and_then(|tail| tail.split('?').next())
        .unwrap_or("test")
        .to_string();
    format!("{}?sslmode=disable{extra}", bouncer().await.url(&db))
}

/// The suites' config: declared pooler, migrations through it (once per process).
async fn pooled(schema: &str) -> PostgresConfig {
    PostgresConfig::new(&bouncer_url("&pgbouncer=true").await)
        .with_schema(schema)
        .with_synchronous_commit("off")
}

async fn migrated() {
    static ONCE: OnceCell<()> = OnceCell::const_new();
    ONCE.get_or_init(|| async {
        if let Err(e) = state_postgres::migrate(&pooled(BOUNCER_SCHEMA).await).await {
            panic!("migrating through pgbouncer failed: {e}");
        }
    })
    .await;
}

async fn through_pgbouncer(namespace: String) -> Arc<dyn StateBackend> {
    migrated().await;
    let config = pooled(BOUNCER_SCHEMA)
        .await
        .with_key_prefix(namespace)
        .with_pool_size(1, 8)
        .with_migrations(false);
    match PostgresStateBackend::new(config).await {
        Ok(backend) => Arc::new(backend),
        Err(e) => panic!("cannot open the PostgreSQL backend through pgbouncer: {e}"),
    }
}

testing::conformance_suite!(through_pgbouncer);
testing::property_suite!(through_pgbouncer);

/// A backend opened through the pooler on a fresh schema migrates it there (one
/// transaction under a transaction-level lock), and a second open finds it up to date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_through_pgbouncer() {
    common::in_schema("pgbm", |schema| async move {
        let config = pooled(&schema).await.with_pool_size(1, 4);
        let first = PostgresStateBackend::new(config.clone()).await?;
        first.put(b"k", b"v").await?;
        let history = first.migration_history().await?;
        assert_eq!(
            history.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        // Two more opens at once: both find every version applied.
        let (a, b) = tokio::join!(
            PostgresStateBackend::new(config.clone()),
            PostgresStateBackend::new(config.clone())
        );
        let (a, b) = (a?, b?);
        assert_eq!(a.migration_history().await?.len(), 3);
        assert_eq!(b.get(b"k").await?.as_deref(), Some(&b"v"[..]));
        Ok::<(), state_postgres::StateError>(())
    })
    .await;
}

/// Without `pgbouncer=` in the URL the backend notices the pooler (the probe setting in
/// the startup options does not reach the server) and works as if it had been declared;
/// the same URL and open work directly against PostgreSQL too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_pooler_is_detected() {
    common::in_schema("pgbd", |schema| async move {
        let url = bouncer_url("").await;
        let config = PostgresConfig::new(&url)
            .with_schema(&schema)
            .with_pool_size(1, 6);
        let backend = PostgresStateBackend::new(config).await?;
        assert!(backend.behind_pooler(), "the pooler went unnoticed");
        // Named prepared statements would clash here: 6 clients over 2 server connections.
        let mut tasks = Vec::new();
        for t in 0..6u8 {
            let backend = backend.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..40u8 {
                    let key = [b'k', t, i];
                    backend.put(&key, &[i]).await?;
                    assert_eq!(backend.get(&key).await?.as_deref(), Some(&[i][..]));
                }
                Ok::<(), state_postgres::StateError>(())
            }));
        }
        for task in tasks {
            task.await.map_err(|e| {
                state_postgres::StateError::new(state_postgres::ErrorKind::Backend, e.to_string())
            })??;
        }
        assert_eq!(backend.count(b"k").await?, 240);
        let direct = common::config(&schema).await.with_migrations(false);
        let direct = PostgresStateBackend::new(direct).await?;
        assert!(
            !direct.behind_pooler(),
            "PostgreSQL itself was taken for a pooler"
        );
        assert_eq!(direct.count(b"k").await?, 240);
        Ok::<(), state_postgres::StateError>(())
    })
    .await;
}

/// Behind the pooler the session settings arrive per transaction: a statement that runs
/// past the configured statement_timeout is cancelled by the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_applies_through_pgbouncer() {
    common::in_schema("pgbt", |schema| async move {
        let config = pooled(&schema)
            .await
            .with_statement_timeout(std::time::Duration::from_millis(300));
        let backend = PostgresStateBackend::new(config).await?;
        // A read made to wait for a lock held elsewhere runs past the timeout.
        let holder = lock_table(&schema).await?;
        let outcome = backend.get(b"statement-timeout-probe").await;
        drop(holder);
        match outcome {
            Err(e) => assert!(
                e.to_string().contains("statement_timeout"),
                "expected the server's statement timeout, got {e}"
            ),
            Ok(v) => panic!("the read waited past statement_timeout and returned {v:?}"),
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })
    .await;
}

/// A direct connection holding an exclusive lock on the schema's state table.
async fn lock_table(schema: &str) -> Result<sqlx::PgConnection, sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&common::url().await).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; LOCK TABLE \"{schema}\".\"state_entries\" IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut conn)
    .await?;
    Ok(conn)
}
