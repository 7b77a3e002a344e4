//! Checkpoint and restore on every backend (memory, redb, Redis, PostgreSQL: real servers,
//! see `testing::services`), under a prefix too, and a checkpoint carried from Redis to
//! PostgreSQL to redb and back to Redis with its expiries.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use state_checkpoint::{CheckpointCoordinator, CheckpointOptions, DirStore, MemoryStore};
use state_core::{StateBackend, Ttl};
use support::{Kind, assert_same, churn, in_namespace, open, outside, seed, state, under};

/// Expiries compared across backends: Redis reports them from its millisecond TTLs, read
/// a few milliseconds after the export began.
const SLACK: Duration = Duration::from_millis(100);

/// Checkpoint, churn, restore: the state at the checkpoint; then the same under a prefix,
/// with the keys outside it left as they are.
async fn round_trip(kind: Kind) {
    in_namespace(&[kind], move |ns| async move {
        let backend = open(kind, &ns).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(DirStore::open(dir.path()).expect("dir store"));
        let c =
            CheckpointCoordinator::new(backend.clone(), store.clone(), CheckpointOptions::new())
                .expect("coordinator");
        seed(backend.as_ref(), "in:", 30, "a").await;
        seed(backend.as_ref(), "out:", 10, "a").await;
        let at_checkpoint = state(backend.as_ref()).await;
        let taken = c.checkpoint_now().await.expect("checkpoint");
        assert_eq!(taken.entries, 40);
        assert_eq!(taken.source_backend, backend.capabilities().backend);
        assert_eq!(taken.consistent, backend.capabilities().consistent_snapshot);

        churn(backend.as_ref(), "in:").await;
        churn(backend.as_ref(), "out:").await;
        let restored = c.restore(taken.id).await.expect("restore");
        assert_eq!(restored.entries, 40);
        assert_same(&state(backend.as_ref()).await, &at_checkpoint, SLACK);

        let narrow = CheckpointCoordinator::new(
            backend.clone(),
            Arc::new(MemoryStore::new()),
            CheckpointOptions::new().with_key_prefix("in:"),
        )
        .expect("coordinator");
        let taken = narrow.checkpoint_now().await.expect("checkpoint under in:");
        assert_eq!(taken.entries, 30);
        churn(backend.as_ref(), "in:").await;
        churn(backend.as_ref(), "out:").await;
        backend.put(b"in:only-after", b"x").await.expect("put");
        let churned = state(backend.as_ref()).await;
        let restored = narrow.restore_latest().await.expect("restore under in:");
        assert_eq!((restored.id, restored.entries), (taken.id, 30));
        let after = state(backend.as_ref()).await;
        assert_same(
            &under(&after, b"in:"),
            &under(&at_checkpoint, b"in:"),
            SLACK,
        );
        assert_same(&outside(&after, b"in:"), &outside(&churned, b"in:"), SLACK);
        c.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_round_trip() {
    round_trip(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_round_trip() {
    round_trip(Kind::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trip() {
    round_trip(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_round_trip() {
    round_trip(Kind::Postgres).await;
}

/// The remaining TTL of `key`, which must exist.
async fn remaining(backend: &dyn StateBackend, key: &[u8]) -> Option<Duration> {
    match backend.ttl(key).await.expect("ttl") {
        Ttl::Remaining(left) => Some(left),
        Ttl::Persistent => None,
        Ttl::Missing => panic!("{key:?} is missing"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_to_postgres_to_redb_to_redis_keeps_contents_and_expiries() {
    let kinds = [Kind::Redis, Kind::Postgres, Kind::Redb];
    in_namespace(&kinds, |ns| async move {
        let began = Instant::now();
        let hour = Duration::from_secs(3600);
        let redis = open(Kind::Redis, &ns).await;
        let postgres = open(Kind::Postgres, &ns).await;
        let redb = open(Kind::Redb, &ns).await;
        seed(redis.as_ref(), "k:", 60, "a").await;
        redis
            .put(b"bin\x00\xff", &[0u8, 255, 0, 1])
            .await
            .expect("binary");
        redis.put(b"empty", b"").await.expect("empty value");
        redis
            .put_with_ttl(b"short", b"v", Duration::from_millis(300))
            .await
            .expect("short");
        let original = state(redis.as_ref()).await;

        // One store, no lock: each coordinator continues the sequence under token 0.
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(DirStore::open(dir.path()).expect("dir store"));
        let over = |backend: &Arc<dyn StateBackend>| {
            CheckpointCoordinator::new(backend.clone(), store.clone(), CheckpointOptions::new())
                .expect("coordinator")
        };
        let (from_redis, from_postgres, from_redb) = (over(&redis), over(&postgres), over(&redb));
        let first = from_redis.checkpoint_now().await.expect("checkpoint redis");
        assert_eq!(first.entries, original.len() as u64, "short was alive");
        assert!(!first.consistent, "a Redis SCAN is fuzzy and says so");

        // `short` expires before it reaches PostgreSQL: it is not revived anywhere.
        support::eventually("short to expire", Duration::from_secs(20), || async {
            redis.get(b"short").await.ok().flatten().is_none()
        })
        .await;
        let live: Vec<_> = original
            .iter()
            .filter(|e| &e.key[..] != b"short")
            .cloned()
            .collect();

        let restored = from_postgres.restore_latest().await.expect("into postgres");
        assert_eq!(restored.id, first.id);
        assert_eq!(restored.entries, live.len() as u64);
        assert_same(&state(postgres.as_ref()).await, &live, SLACK);
        let second = from_postgres
            .checkpoint_now()
            .await
            .expect("checkpoint postgres");
        assert!(second.id > first.id && second.consistent);

        from_redb.restore_latest().await.expect("into redb");
        assert_same(&state(redb.as_ref()).await, &live, SLACK);
        from_redb.checkpoint_now().await.expect("checkpoint redb");

        // Back to Redis, over whatever it holds by then.
        support::churn(redis.as_ref(), "k:").await;
        let back = from_redis.restore_latest().await.expect("into redis");
        assert_eq!(back.id.seq, 3);
        assert_same(&state(redis.as_ref()).await, &live, SLACK);
        assert_eq!(redis.get(b"short").await.expect("get"), None);
        let elapsed = began.elapsed();
        for i in (0..60).step_by(3) {
            let key = format!("k:{i:04}");
            let left = remaining(redis.as_ref(), key.as_bytes())
                .await
                .expect("a TTL");
            // The hour counted from the first write: never extended, only elapsed.
            assert!(
                left <= hour && left + elapsed + Duration::from_secs(1) >= hour,
                "{key}: {left:?}"
            );
        }
        assert_eq!(
            remaining(redis.as_ref(), b"k:0001").await,
            None,
            "persistent"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_travels_between_backends_that_keep_it() {
    let kinds = [Kind::Postgres, Kind::Redb];
    in_namespace(&kinds, |ns| async move {
        let postgres = open(Kind::Postgres, &ns).await;
        let redb = open(Kind::Redb, &ns).await;
        let meta = serde_json::json!({"owner": "svc-a", "n": 3, "tags": ["x", "ü"]});
        postgres
            .put_with_metadata(b"m", b"v", meta.clone())
            .await
            .expect("metadata");
        postgres.put(b"p", b"plain").await.expect("put");
        let store = Arc::new(MemoryStore::new());
        let source =
            CheckpointCoordinator::new(postgres.clone(), store.clone(), CheckpointOptions::new())
                .expect("coordinator");
        source.checkpoint_now().await.expect("checkpoint");
        let target =
            CheckpointCoordinator::new(redb.clone(), store.clone(), CheckpointOptions::new())
                .expect("coordinator");
        target.restore_latest().await.expect("restore");
        assert_same(
            &state(redb.as_ref()).await,
            &state(postgres.as_ref()).await,
            SLACK,
        );

        // Redis keeps no metadata: refused before anything is written.
        in_namespace(&[Kind::Redis], move |ns| async move {
            let redis = open(Kind::Redis, &ns).await;
            redis.put(b"x", b"old").await.expect("put");
            let into_redis =
                CheckpointCoordinator::new(redis.clone(), store, CheckpointOptions::new())
                    .expect("coordinator");
            let err = into_redis.restore_latest().await.expect_err("metadata");
            assert_eq!(err.kind(), state_core::ErrorKind::Unsupported, "{err}");
            assert_eq!(
                redis.get(b"x").await.expect("get").as_deref(),
                Some(&b"old"[..])
            );
            assert_eq!(redis.count(b"").await.expect("count"), 1);
        })
        .await;
    })
    .await;
}
