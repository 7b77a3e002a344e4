//! The PostgreSQL checkpoint store beyond the store contract (store.rs): any backend
//! checkpoints into PostgreSQL and is restored from it, files span several rows, and
//! concurrent commits of one id have one winner. Each test keeps its table in a schema of
//! its own on the test server (`testing::services`), dropped at the end, passed or failed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use state_checkpoint::{
    CheckpointCoordinator, CheckpointId, CheckpointOptions, CheckpointStore, Compression, Manifest,
    PostgresCheckpointStore, decode, encode, open_url,
};
use state_core::{Entry, stream};
use support::{Kind, assert_same, churn, in_namespace, open, seed, state};

const SLACK: Duration = Duration::from_millis(100);

/// Runs `body` with a store in a fresh schema, then drops the schema, also when the body
/// failed an assertion.
async fn with_store<F, Fut>(tag: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()>,
{
    let base = testing::services::postgres_url()
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL for the store tests: {e}"));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let schema = format!("ckstore_{tag}_{}_{nanos}", std::process::id());
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}schema={schema}&table=checkpoints");
    let outcome = std::panic::AssertUnwindSafe(body(url)).catch_unwind().await;
    drop_schema(&base, &schema).await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn drop_schema(base: &str, schema: &str) {
    use state_postgres::sqlx::{self, Connection};
    let dropped = async {
        let mut conn = sqlx::PgConnection::connect(base).await?;
        let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
        conn.close().await
    }
    .await;
    if let Err(e) = dropped {
        eprintln!("could not drop schema {schema}: {e}");
    }
}

/// Memory and redb checkpoint into one PostgreSQL store (opened by URL, as statectl
/// does); each checkpoint is restored into the other backend and into itself after churn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_redb_checkpoint_into_postgres_and_restore_from_it() {
    with_store("xback", |url| async move {
        let kinds = [Kind::Memory, Kind::Redb];
        in_namespace(&kinds, move |ns| async move {
            let store = open_url(&url).expect("a postgres:// store");
            assert!(store.describe().starts_with("postgres://"));
            let memory = open(Kind::Memory, &ns).await;
            let redb = open(Kind::Redb, &ns).await;
            seed(memory.as_ref(), "m:", 300, "a").await;
            let at_checkpoint = state(memory.as_ref()).await;
            let from_memory =
                CheckpointCoordinator::new(memory.clone(), store.clone(), CheckpointOptions::new())
                    .expect("coordinator");
            let taken = from_memory
                .checkpoint_now()
                .await
                .expect("checkpoint memory");
            assert_eq!(taken.entries, 300);

            // Into redb, from the store.
            seed(redb.as_ref(), "r:", 5, "old").await;
            let into_redb =
                CheckpointCoordinator::new(redb.clone(), store.clone(), CheckpointOptions::new())
                    .expect("coordinator");
            let restored = into_redb
                .restore(taken.id)
                .await
                .expect("restore into redb");
            assert_eq!(restored.entries, 300);
            assert_same(&state(redb.as_ref()).await, &at_checkpoint, SLACK);

            // Back into memory after churn; then redb's own checkpoint is the newest.
            churn(memory.as_ref(), "m:").await;
            from_memory.restore(taken.id).await.expect("restore memory");
            assert_same(&state(memory.as_ref()).await, &at_checkpoint, SLACK);
            seed(redb.as_ref(), "r:", 7, "b").await;
            let redb_state = state(redb.as_ref()).await;
            let second = into_redb.checkpoint_now().await.expect("checkpoint redb");
            assert!(second.id > taken.id);
            let latest = from_memory.restore_latest().await.expect("restore latest");
            assert_eq!(latest.id, second.id);
            assert_same(&state(memory.as_ref()).await, &redb_state, SLACK);
            let listing = store.manifests().await.expect("list");
            assert_eq!(listing.valid.len(), 2);
            assert!(listing.invalid.is_empty(), "{:?}", listing.invalid);
            from_memory.shutdown().await.expect("shutdown");
            into_redb.shutdown().await.expect("shutdown");
        })
        .await;
    })
    .await;
}

/// A file of several 1 MiB rows (values that do not compress) comes back whole, and two
/// stores on one table see each other's checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_span_rows_and_come_back_whole() {
    with_store("rows", |url| async move {
        let store = PostgresCheckpointStore::from_url(&url).expect("open");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let entries: Vec<Entry> = (0..3_000u32)
            .map(|i| {
                let value: Vec<u8> = (0..1_000)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect();
                Entry::new(format!("k{i:05}"), value)
            })
            .collect();
        let id = CheckpointId { token: 1, seq: 1 };
        let (chunks, summary) = encode(
            stream::iter(entries.clone().into_iter().map(Ok)),
            Compression::Lz4,
        );
        let written = store.write_data(id, chunks).await.expect("write");
        assert!(
            written > 2 * 1024 * 1024,
            "{written} bytes: more than two rows"
        );
        let summary = summary.get().expect("summary");
        let manifest = Manifest::new(id, &summary, Compression::Lz4, "memory", true);
        assert!(store.commit(&manifest).await.expect("commit"));

        let other = PostgresCheckpointStore::from_url(&url).expect("open again");
        assert_eq!(other.manifests().await.expect("list").valid, vec![manifest]);
        let chunks = other.read_data(id).await.expect("read");
        let read: Vec<Entry> = stream::try_collect(decode("rows", chunks))
            .await
            .expect("decode");
        assert_eq!(read, entries);
        store.close().await;
        other.close().await;
    })
    .await;
}

/// Four stores commit one id at once, ten times: exactly one wins each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commits_have_one_winner() {
    with_store("commits", |url| async move {
        let store = Arc::new(PostgresCheckpointStore::from_url(&url).expect("open"));
        for seq in 0..10 {
            let id = CheckpointId { token: 5, seq };
            let entries = vec![Entry::new(format!("k{seq}"), "v")];
            let (chunks, summary) =
                encode(stream::iter(entries.into_iter().map(Ok)), Compression::Lz4);
            store.write_data(id, chunks).await.expect("write");
            let summary = summary.get().expect("summary");
            let manifest = Manifest::new(id, &summary, Compression::Lz4, "memory", true);
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let (url, manifest) = (url.clone(), manifest.clone());
                    tokio::spawn(async move {
                        let store = PostgresCheckpointStore::from_url(&url)?;
                        let won = store.commit(&manifest).await;
                        store.close().await;
                        won
                    })
                })
                .collect();
            let mut wins = 0;
            for task in tasks {
                if task.await.expect("join").expect("commit") {
                    wins += 1;
                }
            }
            assert_eq!(wins, 1, "seq {seq}");
        }
        assert_eq!(store.manifests().await.expect("list").valid.len(), 10);
        store.close().await;
    })
    .await;
}

/// A table of the name given that was made for something else is refused with a message
/// naming the fix, and nothing is written into it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_table_is_refused() {
    with_store("foreign", |url| async move {
        use state_postgres::sqlx::{self, Connection};
        let (base, schema) = url
            .split_once("?schema=")
            .and_then(|(base, rest)| Some((base, rest.split_once('&')?.0)))
            .expect("the test URL");
        let mut conn = sqlx::PgConnection::connect(base).await.expect("connect");
        let sql = format!(
            "CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".\"checkpoints\" (id int)"
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("a foreign table");
        let store = PostgresCheckpointStore::from_url(&url).expect("open");
        let err = store.manifests().await.err();
        assert_eq!(
            err.as_ref().map(|e| e.kind()),
            Some(state_core::ErrorKind::Config)
        );
        let message = err.map(|e| e.message().to_string()).unwrap_or_default();
        assert!(message.contains("table="), "{message}");
        let _ = conn.close().await;
    })
    .await;
}
