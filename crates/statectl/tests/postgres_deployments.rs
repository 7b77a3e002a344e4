//! statectl in the guide's PostgreSQL deployments: through PgBouncer in transaction mode
//! (declared with `pgbouncer=true` or detected) and on a streaming replica (reads work, a
//! write is one sentence and exit 3).

mod common;

use std::time::{Duration, Instant};

use common::{one_sentence_failure, output, statectl, text};
use state_postgres::sqlx::{self, Connection};
use testing::services::{LocalPostgres, LocalPostgresOptions, PgBouncer, PgBouncerOptions};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const POSTGRES_DEFAULT: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Runs statectl and returns its stdout, failing the test on a non-zero exit.
fn ok(dir: &std::path::Path, url: &str, args: &[&str]) -> String {
    let out = output(statectl(dir, Some(url), args), args);
    assert!(
        out.status.success(),
        "statectl {args:?} failed ({:?}): {}",
        out.status.code(),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A lower-case schema name of this run (statectl creates it; the test drops it).
fn schema(tag: &str) -> String {
    common::unique(tag).to_ascii_lowercase()
}

async fn drop_schema(direct: &str, schema: &str) -> Result<(), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect(direct).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statectl_works_through_pgbouncer() -> TestResult {
    let direct = common::service_url("STATE_TEST_POSTGRES_URL", POSTGRES_DEFAULT);
    let mut options = PgBouncerOptions::new(direct.clone());
    options.pool_size = 2;
    let bouncer = PgBouncer::start_with(options).await?;
    let db = direct
        .rsplit('/')
        .next()
        .and_then(|t| t.split('?').next())
        .unwrap_or("test")
        .to_string();
    let dir = tempfile::tempdir()?;
    let schema = schema("pgb");
    let base = format!("{}?sslmode=disable&schema={schema}", bouncer.url(&db));
    // Declared, and left to detection: both work, migrations included (first open). The
    // schema is dropped even when an assertion fails.
    let outcome = std::panic::catch_unwind(|| {
        for declared in ["&pgbouncer=true", ""] {
            round_trip(dir.path(), &format!("{base}{declared}"));
        }
    });
    drop_schema(&direct, &schema).await?;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    Ok(())
}

/// put, get, scan, count, del and a missing get through `url`, leaving nothing behind.
fn round_trip(dir: &std::path::Path, url: &str) {
    ok(dir, url, &["put", "a:1", "one"]);
    ok(dir, url, &["put", "a:2", "two", "--ttl", "10m"]);
    ok(dir, url, &["put", "b:1", "other"]);
    assert_eq!(ok(dir, url, &["get", "a:1"]), "one\n");
    assert_eq!(ok(dir, url, &["scan", "a:"]), "a:1\na:2\n");
    assert_eq!(
        ok(dir, url, &["scan", "a:", "--values"]),
        "a:1\tone\na:2\ttwo\n"
    );
    assert_eq!(ok(dir, url, &["count"]), "3\n");
    assert_eq!(ok(dir, url, &["del", "b:1"]), "1\n");
    assert_eq!(ok(dir, url, &["count"]), "2\n");
    let args = ["get", "b:1"];
    let out = output(statectl(dir, Some(url), &args), &args);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    ok(dir, url, &["del", "a:1"]);
    ok(dir, url, &["del", "a:2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statectl_on_a_replica_reads_and_refuses_writes() -> TestResult {
    let primary = LocalPostgres::start(LocalPostgresOptions::default()).await?;
    let replica = primary.start_replica().await?;
    let dir = tempfile::tempdir()?;
    let on_primary = format!("{}?sslmode=disable", primary.url());
    let on_replica = format!("{}?sslmode=disable", replica.url());
    ok(dir.path(), &on_primary, &["put", "k:1", "v1"]);
    ok(dir.path(), &on_primary, &["put", "k:2", "v2"]);
    // Bounded wait for the replica to replay the writes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counted = replica
            .psql("SELECT count(*) FROM public.state_entries")
            .await
            .unwrap_or_default();
        if counted.trim() == "2" {
            break;
        }
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok(dir.path(), &on_replica, &["get", "k:1"]), "v1\n");
    assert_eq!(ok(dir.path(), &on_replica, &["scan", "k:"]), "k:1\nk:2\n");
    assert_eq!(ok(dir.path(), &on_replica, &["count"]), "2\n");
    for args in [
        &["put", "k:3", "v3"][..],
        &["del", "k:1"][..],
        &["put", "k:1", "new", "--ttl", "5s"][..],
    ] {
        let out = output(statectl(dir.path(), Some(&on_replica), args), args);
        let err = one_sentence_failure(&out, args, 3);
        assert!(
            err.contains("read-only") && err.contains("standby") && err.contains("primary"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(ok(dir.path(), &on_primary, &["get", "k:1"]), "v1\n");
    Ok(())
}
