//! RELIABILITY.md case 19: a statement the server rejects is an `InvalidInput` error that
//! carries the server's message, writes nothing, and leaves the connection usable.
//!
//! Each test works in a fresh schema (dropped afterwards) with a pool of ONE connection, so
//! every statement after a rejected one runs on the connection that saw the rejection; the
//! backend's own figures show that no connection was found broken or opened again.
//!
//! - JSON metadata holding a NUL: serde_json writes it as the escape `\u0000`, which jsonb
//!   refuses ("unsupported Unicode escape sequence", SQLSTATE 22P05). Nothing checks this
//!   before the server does: the server's rejection is the error.
//! - A CHECK constraint added by the test to its own table (SQLSTATE 23514), hit by a put,
//!   by a batch (one statement: none of its rows is written) and by an import.

mod common;

use state_core::{Entry, ErrorKind, ImportMode, StateBackend, StateError, Stats, stream};
use state_postgres::PostgresStateBackend;

type TestResult = Result<(), StateError>;

async fn open(schema: &str) -> Result<PostgresStateBackend, StateError> {
    let config = common::config(schema)
        .await
        .with_key_prefix("rej:")
        .with_pool_size(1, 1)
        .with_retries(0, std::time::Duration::ZERO, std::time::Duration::ZERO);
    PostgresStateBackend::new(config).await
}

fn extra(stats: &Stats, name: &str) -> u64 {
    stats
        .extra(name)
        .unwrap_or_else(|| panic!("the backend reports no `{name}` figure"))
}

/// Asserts that `result` is an `InvalidInput` error quoting `server_text` with `sqlstate`.
#[track_caller]
fn rejected<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, StateError>,
    server_text: &str,
    sqlstate: &str,
) {
    let err = match result {
        Ok(v) => panic!("{what}: the server accepted it ({v:?})"),
        Err(e) => e,
    };
    eprintln!("{what}: {err}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{what}: {err}");
    assert!(
        err.message().contains(server_text),
        "{what}: the server's message `{server_text}` is not in: {err}"
    );
    assert!(
        err.message().contains(&format!("SQLSTATE {sqlstate}")),
        "{what}: {err}"
    );
    assert!(
        !err.outcome_unknown(),
        "{what}: a rejection is not of unknown outcome"
    );
}

/// Checks that the one connection is still the first and works: a write and a read on it.
async fn still_usable(b: &PostgresStateBackend, opened: u64, round: u32) -> TestResult {
    let key = format!("after:{round}");
    b.put(key.as_bytes(), b"fine").await?;
    assert_eq!(b.get(key.as_bytes()).await?.as_deref(), Some(&b"fine"[..]));
    assert!(b.health_check().await?.is_healthy());
    let stats = b.stats().await;
    assert_eq!(extra(&stats, "broken_connections"), 0, "{stats:?}");
    assert_eq!(
        extra(&stats, "connections_opened"),
        opened,
        "the rejection cost the connection: {stats:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_in_json_metadata_is_rejected_by_the_server_and_nothing_breaks() {
    common::in_schema("rejnul", |schema| async move {
        let b = open(&schema).await?;
        b.put(b"k", b"old").await?;
        let opened = extra(&b.stats().await, "connections_opened");
        assert_eq!(opened, 1, "one connection in a pool of one");

        let nul = serde_json::json!({"note": "a\u{0}b"});
        rejected(
            "put_with_metadata",
            b.put_with_metadata(b"k", b"new", nul.clone()).await,
            "unsupported Unicode escape sequence",
            "22P05",
        );
        assert_eq!(
            b.get(b"k").await?.as_deref(),
            Some(&b"old"[..]),
            "it was written"
        );
        still_usable(&b, opened, 1).await?;

        // The same metadata as a key's in an import (COPY): refused, nothing imported.
        let entries = vec![
            Entry::new(bytes::Bytes::from_static(b"i1"), b"1".to_vec()),
            Entry::new(bytes::Bytes::from_static(b"i2"), b"2".to_vec()).with_metadata(nul),
        ];
        rejected(
            "import",
            b.import(stream::iter(entries.into_iter().map(Ok)), ImportMode::Merge)
                .await,
            "unsupported Unicode escape sequence",
            "22P05",
        );
        assert_eq!(b.batch_get(&[b"i1", b"i2"]).await?, vec![None, None]);
        still_usable(&b, opened, 2).await?;

        // Metadata without the NUL goes through on the same connection.
        b.put_with_metadata(b"k", b"new", serde_json::json!({"note": "a b"}))
            .await?;
        assert_eq!(b.get(b"k").await?.as_deref(), Some(&b"new"[..]));
        assert_eq!(b.count(b"").await?, 3);
        Ok::<(), StateError>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_violated_constraint_carries_the_servers_message_and_nothing_breaks() {
    common::in_schema("rejcheck", |schema| async move {
        let b = open(&schema).await?;
        let opened = extra(&b.stats().await, "connections_opened");
        // The migrated table is this test's own: a rule the backend does not know about.
        let table = format!("\"{schema}\".\"state_entries\"");
        common::sql(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT value_under_100 CHECK (octet_length(value) < 100)"
        ))
        .await
        .map_err(|e| StateError::new(ErrorKind::Backend, format!("ALTER TABLE: {e}")))?;
        let big = vec![b'x'; 200];

        b.put(b"a", b"small").await?;
        rejected(
            "put",
            b.put(b"a", &big).await,
            "violates check constraint \"value_under_100\"",
            "23514",
        );
        assert_eq!(b.get(b"a").await?.as_deref(), Some(&b"small"[..]));
        still_usable(&b, opened, 1).await?;

        // One statement for the batch: the bad row takes the others with it.
        rejected(
            "batch_put",
            b.batch_put(&[(b"b1", b"1"), (b"b2", &big), (b"b3", b"3")])
                .await,
            "value_under_100",
            "23514",
        );
        assert_eq!(
            b.batch_get(&[b"b1", b"b2", b"b3"]).await?,
            vec![None, None, None]
        );
        still_usable(&b, opened, 2).await?;

        rejected(
            "compare_and_swap",
            b.compare_and_swap(b"a", Some(b"small"), &big).await,
            "value_under_100",
            "23514",
        );
        assert_eq!(b.get(b"a").await?.as_deref(), Some(&b"small"[..]));

        let entries = vec![
            Entry::new(bytes::Bytes::from_static(b"i1"), b"1".to_vec()),
            Entry::new(bytes::Bytes::from_static(b"i2"), big.clone()),
        ];
        rejected(
            "import",
            b.import(
                stream::iter(entries.into_iter().map(Ok)),
                ImportMode::Replace,
            )
            .await,
            "value_under_100",
            "23514",
        );
        // Replace is all or nothing: the old keys are still there, the new ones are not.
        assert_eq!(b.get(b"a").await?.as_deref(), Some(&b"small"[..]));
        assert_eq!(b.batch_get(&[b"i1", b"i2"]).await?, vec![None, None]);
        still_usable(&b, opened, 3).await?;
        assert_eq!(b.count(b"").await?, 4, "a, after:1, after:2, after:3");
        Ok::<(), StateError>(())
    })
    .await;
}
