//! What the coordinator's tests share: real backends under a namespace of their own
//! (cleared afterwards, pass or fail), a gate that holds an export half-way, switches that
//! make exports or lease renewals fail, and state comparisons.
#![allow(dead_code)] // each test file uses some of them

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use futures_util::stream;
use state_core::layer::{Hook, Op, OpKind, Outcome};
use state_core::{
    BoxStream, Entry, ErrorKind, LockHook, LockOp, LockOutcome, MemoryBackend, MemoryStore, Result,
    StateBackend, StateError,
};
use tokio::sync::{OnceCell, watch};

/// The backends the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Redb,
    Redis,
    Postgres,
}

/// The PostgreSQL schema of these tests (each test under its own key prefix there).
const PG_SCHEMA: &str = "state_checkpoint_tests";

fn memory_store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::new)
}

/// One redb file per test process; its directory goes at once (the open file lives on).
fn redb() -> &'static state_embedded::RedbBackend {
    static DB: OnceLock<state_embedded::RedbBackend> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let db = state_embedded::RedbBackend::open(dir.path().join("checkpoint-tests.redb"))
            .expect("open the redb file");
        drop(dir);
        db
    })
}

async fn postgres_config() -> state_postgres::PostgresConfig {
    let url = testing::services::postgres_url()
        .await
        .unwrap_or_else(|e| panic!("no PostgreSQL for the checkpoint tests: {e}"));
    state_postgres::PostgresConfig::new(&url)
        .with_schema(PG_SCHEMA)
        .with_ssl_mode("disable")
        .with_synchronous_commit("off")
}

/// A backend of `kind` whose key prefix is `namespace`, over storage shared by the process.
pub async fn open(kind: Kind, namespace: &str) -> Arc<dyn StateBackend> {
    match kind {
        Kind::Memory => Arc::new(
            MemoryBackend::builder()
                .store(memory_store().clone())
                .key_prefix(namespace)
                .build()
                .expect("a memory backend"),
        ),
        Kind::Redb => Arc::new(redb().with_prefix(namespace)),
        Kind::Redis => {
            let service = testing::services::redis()
                .await
                .unwrap_or_else(|e| panic!("no Redis for the checkpoint tests: {e}"));
            let config = state_redis::RedisConfig::builder()
                .url(service.url())
                .key_prefix(namespace)
                .build()
                .expect("a Redis config");
            Arc::new(
                state_redis::RedisStateBackend::new(config)
                    .await
                    .unwrap_or_else(|e| panic!("cannot connect to Redis: {e}")),
            )
        }
        Kind::Postgres => {
            static MIGRATED: OnceCell<()> = OnceCell::const_new();
            MIGRATED
                .get_or_init(|| async {
                    let config = postgres_config().await;
                    state_postgres::migrate(&config)
                        .await
                        .unwrap_or_else(|e| panic!("migrating {PG_SCHEMA} failed: {e}"));
                })
                .await;
            let config = postgres_config()
                .await
                .with_key_prefix(namespace)
                .with_pool_size(1, 4)
                .with_migrations(false);
            Arc::new(
                state_postgres::PostgresStateBackend::new(config)
                    .await
                    .unwrap_or_else(|e| panic!("cannot open the PostgreSQL backend: {e}")),
            )
        }
    }
}

/// Runs `body` with a fresh namespace, then clears that namespace on every backend of
/// `kinds`, also when the body failed an assertion.
pub async fn in_namespace<F, Fut>(kinds: &[Kind], body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let namespace = testing::harness::unique_namespace();
    let outcome = tokio::spawn(body(namespace.clone())).await;
    for &kind in kinds {
        let backend = open(kind, &namespace).await;
        if let Err(e) = backend.clear(b"").await {
            panic!("clearing the test namespace on {kind:?} failed: {e}");
        }
    }
    if let Err(join) = outcome {
        match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the test task was cancelled: {e}"),
        }
    }
}

/// Every live entry of the backend, by key.
pub async fn state(backend: &dyn StateBackend) -> Vec<Entry> {
    let mut entries = state_core::stream::try_collect(backend.export(b""))
        .await
        .expect("export");
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    entries
}

/// Asserts two states hold the same keys, values and metadata, and expiries within
/// `slack` of each other.
#[track_caller]
pub fn assert_same(got: &[Entry], want: &[Entry], slack: Duration) {
    let keys = |v: &[Entry]| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys(got), keys(want), "keys differ");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.value, w.value, "value of {:?}", g.key);
        assert_eq!(g.metadata, w.metadata, "metadata of {:?}", g.key);
        match (g.expires_at, w.expires_at) {
            (None, None) => {}
            (Some(a), Some(b)) => assert!(
                testing::harness::close(a, b, slack),
                "expiry of {:?}: {a:?} vs {b:?}",
                g.key
            ),
            other => panic!("expiry of {:?}: {other:?}", g.key),
        }
    }
}

/// Polls `done` every 10 ms until it holds; fails after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Calls `attempt` every 10 ms until it succeeds; fails after `limit` with the last error.
pub async fn until_ok<T, F, Fut>(what: &str, limit: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = Instant::now();
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(e) => assert!(start.elapsed() < limit, "gave up waiting for {what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A hook that holds every export after `after` entries until opened, and can make
/// exports fail: a backend paused or failing in the middle of a checkpoint.
#[derive(Debug, Clone)]
pub struct Gate {
    after: usize,
    reached: Arc<watch::Sender<bool>>,
    open: Arc<watch::Sender<bool>>,
    fail: Arc<AtomicBool>,
}

impl Gate {
    /// Holds exports after `after` entries (`usize::MAX`: never).
    pub fn new(after: usize) -> Gate {
        Gate {
            after,
            reached: Arc::new(watch::channel(false).0),
            open: Arc::new(watch::channel(false).0),
            fail: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `backend` seen through this gate.
    pub fn wrap(&self, backend: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        Arc::new(state_core::Layered::new(self.clone(), backend))
    }

    /// Waits (at most 10 s) until an export is held.
    pub async fn reached(&self) {
        let mut reached = self.reached.subscribe();
        let waited = tokio::time::timeout(Duration::from_secs(10), reached.wait_for(|r| *r));
        assert!(
            matches!(waited.await, Ok(Ok(_))),
            "no export reached the gate"
        );
    }

    /// Lets held exports go on.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Makes every export fail (or work again).
    pub fn fail_exports(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }
}

impl Hook for Gate {
    fn around<T: Outcome>(
        &self,
        _op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        call
    }

    fn around_stream<'a>(
        &'a self,
        kind: OpKind,
        inner: BoxStream<'a, Result<Entry>>,
    ) -> BoxStream<'a, Result<Entry>> {
        if kind != OpKind::Export {
            return inner;
        }
        if self.fail.load(Ordering::SeqCst) {
            return state_core::stream::once_err(StateError::new(
                ErrorKind::Connection,
                "planted export failure",
            ));
        }
        let gate = self.clone();
        Box::pin(stream::unfold((inner, 0usize), move |(mut inner, n)| {
            let gate = gate.clone();
            async move {
                if n == gate.after {
                    gate.reached.send_replace(true);
                    let mut open = gate.open.subscribe();
                    let _ = open.wait_for(|o| *o).await;
                }
                let item = state_core::stream::next(&mut inner).await?;
                Some((item, (inner, n + 1)))
            }
        }))
    }
}

/// A lock hook that, once tripped, refuses every lease extension: a leader whose lease
/// cannot be renewed (partitioned from the lock service).
#[derive(Debug, Clone, Default)]
pub struct RefuseExtends(Arc<AtomicBool>);

impl RefuseExtends {
    /// From now on, extensions fail.
    pub fn trip(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl LockHook for RefuseExtends {
    fn around<T: LockOutcome>(
        &self,
        op: LockOp,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let refuse = op == LockOp::Extend && self.0.load(Ordering::SeqCst);
        async move {
            if refuse {
                return Err(StateError::new(
                    ErrorKind::NotOwner,
                    "planted: the lock service refused the extension",
                ));
            }
            call.await
        }
    }
}

/// `n` entries `{prefix}{i:04}` → `v{i}-{tag}`, every third with an hour-long TTL.
pub async fn seed(backend: &dyn StateBackend, prefix: &str, n: usize, tag: &str) {
    for i in 0..n {
        let key = format!("{prefix}{i:04}");
        let value = format!("v{i}-{tag}");
        if i % 3 == 0 {
            backend
                .put_with_ttl(key.as_bytes(), value.as_bytes(), Duration::from_secs(3600))
                .await
                .expect("put_with_ttl");
        } else {
            backend
                .put(key.as_bytes(), value.as_bytes())
                .await
                .expect("put");
        }
    }
}

/// Overwrites, deletes and adds keys under `prefix`: state after a checkpoint.
pub async fn churn(backend: &dyn StateBackend, prefix: &str) {
    for i in 0..5 {
        let key = format!("{prefix}{i:04}");
        backend
            .put(key.as_bytes(), b"changed")
            .await
            .expect("overwrite");
    }
    for i in 5..8 {
        backend
            .delete(format!("{prefix}{i:04}").as_bytes())
            .await
            .expect("delete");
    }
    backend
        .put_with_ttl(
            format!("{prefix}new").as_bytes(),
            b"new",
            Duration::from_secs(60),
        )
        .await
        .expect("add");
}

/// The entries of `state` whose key starts with `prefix`.
pub fn under(state: &[Entry], prefix: &[u8]) -> Vec<Entry> {
    state
        .iter()
        .filter(|e| e.key.starts_with(prefix))
        .cloned()
        .collect()
}

/// The entries of `state` whose key does not start with `prefix`.
pub fn outside(state: &[Entry], prefix: &[u8]) -> Vec<Entry> {
    state
        .iter()
        .filter(|e| !e.key.starts_with(prefix))
        .cloned()
        .collect()
}

/// Now, for messages.
pub fn now() -> SystemTime {
    SystemTime::now()
}
