//! Shared helpers of the integration tests: where the test database is, and schemas that
//! tests create and drop.

#![allow(dead_code)]

use state_postgres::PostgresConfig;
use testing::services;

/// The schema shared by the conformance and property tests; each test works under its own
/// key prefix there and clears it afterwards.
pub const SHARED_SCHEMA: &str = "state_pg_conformance";

/// The database URL: `STATE_TEST_POSTGRES_URL`, else the machine's server at
/// 127.0.0.1:5432 (database `test`) if it answers, else a server the fixtures start.
/// A missing database fails the test with the fixtures' message.
pub async fn url() -> String {
    services::postgres_url()
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL for the state-postgres tests: {e}"))
}

/// A config for `schema` on the test database. Loopback tests skip TLS (its handshake
/// dominates a short test's connects; the TLS test covers it) and use asynchronous commit
/// (no test here crashes the shared server).
pub async fn config(schema: &str) -> PostgresConfig {
    PostgresConfig::new(&url().await)
        .with_schema(schema)
        .with_ssl_mode("disable")
        .with_synchronous_commit("off")
}

/// A fresh schema name, unique across processes.
pub fn unique_schema(tag: &str) -> String {
    let ns = testing::conformance::unique_namespace();
    let hex: String = ns.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    format!("t_{tag}_{hex}")
}

/// Runs SQL on the test database with a connection of its own.
pub async fn sql(statement: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&url().await).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&mut conn)
        .await?;
    conn.close().await
}

/// Drops a schema this test created (never one it did not).
pub async fn drop_schema(schema: &str) {
    assert!(schema.starts_with("t_"), "refusing to drop schema {schema}");
    if let Err(e) = sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await {
        panic!("cannot drop test schema {schema}: {e}");
    }
}

/// Runs `body` with a fresh schema name and drops that schema afterwards, even when the
/// body fails an assertion (it runs on its own task so the panic can be caught first).
pub async fn in_schema<F, Fut, E>(tag: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let schema = unique_schema(tag);
    let outcome = tokio::spawn(body(schema.clone())).await;
    drop_schema(&schema).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}"),
        Err(join) => match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the test task was cancelled: {e}"),
        },
    }
}
