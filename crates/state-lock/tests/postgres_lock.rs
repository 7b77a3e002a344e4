//! PostgreSQL-specific lock tests (the shared cases are in `postgres_*_suite.rs`):
//! a terminated session holder (RELIABILITY 10), cancelled acquires (8), the key in
//! `pg_locks` (11), Session mode's connection cap, a lease pool that heals after its
//! backends are killed, and errors that say what was wrong without showing the password.

mod pg_lock_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pg_lock_common::{self as common, config, open};
use state_core::StateBackend;
use state_lock::{
    DistributedLock, ErrorKind, LockMode, PostgresDistributedLock, PostgresLockConfig,
    advisory_key, new_owner_token,
};
use testing::conformance::expect_kind;
use testing::locks::eventually;

const LONG: Duration = Duration::from_secs(30);
/// How long the server may take to notice a closed or killed session.
const FREED_WITHIN: Duration = Duration::from_secs(10);

/// Runs `body` with a fresh schema and drops it afterwards, even when the body panics.
async fn in_schema<F, Fut>(tag: &str, body: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let schema = common::unique_schema(tag);
    let outcome = tokio::spawn(body(schema.clone())).await;
    common::drop_schema(&schema).await;
    if let Err(join) = outcome {
        match join.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("the test task was cancelled: {e}"),
        }
    }
}

fn name(tag: &str) -> String {
    format!("{tag}-{}", new_owner_token())
}

/// RELIABILITY 10: `pg_terminate_backend` of the session holder frees the lock on the
/// server; the holder learns it at its next extend or release (`NotOwner`), and the next
/// holder's higher token fences the old holder's late write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_session_holder_loses_the_lock_and_is_fenced() {
    in_schema("lterm", |schema| async move {
        let url = common::url().await;
        let a = open(config(&url, &schema, LockMode::Session)).await;
        let b = open(config(&url, &schema, LockMode::Session)).await;
        let backend = common::backend(&schema).await;
        let lock_name = name("terminated");
        let key = format!("{lock_name}/resource").into_bytes();

        let mut guard_a = a
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("A gets the free lock");
        let token_a = guard_a.fencing_token();
        backend
            .put_fenced(&key, b"a1", token_a)
            .await
            .expect("A's first write");

        let pids = common::holders(&lock_name).await;
        assert_eq!(
            pids.len(),
            1,
            "exactly one backend holds the lock: {pids:?}"
        );
        common::sql(&format!("SELECT pg_terminate_backend({})", pids[0])).await;

        eventually(
            "the server frees the killed session's lock",
            FREED_WITHIN,
            || async { common::holders(&lock_name).await.is_empty() },
        )
        .await;
        assert!(!b.is_locked(&lock_name).await.expect("is_locked"));

        expect_kind(
            "extend by the killed holder",
            a.extend(&mut guard_a, LONG).await,
            ErrorKind::NotOwner,
        );
        let guard_b = b
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("B gets the freed lock");
        assert!(
            guard_b.fencing_token() > token_a,
            "B's token {:?} is above A's {token_a:?}",
            guard_b.fencing_token()
        );
        backend
            .put_fenced(&key, b"b1", guard_b.fencing_token())
            .await
            .expect("B's write");
        expect_kind(
            "A's late write",
            backend.put_fenced(&key, b"a2", token_a).await,
            ErrorKind::Fenced,
        );
        expect_kind(
            "release by the killed holder",
            a.release(guard_a).await,
            ErrorKind::NotOwner,
        );
        assert!(
            b.is_locked(&lock_name).await.expect("is_locked"),
            "B still holds"
        );

        // A's handle is not poisoned: it takes other locks, and this one after B.
        let other = a
            .try_acquire(&name("after"), LONG)
            .await
            .expect("A's handle still works")
            .expect("a free lock");
        a.release(other).await.expect("release");
        b.release(guard_b).await.expect("B's release");
        let again = a
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("A after B");
        a.release(again).await.expect("release");
        backend.clear(&key).await.expect("clear the fence");
    })
    .await;
}

/// RELIABILITY 8: an `acquire` cancelled while it waits leaves nothing held, and neither
/// do many `try_acquire`s cancelled at random points (before, during and after their
/// statement): `pg_locks` shows no holder once the server has noticed the dropped
/// connections, the handle keeps at most its idle connections, and another handle gets
/// the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_acquires_leave_nothing_held() {
    in_schema("lcancel", |schema| async move {
        let url = common::url().await;
        let app = common::unique_app("cancel");
        let a = open(config(&url, &schema, LockMode::Session).with_application_name(&app)).await;
        let b = open(config(&url, &schema, LockMode::Session)).await;
        let lock_name = name("cancelled");

        // 1. A waiting acquire, cancelled by a timeout around it.
        let held_by_b = b
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("B takes the lock");
        let waited = tokio::time::timeout(Duration::from_millis(400), a.acquire(&lock_name, LONG));
        assert!(
            waited.await.is_err(),
            "A's acquire cannot finish while B holds the lock"
        );
        b.release(held_by_b).await.expect("B's release");
        eventually(
            "nothing holds the lock after B's release",
            FREED_WITHIN,
            || async { common::holders(&lock_name).await.is_empty() },
        )
        .await;

        // 2. try_acquire cancelled at random points, from 0 µs (first poll: the statement
        //    is being sent) to a few ms (in flight, or done).
        let mut seed = u64::from(std::process::id()) ^ 0x9e37_79b9_7f4a_7c15;
        let (mut cancelled, mut won, mut busy) = (0u32, 0u32, 0u32);
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let micros = if seed % 4 == 0 { 0 } else { seed % 3000 };
            let attempt = a.try_acquire(&lock_name, LONG);
            match tokio::time::timeout(Duration::from_micros(micros), attempt).await {
                Err(_) => cancelled += 1,
                Ok(Ok(Some(guard))) => {
                    won += 1;
                    a.release(guard).await.expect("release of a won lock");
                }
                // An earlier cancelled attempt's session still holds it until the server
                // notices its connection closed.
                Ok(Ok(None)) => busy += 1,
                Ok(Err(e)) => panic!("try_acquire failed: {e}"),
            }
        }
        eprintln!("{cancelled} cancelled, {won} won, {busy} busy");
        eventually(
            "no session holds the lock after the cancellations",
            FREED_WITHIN,
            || async { common::holders(&lock_name).await.is_empty() },
        )
        .await;
        eventually(
            "the handle keeps at most its idle connections",
            FREED_WITHIN,
            || async { common::connections_of(&app).await <= 4 },
        )
        .await;
        let guard = b
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("B gets the lock nobody holds");
        b.release(guard).await.expect("release");
    })
    .await;
}

/// Two acquirers in one process never share a session: of many concurrent `try_acquire`s
/// on ONE handle exactly one wins (session locks are re-entrant on a shared connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_handle_never_grants_twice() {
    in_schema("lreent", |schema| async move {
        let url = common::url().await;
        let lock = Arc::new(open(config(&url, &schema, LockMode::Session)).await);
        let lock_name = Arc::new(name("reentrant"));
        for round in 0..5 {
            let winners = Arc::new(AtomicUsize::new(0));
            let mut tasks = Vec::new();
            for _ in 0..12 {
                let (lock, lock_name, winners) = (
                    Arc::clone(&lock),
                    Arc::clone(&lock_name),
                    Arc::clone(&winners),
                );
                tasks.push(tokio::spawn(async move {
                    let guard = lock
                        .try_acquire(&lock_name, LONG)
                        .await
                        .expect("try_acquire");
                    if guard.is_some() {
                        winners.fetch_add(1, Ordering::SeqCst);
                    }
                    guard
                }));
            }
            let mut guards = Vec::new();
            for task in tasks {
                if let Some(guard) = task.await.expect("acquirer task") {
                    guards.push(guard);
                }
            }
            assert_eq!(
                winners.load(Ordering::SeqCst),
                1,
                "round {round}: one winner"
            );
            for guard in guards {
                lock.release(guard).await.expect("release");
            }
        }
    })
    .await;
}

/// RELIABILITY 11: the lock shows in `pg_locks` under the documented key: `classid` and
/// `objid` are the high and low halves of `advisory_key(name)`, `objsubid` 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_sees_the_documented_key() {
    in_schema("lkey", |schema| async move {
        let url = common::url().await;
        let lock = open(config(&url, &schema, LockMode::Session)).await;
        let lock_name = name("key");
        assert_ne!(advisory_key(&lock_name), 0);
        let guard = lock
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("a free lock");
        assert_eq!(common::holders(&lock_name).await.len(), 1);
        lock.release(guard).await.expect("release");
        assert!(
            common::holders(&lock_name).await.is_empty(),
            "released on the server"
        );
    })
    .await;
}

/// Session mode: idle connections whose backends were killed are replaced on the next
/// acquire without an error (a dead idle connection fails before it can take anything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_idle_sessions_are_replaced() {
    in_schema("lidle", |schema| async move {
        let url = common::url().await;
        let app = common::unique_app("idle");
        let a = open(config(&url, &schema, LockMode::Session).with_application_name(&app)).await;
        // Four held at once, then released: four idle connections.
        let mut guards = Vec::new();
        for i in 0..4 {
            let guard = a.try_acquire(&name(&format!("warm{i}")), LONG).await;
            guards.push(guard.expect("try_acquire").expect("a free lock"));
        }
        for guard in guards {
            a.release(guard).await.expect("release");
        }
        assert_eq!(
            common::connections_of(&app).await,
            4,
            "four idle connections"
        );
        common::terminate_app(&app).await;
        eventually("the killed backends are gone", FREED_WITHIN, || async {
            common::connections_of(&app).await == 0
        })
        .await;
        let lock_name = name("after-kill");
        assert!(
            !a.is_locked(&lock_name)
                .await
                .expect("is_locked on a new connection")
        );
        let guard = a
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire after the idle connections died")
            .expect("a free lock");
        assert_eq!(common::holders(&lock_name).await.len(), 1);
        a.release(guard).await.expect("release");
    })
    .await;
}

/// Session mode keeps one connection per held lock and at most `pool_max` in all: a handle
/// at its cap waits up to `acquire_timeout` and then says why; a release lets a waiting
/// acquire in; many tasks over few connections all get through, and the server never sees
/// more than `pool_max` connections of the handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_holds_at_most_pool_max_locks() {
    in_schema("lcap", |schema| async move {
        let url = common::url().await;
        let app = common::unique_app("cap");
        let lock = Arc::new(
            open(
                config(&url, &schema, LockMode::Session)
                    .with_application_name(&app)
                    .with_pool_max(3)
                    .with_acquire_timeout(Duration::from_secs(2)),
            )
            .await,
        );
        let mut guards = Vec::new();
        for i in 0..3 {
            let guard = lock.try_acquire(&name(&format!("cap{i}")), LONG).await;
            guards.push(guard.expect("try_acquire").expect("a free lock"));
        }
        assert_eq!(common::connections_of(&app).await, 3);
        let e = lock
            .try_acquire(&name("over"), LONG)
            .await
            .expect_err("a fourth lock needs a fourth connection");
        assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
        assert!(e.message().contains("pool_max (3)"), "{e}");
        assert!(e.message().contains("lock_mode=lease"), "{e}");

        let waiting = {
            let lock = Arc::clone(&lock);
            tokio::spawn(async move { lock.try_acquire(&name("waiting"), LONG).await })
        };
        let released = guards.pop().expect("three guards");
        lock.release(released).await.expect("release");
        let guard = waiting
            .await
            .expect("waiting task")
            .expect("try_acquire after a release")
            .expect("a free lock");
        guards.push(guard);
        for guard in guards {
            lock.release(guard).await.expect("release");
        }

        let mut tasks = Vec::new();
        for t in 0..8 {
            let lock = Arc::clone(&lock);
            tasks.push(tokio::spawn(async move {
                for i in 0..5 {
                    let lock_name = name(&format!("many{t}-{i}"));
                    let guard = lock
                        .try_acquire(&lock_name, LONG)
                        .await
                        .expect("try_acquire waits for a connection")
                        .expect("a free lock");
                    lock.release(guard).await.expect("release");
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        let open_now = common::connections_of(&app).await;
        assert!(
            (1..=3).contains(&open_now),
            "{open_now} connections open, pool_max is 3"
        );
    })
    .await;
}

/// Lease mode: a held lease survives its pool's backends being killed (it is a row, not a
/// session), and the pool heals: extend, is_locked and release work on new connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_survives_killed_pool_connections() {
    in_schema("lheal", |schema| async move {
        let url = common::url().await;
        let app = common::unique_app("heal");
        let a = open(config(&url, &schema, LockMode::Lease).with_application_name(&app)).await;
        let b = open(config(&url, &schema, LockMode::Lease)).await;
        let lock_name = name("heal");
        let mut guard = a
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("a free lock");
        // Several pooled connections, so that more than one is dead afterwards.
        let checks: Vec<_> = (0..4).map(|_| a.is_locked(&lock_name)).collect();
        for check in checks {
            assert!(check.await.expect("is_locked"));
        }
        assert!(
            common::terminate_app(&app).await >= 1,
            "the pool had connections"
        );
        eventually("the killed backends are gone", FREED_WITHIN, || async {
            common::connections_of(&app).await == 0
        })
        .await;
        let before = Instant::now();
        a.extend(&mut guard, LONG)
            .await
            .expect("extend after the pool's backends were killed");
        assert!(guard.deadline() >= before + LONG);
        assert!(
            b.try_acquire(&lock_name, LONG)
                .await
                .expect("try_acquire")
                .is_none()
        );
        a.release(guard).await.expect("release");
        assert!(!b.is_locked(&lock_name).await.expect("is_locked"));
    })
    .await;
}

/// `relpersistence` of the schema's lock table: `u` unlogged, `p` logged.
async fn table_persistence(schema: &str) -> String {
    let mut conn = common::admin().await;
    let persistence: String =
        sqlx::query_scalar("SELECT relpersistence::text FROM pg_class WHERE oid = to_regclass($1)")
            .bind(format!("\"{schema}\".state_locks"))
            .fetch_one(&mut conn)
            .await
            .expect("reading the lock table's relpersistence");
    let _ = sqlx::Connection::close(conn).await;
    persistence
}

/// Lease mode's table is `UNLOGGED` by default and logged with durable leases; opening a
/// lock switches an existing table to its setting, and held leases survive the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_table_is_unlogged_unless_durable() {
    in_schema("lpersist", |schema| async move {
        let url = common::url().await;
        let unlogged = open(config(&url, &schema, LockMode::Lease)).await;
        assert_eq!(table_persistence(&schema).await, "u", "the default");
        let lock_name = name("persist");
        let guard = unlogged
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("a free lock");

        let durable = open(config(&url, &schema, LockMode::Lease).with_durable_leases(true)).await;
        assert_eq!(table_persistence(&schema).await, "p", "durable_leases");
        assert!(
            durable.is_locked(&lock_name).await.expect("is_locked"),
            "the switch keeps held leases"
        );
        unlogged.release(guard).await.expect("release");
        let mut guard = durable
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("a free lock");
        durable.extend(&mut guard, LONG).await.expect("extend");
        durable.release(guard).await.expect("release");

        let separator = if url.contains('?') { '&' } else { '?' };
        let url_param = format!("{url}{separator}durable_leases=false");
        let again = open(config(&url_param, &schema, LockMode::Lease)).await;
        assert_eq!(
            table_persistence(&schema).await,
            "u",
            "durable_leases=false"
        );
        let guard = again
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("a free lock");
        again.release(guard).await.expect("release");
    })
    .await;
}

/// A guard goes back to the lock type and mode that issued it; another one refuses it
/// with `InvalidInput` and leaves the lock held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_of_another_mode_is_refused() {
    in_schema("lforeign", |schema| async move {
        let url = common::url().await;
        let session = open(config(&url, &schema, LockMode::Session)).await;
        let lease = open(config(&url, &schema, LockMode::Lease)).await;
        let lock_name = name("foreign");
        let guard = session
            .try_acquire(&lock_name, LONG)
            .await
            .expect("try_acquire")
            .expect("a free lock");
        expect_kind(
            "a session guard released by a lease lock",
            lease.release(guard).await,
            ErrorKind::InvalidInput,
        );
        // The refused guard was dropped by the lease lock's release: dropping a session
        // guard frees its lock (no other release path exists for it).
        eventually(
            "the dropped session guard's lock is freed",
            FREED_WITHIN,
            || async { !session.is_locked(&lock_name).await.unwrap_or(true) },
        )
        .await;
        assert_eq!(lease.mode(), LockMode::Lease);
        assert_eq!(session.mode(), LockMode::Session);
        assert_eq!(session.schema(), schema);
    })
    .await;
}

/// Connection and configuration errors are immediate, say what to do, and never show the
/// password.
#[tokio::test]
async fn errors_are_clear_and_never_show_the_password() {
    // A port nobody listens on: refused at once, a retryable connection error.
    let port = testing::services::process::free_port().expect("a free port");
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/test?sslmode=disable");
    for mode in [LockMode::Session, LockMode::Lease] {
        let config = PostgresLockConfig::new(&url)
            .with_mode(mode)
            .with_connect_timeout(Duration::from_secs(2));
        let config = match mode {
            // The pool would retry connecting until its acquire timeout.
            LockMode::Lease => PostgresLockConfig::from_postgres_config(
                config
                    .postgres_config()
                    .clone()
                    .with_acquire_timeout(Duration::from_secs(2)),
            )
            .with_mode(mode),
            LockMode::Session => config,
        };
        let e = PostgresDistributedLock::with_config(config)
            .await
            .expect_err("nothing listens there");
        assert!(
            matches!(e.kind(), ErrorKind::Connection | ErrorKind::Timeout),
            "{mode}: {e}"
        );
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{mode}: {e:?}");
    }

    let e = PostgresDistributedLock::new("postgres://postgres@127.0.0.1:5432/test?lock_mode=nope")
        .await
        .expect_err("a bad mode");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("lock_mode"), "{e}");

    // A database that does not exist: a Config error naming it.
    let url = common::url().await;
    if url == "postgres://postgres@127.0.0.1:5432/test" {
        // Trust authentication accepts any password: a live handle's Debug hides it.
        let schema = common::unique_schema("ldebug");
        let with_password = "postgres://postgres:hunter2@127.0.0.1:5432/test";
        let lock = open(config(with_password, &schema, LockMode::Lease)).await;
        let shown = format!("{lock:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("***"),
            "{shown}"
        );
        drop(lock);
        common::drop_schema(&schema).await;
    }
    let missing = format!(
        "{}/no_such_db_{}",
        url.rsplit_once('/').expect("a URL with a database").0,
        std::process::id()
    );
    let e = PostgresDistributedLock::with_config(
        PostgresLockConfig::new(&missing).with_ssl_mode("disable"),
    )
    .await
    .expect_err("a missing database");
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.message().contains("no_such_db"), "{e}");
}
