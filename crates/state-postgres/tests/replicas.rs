//! Read replicas on the fixtures' streaming replica: a backend opened on a standby is
//! read-only (reads and scans work, every write is a `ReadOnly` error, no migrations), and
//! a primary backend with `replicas=` routes plain reads there with `read_from=replicas`.

use std::time::{Duration, Instant};

use state_postgres::{ErrorKind, PostgresConfig, PostgresStateBackend, StateBackend, StateError};
use testing::services::{LocalPostgres, LocalPostgresOptions};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A primary and its streaming replica, each on a free port.
async fn primary_and_replica() -> (LocalPostgres, LocalPostgres) {
    let primary = LocalPostgres::start(LocalPostgresOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start the primary: {e}"));
    let replica = primary
        .start_replica()
        .await
        .unwrap_or_else(|e| panic!("cannot start the replica: {e}"));
    (primary, replica)
}

fn config(url: &str, schema: &str) -> PostgresConfig {
    PostgresConfig::new(url)
        .with_schema(schema)
        .with_ssl_mode("disable")
        .with_pool_size(1, 4)
}

/// Waits (bounded: 30 s) until `sql` on `server` prints `want`.
async fn wait_for(server: &LocalPostgres, sql: &str, want: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = server.psql(sql).await.map(|s| s.trim().to_string());
        if got.as_deref().ok() == Some(want) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("`{sql}` never printed {want} within 30s (last: {got:?})").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scan_keys(
    mut stream: state_postgres::state_core::BoxStream<
        '_,
        state_postgres::Result<state_postgres::Entry>,
    >,
) -> Result<Vec<bytes::Bytes>, StateError> {
    use futures_util::StreamExt;
    let mut keys = Vec::new();
    while let Some(entry) = stream.next().await {
        keys.push(entry?.key);
    }
    Ok(keys)
}

fn assert_read_only<T: std::fmt::Debug>(what: &str, outcome: Result<T, StateError>) {
    match outcome {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::ReadOnly, "{what}: {e}");
            assert!(!e.is_retryable(), "{what}: {e}");
            let text = e.to_string();
            assert!(
                text.contains("standby") && text.contains("primary"),
                "{what}: the error should name the standby and say to write to the primary: {text}"
            );
        }
        Ok(v) => panic!("{what} on a standby succeeded: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_on_a_standby_reads_and_refuses_writes() -> TestResult {
    let (primary, replica) = primary_and_replica().await;
    // Before the primary migrated the schema, opening on the standby says what to do.
    match PostgresStateBackend::new(config(&replica.url(), "app")).await {
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            assert!(e.to_string().contains("migrate on the primary"), "{e}");
        }
        Ok(b) => panic!("opened a standby without the schema: {b:?}"),
    }
    let writer = PostgresStateBackend::new(config(&primary.url(), "app")).await?;
    for i in 0..50u32 {
        writer
            .put(format!("k:{i:03}").as_bytes(), &i.to_be_bytes())
            .await?;
    }
    writer
        .put_with_ttl(b"t", b"x", Duration::from_secs(600))
        .await?;
    wait_for(&replica, "SELECT count(*) FROM app.state_entries", "51").await?;

    let reader = PostgresStateBackend::new(config(&replica.url(), "app")).await?;
    assert!(reader.is_read_only());
    assert_eq!(
        reader.get(b"k:007").await?.as_deref(),
        Some(&7u32.to_be_bytes()[..])
    );
    assert_eq!(reader.count(b"k:").await?, 50);
    let keys = scan_keys(reader.scan(b"k:")).await?;
    assert_eq!(keys.len(), 50);
    assert_eq!(
        reader.batch_get(&[b"k:001", b"nope"]).await?,
        vec![
            Some(bytes::Bytes::copy_from_slice(&1u32.to_be_bytes())),
            None
        ]
    );
    assert!(matches!(
        reader.ttl(b"t").await?,
        state_postgres::Ttl::Remaining(_)
    ));

    assert_read_only("put", reader.put(b"k:001", b"new").await);
    assert_read_only(
        "put_with_ttl",
        reader
            .put_with_ttl(b"k:001", b"new", Duration::from_secs(5))
            .await,
    );
    assert_read_only("delete", reader.delete(b"k:001").await);
    assert_read_only("batch_put", reader.batch_put(&[(b"a", b"b")]).await);
    assert_read_only("batch_delete", reader.batch_delete(&[b"k:001"]).await);
    assert_read_only("get_and_delete", reader.get_and_delete(b"k:001").await);
    assert_read_only(
        "set_if_not_exists",
        reader.set_if_not_exists(b"new", b"v", None).await,
    );
    assert_read_only(
        "compare_and_swap",
        reader.compare_and_swap(b"k:001", None, b"v").await,
    );
    assert_read_only("clear", reader.clear(b"k:").await);
    // Nothing changed.
    assert_eq!(reader.count(b"").await?, 51);
    assert_eq!(writer.count(b"").await?, 51);

    let health = reader.health_check().await?;
    assert!(health.healthy, "{health:?}");
    assert!(health.detail.contains("replication lag"), "{health:?}");
    let health = writer.health_check().await?;
    assert!(
        health.healthy && health.detail.contains("standby"),
        "{health:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_by_option_and_writes_to_the_primary() -> TestResult {
    let (primary, replica) = primary_and_replica().await;
    let routed_url = format!(
        "{}?replicas=127.0.0.1:{}&read_from=replicas&failover_timeout=0s",
        primary.url(),
        replica.port()
    );
    let routed = PostgresStateBackend::new(config(&routed_url, "app")).await?;
    let on_primary = PostgresStateBackend::new(config(&primary.url(), "app")).await?;
    assert!(!routed.is_read_only());

    // Read-your-writes: the default reads on the primary see each write at once.
    for i in 0..20u32 {
        let key = format!("ryw:{i}");
        on_primary.put(key.as_bytes(), b"v").await?;
        assert_eq!(
            on_primary.get(key.as_bytes()).await?.as_deref(),
            Some(&b"v"[..])
        );
    }
    // The replica serves reads once it has replayed the schema, and a write once it has
    // replayed the write (bounded waits): the staleness the docs describe.
    wait_for(
        &replica,
        "SELECT to_regclass('app.state_entries') IS NOT NULL",
        "t",
    )
    .await?;
    routed.put(b"routed", b"1").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while routed.get(b"routed").await?.is_none() {
        assert!(
            Instant::now() < deadline,
            "the replica never showed the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for(&replica, "SELECT count(*) FROM app.state_entries", "21").await?;
    let health = routed.health_check().await?;
    assert!(
        health.healthy
            && health
                .detail
                .contains(&format!("replica 127.0.0.1:{}", replica.port())),
        "{health:?}"
    );

    // With the primary stopped, reads are still served (by the replica) and writes fail:
    // the reads really went to the replica.
    primary.stop().await?;
    assert_eq!(routed.get(b"routed").await?.as_deref(), Some(&b"1"[..]));
    assert_eq!(routed.count(b"ryw:").await?, 20);
    assert_eq!(scan_keys(routed.scan(b"ryw:")).await?.len(), 20);
    let write = routed.put(b"routed", b"2").await;
    assert!(write.is_err(), "a write with the primary stopped succeeded");
    assert!(on_primary.get(b"routed").await.is_err());
    Ok(())
}
