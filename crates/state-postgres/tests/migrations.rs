//! Migrations: versioned in refinery's history table, applied once under a lock when
//! several backends start together, harmless on every later start, and every configured
//! name actually used.

mod common;

use state_postgres::{PostgresStateBackend, StateBackend};

fn expected_history() -> Vec<(i64, String)> {
    vec![
        (1, "state_entries".to_string()),
        (2, "fences".to_string()),
        (3, "checkpoints".to_string()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_backends_starting_together_apply_each_migration_once() {
    common::in_schema("mig", |schema| async move {
        let config = common::config(&schema).await;
        let starts = (0..4).map(|_| {
            let config = config.clone();
            tokio::spawn(async move { PostgresStateBackend::new(config).await })
        });
        let mut backends = Vec::new();
        for start in starts {
            let backend = start
                .await
                .map_err(|e| format!("a start task panicked: {e}"))?
                .map_err(|e| format!("a concurrent start failed: {e}"))?;
            backends.push(backend);
        }
        let history = backends[0]
            .migration_history()
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(history, expected_history(), "each version exactly once");
        // Every backend works on the one schema.
        for (i, backend) in backends.iter().enumerate() {
            backend
                .put(format!("k{i}").as_bytes(), b"v")
                .await
                .map_err(|e| e.to_string())?;
        }
        assert_eq!(backends[3].count(b"").await.map_err(|e| e.to_string())?, 4);

        // A later start applies nothing and leaves the history as it was.
        let applied = state_postgres::migrate(&config)
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(applied, Vec::new(), "a second run applied something");
        let again = PostgresStateBackend::new(config.clone())
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(
            again.migration_history().await.map_err(|e| e.to_string())?,
            expected_history()
        );
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_schema_and_table_names_are_used() {
    common::in_schema("names", |schema| async move {
        let config = common::config(&schema).await.with_table("events");
        let backend = PostgresStateBackend::new(config)
            .await
            .map_err(|e| e.to_string())?;
        backend.put(b"k", b"v").await.map_err(|e| e.to_string())?;
        let found = query_i64(&format!(
            "SELECT count(*) FROM \"{schema}\".\"events\" WHERE key = 'k'::bytea"
        ))
        .await;
        assert_eq!(found, 1, "the row is in the configured table");
        let tables = query_i64(&format!(
            "SELECT count(*) FROM pg_tables WHERE schemaname = '{schema}' AND tablename IN \
             ('events', 'events_fences', 'events_checkpoints', 'events_checkpoint_rows', \
              'events_migrations')"
        ))
        .await;
        assert_eq!(tables, 5);
        // The expiry index has an immutable predicate (no now()).
        let partial = query_i64(&format!(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = '{schema}' \
             AND indexname = 'events_expires_at_idx' \
             AND indexdef LIKE '%WHERE (expires_at IS NOT NULL)'"
        ))
        .await;
        assert_eq!(partial, 1);
        Ok::<(), String>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrations_a_missing_table_is_a_clear_error() {
    let schema = common::unique_schema("nomig");
    let config = common::config(&schema).await.with_migrations(false);
    let backend = match PostgresStateBackend::new(config).await {
        Ok(backend) => backend,
        Err(e) => panic!("opening without migrations failed: {e}"),
    };
    let err = backend.get(b"k").await.err().map(|e| e.to_string());
    assert!(
        err.as_deref().is_some_and(|e| e.contains("xtask migrate")),
        "{err:?}"
    );
}

async fn query_i64(sql: &str) -> i64 {
    use sqlx::Connection;
    let url = common::url().await;
    let mut conn = match sqlx::PgConnection::connect(&url).await {
        Ok(conn) => conn,
        Err(e) => panic!("cannot connect: {e}"),
    };
    match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&mut conn)
        .await
    {
        Ok(n) => n,
        Err(e) => panic!("{sql}: {e}"),
    }
}

#[test]
fn the_test_fixtures_declare_this_crates_scheme() {
    let fixtures = testing::services::SCHEMES;
    let declared = fixtures.iter().find(|s| **s == state_postgres::POSTGRES);
    assert_eq!(
        declared.map(|s| s.shape()),
        Some(state_postgres::POSTGRES.shape())
    );
    assert!(declared.is_some_and(|s| s.is_written("postgresql")));
}
