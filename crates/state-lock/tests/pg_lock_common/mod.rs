//! Shared helpers of the PostgreSQL lock tests: where the test database is, fresh schemas
//! dropped afterwards, lock subjects for the conformance suite, and `pg_locks` queries.

#![allow(dead_code)]

use std::sync::Arc;

use sqlx::{Connection, Row};
use state_lock::{LockMode, PostgresDistributedLock, PostgresLockConfig, advisory_key};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use testing::locks::{LockKind, LockSubject, WAIT_TIMEOUT};
use testing::services;

/// The database URL: `STATE_TEST_POSTGRES_URL`, else the machine's server at
/// 127.0.0.1:5432 (database `test`) if it answers, else a server the fixtures start.
pub async fn url() -> String {
    services::postgres_url()
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL for the lock tests: {e}"))
}

/// A fresh schema name, unique across processes.
pub fn unique_schema(tag: &str) -> String {
    let ns = testing::conformance::unique_namespace();
    let hex: String = ns.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    format!("t_{tag}_{hex}")
}

/// A unique `application_name`, to find a handle's connections in `pg_stat_activity`.
pub fn unique_app(tag: &str) -> String {
    let ns = testing::conformance::unique_namespace();
    let hex: String = ns
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .take(16)
        .collect();
    format!("lock-{tag}-{hex}")
}

/// An admin connection of its own (direct, not through any pooler).
pub async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&url().await)
        .await
        .expect("an admin connection to the test database")
}

/// Runs one statement on a fresh admin connection.
pub async fn sql(statement: &str) {
    let mut conn = admin().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("`{statement}` failed: {e}"));
    let _ = conn.close().await;
}

/// Drops a schema a test created (never one it did not).
pub async fn drop_schema(schema: &str) {
    assert!(schema.starts_with("t_"), "refusing to drop schema {schema}");
    sql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await;
}

/// A lock config for `schema` at `url`: no TLS on loopback, the suite's wait timeout.
pub fn config(url: &str, schema: &str, mode: LockMode) -> PostgresLockConfig {
    PostgresLockConfig::new(url)
        .with_schema(schema)
        .with_ssl_mode("disable")
        .with_mode(mode)
        .with_wait_timeout(WAIT_TIMEOUT)
}

/// Opens a lock, failing the test with the error.
pub async fn open(config: PostgresLockConfig) -> PostgresDistributedLock {
    let shown = format!("{config:?}");
    PostgresDistributedLock::with_config(config)
        .await
        .unwrap_or_else(|e| panic!("opening {shown}: {e}"))
}

/// A state backend in `schema` on the test database (direct), for fenced writes.
pub async fn backend(schema: &str) -> PostgresStateBackend {
    let config = PostgresConfig::new(&url().await)
        .with_schema(schema)
        .with_ssl_mode("disable")
        .with_synchronous_commit("off")
        .with_pool_size(1, 4);
    PostgresStateBackend::new(config)
        .await
        .unwrap_or_else(|e| panic!("opening the state backend in {schema}: {e}"))
}

/// Two independent handles of `mode` at `lock_url` in a fresh schema, a state backend in
/// the same schema (reached directly), and a cleanup that drops the schema.
pub async fn subject_at(lock_url: &str, mode: LockMode, tag: &str) -> LockSubject {
    let schema = unique_schema(tag);
    let lock = open(config(lock_url, &schema, mode)).await;
    let other = open(config(lock_url, &schema, mode)).await;
    let backend = backend(&schema).await;
    let kind = match mode {
        LockMode::Session => LockKind::Session,
        LockMode::Lease => LockKind::Lease,
    };
    LockSubject {
        lock: Arc::new(lock),
        other: Arc::new(other),
        kind,
        backend: Arc::new(backend),
        cleanup: Some(Box::new(move || {
            Box::pin(async move { drop_schema(&schema).await })
        })),
    }
}

/// The backend pids that hold the session advisory lock of `name` (bigint form).
pub async fn holders(name: &str) -> Vec<i32> {
    let key = advisory_key(name);
    let bits = u64::from_ne_bytes(key.to_ne_bytes());
    let (high, low) = (bits >> 32, bits & 0xffff_ffff);
    let mut conn = admin().await;
    let rows = sqlx::query(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND classid::text::bigint = $1 AND objid::text::bigint = $2 AND objsubid = 1",
    )
    .bind(i64::try_from(high).expect("32 bits fit"))
    .bind(i64::try_from(low).expect("32 bits fit"))
    .fetch_all(&mut conn)
    .await
    .expect("reading pg_locks");
    let _ = conn.close().await;
    rows.iter()
        .map(|r| r.try_get::<i32, _>(0).expect("a pid"))
        .collect()
}

/// How many backends report `application_name = app`.
pub async fn connections_of(app: &str) -> i64 {
    let mut conn = admin().await;
    let n: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(app)
            .fetch_one(&mut conn)
            .await
            .expect("reading pg_stat_activity");
    let _ = conn.close().await;
    n
}

/// Terminates every backend with `application_name = app`; how many there were.
pub async fn terminate_app(app: &str) -> i64 {
    let mut conn = admin().await;
    let n: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = $1",
    )
    .bind(app)
    .fetch_one(&mut conn)
    .await
    .expect("terminating backends");
    let _ = conn.close().await;
    n
}
