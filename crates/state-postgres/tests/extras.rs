//! The guide's extras: metadata queries, cleanup and the reaper, vacuum, table and client
//! statistics, health, registration by URL.

mod common;

use std::sync::Arc;
use std::time::Duration;

use state_core::{Registry, Stack, StateBackend, StatsLayer, stream};
use state_postgres::PostgresStateBackend;

async fn open(schema: &str, reaper: Option<Duration>) -> PostgresStateBackend {
    let mut config = common::config(schema).await.with_key_prefix("x:");
    if let Some(interval) = reaper {
        config = config.with_reaper(interval);
    }
    match PostgresStateBackend::new(config).await {
        Ok(b) => b,
        Err(e) => panic!("cannot open the backend: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_queries_cleanup_and_statistics() {
    common::in_schema("extras", |schema| async move {
        let backend = Arc::new(open(&schema, None).await);
        // The stats layer counts the trait's operations; the backend its statements.
        let counted = Stack::new().layer(StatsLayer::new()).apply(backend.clone());
        for i in 0..1200u32 {
            let source = if i % 3 == 0 { "kafka" } else { "http" };
            let meta = serde_json::json!({"source": source, "partition": i % 7});
            counted
                .put_with_metadata(format!("e{i:05}").as_bytes(), b"v", meta)
                .await?;
        }
        counted
            .put_with_ttl(b"e99999", b"expired", Duration::from_millis(1))
            .await?;
        assert_eq!(counted.get(b"e00001").await?.as_deref(), Some(&b"v"[..]));
        // Containment, across more than one page, in key order, live rows only.
        let kafka =
            stream::try_collect(backend.query_metadata(serde_json::json!({"source": "kafka"})))
                .await?;
        assert_eq!(kafka.len(), 400);
        assert!(kafka.windows(2).all(|w| w[0].key < w[1].key));
        assert!(
            kafka
                .iter()
                .all(|e| e.metadata.as_ref().is_some_and(|m| m["source"] == "kafka"))
        );
        let exact = stream::try_collect(
            backend.query_metadata(serde_json::json!({"source": "kafka", "partition": 0})),
        )
        .await?;
        assert_eq!(exact.len(), 1200 / 21 + 1);

        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(backend.cleanup_expired().await? >= 1);
        backend.vacuum().await?;
        let (total, table) = backend.table_stats().await?;
        assert!(total >= table && table > 0, "{total} {table}");

        let stats = counted.stats().await;
        let extra = |name: &str| stats.extra(name).unwrap_or(0);
        assert_eq!(stats.operations, 1202, "{stats:?}");
        assert!(extra("queries") >= 1205, "{stats:?}");
        assert!(stats.bytes_written > 0 && stats.bytes_read > 0);
        assert!(extra("open_connections") >= 1);
        assert!(backend.health_check().await?.is_healthy());
        // A graceful close; the next operation reopens a connection.
        backend.close().await;
        assert_eq!(backend.get(b"e00001").await?.as_deref(), Some(&b"v"[..]));
        Ok::<(), state_core::StateError>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_read_the_table_size_dead_tuples_and_connections_in_use() {
    common::in_schema("gauges", |schema| async move {
        let backend = Arc::new(open(&schema, None).await);
        let layered = Stack::new().layer(StatsLayer::new()).apply(backend);
        for i in 0..200u32 {
            layered.put(format!("g{i}").as_bytes(), &[7; 100]).await?;
        }
        layered.clear(b"g1").await?;
        let gauges = layered.gauges().await?;
        let names: Vec<&str> = gauges.iter().map(|g| g.name).collect();
        assert_eq!(
            names,
            [
                "postgres_table_bytes",
                "postgres_dead_tuples",
                "postgres_connections_in_use"
            ],
            "{gauges:?}"
        );
        assert!(gauges[0].value > 0.0, "{gauges:?}");
        // The server counts dead tuples in the background: only never negative here.
        assert!(gauges[1].value >= 0.0, "{gauges:?}");
        // No operation was under way; the query's own connection is not counted.
        assert_eq!(gauges[2].value, 0.0, "{gauges:?}");
        Ok::<(), state_core::StateError>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_deletes_expired_rows_in_the_background() {
    common::in_schema("reaper", |schema| async move {
        let backend = open(&schema, Some(Duration::from_millis(100))).await;
        for i in 0..50u32 {
            backend
                .put_with_ttl(format!("r{i}").as_bytes(), b"v", Duration::from_millis(20))
                .await?;
        }
        backend.put(b"keep", b"v").await?;
        // Bounded wait for the reaper: the rows are already invisible to reads.
        let mut left = u64::MAX;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            left = raw_rows(&schema).await;
            if left == 1 {
                break;
            }
        }
        assert_eq!(left, 1, "the reaper left expired rows behind");
        Ok::<(), state_core::StateError>(())
    })
    .await;
}

async fn raw_rows(schema: &str) -> u64 {
    use sqlx::Connection;
    let url = common::url().await;
    let mut conn = match sqlx::PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect: {e}"),
    };
    let sql = format!("SELECT count(*) FROM \"{schema}\".state_entries");
    match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
        .fetch_one(&mut conn)
        .await
    {
        Ok(n) => n as u64,
        Err(e) => panic!("counting rows failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_opens_postgres_urls_and_rejects_unknown_parameters() {
    let mut registry = Registry::new();
    state_postgres::register(&mut registry);
    let url = common::url().await;
    let sep = if url.contains('?') { '&' } else { '?' };
    let good = format!(
        "{url}{sep}schema={}&prefix=reg:&sslmode=disable&pool_max=2",
        common::SHARED_SCHEMA
    );
    let backend = match registry.connect(&good).await {
        Ok(b) => b,
        Err(e) => panic!("cannot open {good}: {e}"),
    };
    assert_eq!(backend.capabilities().backend, "postgres");
    assert!(backend.put(b"k", b"v").await.is_ok());
    assert!(backend.clear(b"").await.is_ok_and(|n| n == 1));
    let bad = format!("{url}{sep}colour=blue");
    let err = registry.connect(&bad).await.err().map(|e| e.to_string());
    assert!(err.is_some_and(|e| e.contains("colour")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_over_the_same_keys_do_not_deadlock() {
    common::in_schema("batches", |schema| async move {
        let backend = Arc::new(open(&schema, None).await);
        let keys: Vec<Vec<u8>> = (0..200u32)
            .map(|i| format!("b{i:04}").into_bytes())
            .collect();
        let mut tasks = Vec::new();
        for t in 0..4usize {
            let (backend, mut keys) = (backend.clone(), keys.clone());
            // Opposite orders in alternate tasks: the server would deadlock without sorting.
            if t % 2 == 1 {
                keys.reverse();
            }
            tasks.push(tokio::spawn(async move {
                for round in 0..10u8 {
                    let entries: Vec<(&[u8], &[u8])> = keys
                        .iter()
                        .map(|k| (&k[..], std::slice::from_ref(&round)))
                        .collect();
                    backend.batch_put(&entries).await?;
                }
                Ok::<(), state_core::StateError>(())
            }));
        }
        for task in tasks {
            match task.await {
                Ok(result) => result?,
                Err(e) => panic!("a batch task panicked: {e}"),
            }
        }
        assert_eq!(backend.count(b"b").await?, 200);
        Ok::<(), state_core::StateError>(())
    })
    .await;
}
