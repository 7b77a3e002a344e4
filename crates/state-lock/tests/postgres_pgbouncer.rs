//! `PostgresDistributedLock` behind a real PgBouncer in transaction mode (RELIABILITY 9):
//! Lease mode passes the lock conformance suite and the property through it; Session mode
//! detects the pooler and refuses with a clear error.

mod pg_lock_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use pg_lock_common::{self as common, config};
use sqlx::{Connection, Row};
use state_lock::{DistributedLock, ErrorKind, LockMode, PostgresDistributedLock, new_owner_token};
use testing::locks::LockSubject;
use testing::services::{PgBouncer, PgBouncerOptions};
use tokio::sync::OnceCell;

/// The pooler every test of this process shares (a static: the reaper stops it when the
/// process exits). Two server connections, so clients really share them.
async fn bouncer() -> &'static PgBouncer {
    static BOUNCER: OnceCell<PgBouncer> = OnceCell::const_new();
    BOUNCER
        .get_or_init(|| async {
            let mut options = PgBouncerOptions::new(common::url().await);
            options.pool_size = 2;
            PgBouncer::start_with(options)
                .await
                .unwrap_or_else(|e| panic!("cannot start pgbouncer: {e}"))
        })
        .await
}

/// The test database's URL through the pooler.
async fn bouncer_url() -> String {
    let direct = common::url().await;
    let db = direct.rsplit('/').next().unwrap_or("test").to_string();
    bouncer().await.url(&db)
}

async fn lease_through_pgbouncer() -> LockSubject {
    common::subject_at(&bouncer_url().await, LockMode::Lease, "lpgb").await
}

/// The fixture really pools per transaction: two clients, one server connection between
/// them (pool size 1 here), so both see the same backend pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixture_shares_server_connections_between_clients() {
    let mut options = PgBouncerOptions::new(common::url().await);
    options.pool_size = 1;
    let single = PgBouncer::start_with(options)
        .await
        .expect("pgbouncer starts");
    let url = format!("{}?sslmode=disable", single.url("test"));
    let mut first = sqlx::PgConnection::connect(&url).await.expect("client 1");
    let mut second = sqlx::PgConnection::connect(&url).await.expect("client 2");
    let one = backend_pid(&mut first).await;
    let two = backend_pid(&mut second).await;
    assert_eq!(one, two, "both clients ran on the one server connection");
    let _ = first.close().await;
    let _ = second.close().await;
}

async fn backend_pid(conn: &mut sqlx::PgConnection) -> i32 {
    let row = sqlx::raw_sql("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await
        .expect("pg_backend_pid through pgbouncer");
    row.try_get::<i32, _>(0).expect("a pid")
}

/// Session mode through the pooler refuses to start, saying why and what to use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_behind_pgbouncer_is_refused() {
    let schema = common::unique_schema("lpgbs");
    let outcome = PostgresDistributedLock::with_config(config(
        &bouncer_url().await,
        &schema,
        LockMode::Session,
    ))
    .await;
    let e = outcome.expect_err("Session mode must refuse a transaction pooler");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(
        e.message()
            .contains("session advisory locks are unsafe behind a transaction pooler"),
        "{e}"
    );
    assert!(e.message().contains("lock_mode=lease"), "{e}");
    // It refused before creating anything.
    common::drop_schema(&schema).await;

    // Declared in the URL, the pooler makes Lease the default and Session a config error.
    let declared = format!("{}?pgbouncer=true&sslmode=disable", bouncer_url().await);
    let e = PostgresDistributedLock::new(&format!("{declared}&lock_mode=session"))
        .await
        .expect_err("session with pgbouncer=true");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
}

/// Lease mode through the pooler: two handles exclude each other, an expired lease is
/// taken over with a higher token, and many tasks over both handles (more clients than
/// server connections) never hold the lock at once and see tokens only increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_mode_through_pgbouncer_excludes_and_fences() {
    let subject = lease_through_pgbouncer().await;
    let cleanup = subject.cleanup;
    let (a, b) = (subject.lock, subject.other);
    let name = format!("pgb-{}", new_owner_token());
    let short = Duration::from_millis(300);

    let first = a
        .try_acquire(&name, short)
        .await
        .expect("try_acquire")
        .expect("free");
    assert!(
        b.try_acquire(&name, short)
            .await
            .expect("try_acquire")
            .is_none()
    );
    testing::clock::sleep_past(Duration::from_millis(500)).await;
    let second = b
        .try_acquire(&name, Duration::from_secs(30))
        .await
        .expect("try_acquire");
    let second = second.expect("B takes over the expired lease");
    assert!(second.fencing_token() > first.fencing_token());
    let e = a
        .release(first)
        .await
        .expect_err("A's lease was taken over");
    assert_eq!(e.kind(), ErrorKind::NotOwner, "{e}");
    b.release(second).await.expect("B's release");

    let inside = Arc::new(AtomicUsize::new(0));
    let last_token = Arc::new(std::sync::Mutex::new(0u64));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let lock: Arc<dyn DistributedLock> = Arc::clone(if i % 2 == 0 { &a } else { &b });
        let (name, inside, last_token) =
            (name.clone(), Arc::clone(&inside), Arc::clone(&last_token));
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let guard = lock
                    .acquire(&name, Duration::from_secs(30))
                    .await
                    .unwrap_or_else(|e| panic!("acquire through pgbouncer: {e}"));
                assert_eq!(
                    inside.fetch_add(1, Ordering::SeqCst),
                    0,
                    "two holders at once"
                );
                {
                    let mut last = last_token.lock().expect("token mutex");
                    assert!(guard.fencing_token().0 > *last, "tokens only increase");
                    *last = guard.fencing_token().0;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                lock.release(guard)
                    .await
                    .expect("release through pgbouncer");
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker task");
    }
    if let Some(cleanup) = cleanup {
        cleanup().await;
    }
}

/// Every lock case and the property, through the pooler, in one test (one pgbouncer).
#[test]
fn lease_mode_through_pgbouncer_passes_the_lock_suite() {
    testing::locks::run_all_in_one(testing::locks::factory(lease_through_pgbouncer));
}

/// `pgbouncer=true` in the URL makes the guide's `new(url)` pick Lease mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_true_in_the_url_selects_lease_mode() {
    let schema = common::unique_schema("lpgbu");
    let url = format!(
        "{}?pgbouncer=true&sslmode=disable&schema={schema}",
        bouncer_url().await
    );
    let lock = PostgresDistributedLock::new(&url)
        .await
        .expect("lease through the pooler");
    assert_eq!(lock.mode(), LockMode::Lease);
    let guard = lock
        .try_acquire("pgbouncer-url", Duration::from_secs(5))
        .await
        .expect("try_acquire")
        .expect("a free lock");
    lock.release(guard).await.expect("release");
    drop(lock);
    common::drop_schema(&schema).await;
}

/// A PgBouncer that does not ignore the startup `options` parameter refuses our
/// connections: a `Config` error that says which setting to add, in both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_refusing_startup_options_is_a_config_error() {
    let mut options = PgBouncerOptions::new(common::url().await);
    options.config = vec!["ignore_startup_parameters = extra_float_digits".to_string()];
    let strict = PgBouncer::start_with(options)
        .await
        .expect("pgbouncer starts");
    let schema = common::unique_schema("lpgbo");
    for mode in [LockMode::Session, LockMode::Lease] {
        let outcome =
            PostgresDistributedLock::with_config(config(&strict.url("test"), &schema, mode)).await;
        let e = outcome.expect_err("the pooler refuses the options parameter");
        assert_eq!(e.kind(), ErrorKind::Config, "{mode}: {e}");
        assert!(
            e.message().contains("ignore_startup_parameters"),
            "{mode}: {e}"
        );
    }
    common::drop_schema(&schema).await;
}
