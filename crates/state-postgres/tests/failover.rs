//! Primary failover with libpq-style multi-host URLs (`h1:p1,h2:p2` with
//! `target_session_attrs=read-write`) on the fixtures' streaming replica: after the standby
//! is promoted and the old primary is gone, the backend finds the new primary by itself;
//! with a synchronous standby and `synchronous_commit=remote_apply`, no acknowledged write
//! is lost, and no write of unknown outcome is sent again.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use state_postgres::{PostgresConfig, PostgresStateBackend, StateBackend};
use testing::services::{LocalPostgres, LocalPostgresOptions};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

async fn primary_and_replica(config: Vec<String>) -> (LocalPostgres, LocalPostgres) {
    let primary = LocalPostgres::start(LocalPostgresOptions {
        config,
        ..LocalPostgresOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("cannot start the primary: {e}"));
    let replica = primary
        .start_replica()
        .await
        .unwrap_or_else(|e| panic!("cannot start the replica: {e}"));
    (primary, replica)
}

/// Both servers in one URL, primary first, writes only to a primary.
fn multi_host_url(primary: &LocalPostgres, replica: &LocalPostgres, extra: &str) -> String {
    format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/test?target_session_attrs=read-write\
         &sslmode=disable&schema=app&failover_timeout=30s{extra}",
        primary.port(),
        replica.port()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_follow_a_promoted_standby() -> TestResult {
    let (primary, replica) = primary_and_replica(Vec::new()).await;
    // The replica comes second in the list but also first in another: a standby is skipped
    // wherever it stands.
    let reversed = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/test?target_session_attrs=read-write\
         &sslmode=disable&schema=app",
        replica.port(),
        primary.port()
    );
    let backend = PostgresStateBackend::new(PostgresConfig::from_url(&reversed)?).await?;
    backend.put(b"before", b"1").await?;
    assert_eq!(
        primary
            .psql("SELECT count(*) FROM app.state_entries")
            .await?
            .trim(),
        "1",
        "the write went to the primary"
    );
    drop(backend);

    let backend = PostgresStateBackend::new(PostgresConfig::from_url(&multi_host_url(
        &primary, &replica, "",
    ))?)
    .await?;
    backend.put(b"k", b"old").await?;
    primary.stop().await?;
    replica.promote().await?;
    // Writes resume within 15 s, without a restart of the backend (bounded loop).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last_error = None;
    let mut resumed = false;
    while Instant::now() < deadline {
        match backend.put(b"k", b"new").await {
            Ok(()) => {
                resumed = true;
                break;
            }
            Err(e) => {
                assert!(
                    e.kind() != state_postgres::ErrorKind::Config,
                    "a failover is never a configuration error: {e}"
                );
                last_error = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(resumed, "writes did not resume within 15 s: {last_error:?}");
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"new"[..]));
    assert_eq!(
        replica
            .psql("SELECT value FROM app.state_entries WHERE key = 'k'::bytea")
            .await?
            .trim(),
        "\\x6e6577",
        "the write landed on the promoted standby"
    );
    let health = backend.health_check().await?;
    assert!(health.healthy, "{health:?}");
    Ok(())
}

/// What the writers saw: keys acknowledged, and keys whose outcome is unknown.
#[derive(Default)]
struct Ledger {
    acked: BTreeSet<String>,
    unknown: BTreeSet<String>,
    failed: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_across_a_promotion() -> TestResult {
    // Every commit waits until the standby has applied it.
    let (primary, replica) =
        primary_and_replica(vec!["synchronous_standby_names = '*'".to_string()]).await;
    let url = multi_host_url(&primary, &replica, "&synchronous_commit=remote_apply");
    let backend = PostgresStateBackend::new(PostgresConfig::from_url(&url)?).await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (backend, ledger, stop) = (backend.clone(), ledger.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            // Bounded: at most 5,000 writes or until told to stop.
            for i in 0..5000u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let key = format!("w{w}:{i:05}");
                let outcome = backend.put(key.as_bytes(), key.as_bytes()).await;
                let mut ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok(()) => {
                        ledger.acked.insert(key);
                    }
                    // Never re-sent: recorded as possibly applied.
                    Err(e) if e.outcome_unknown() => {
                        ledger.unknown.insert(key);
                    }
                    Err(_) => ledger.failed += 1,
                }
            }
        }));
    }
    let acked = || ledger.lock().map(|l| l.acked.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked() < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = acked();
    assert!(
        before >= 100,
        "the writers made too little progress: {before}"
    );
    primary.kill()?;
    replica.promote().await?;
    // The promoted node inherited `synchronous_standby_names` with the base backup and has
    // no standby of its own yet: as failover tooling does, let it commit alone (commits
    // waiting for a standby complete then).
    replica
        .psql("ALTER SYSTEM SET synchronous_standby_names = ''")
        .await?;
    replica.psql("SELECT pg_reload_conf()").await?;
    // Writes resume on the promoted node (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked() < before + 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await?;
    }
    let after = acked();
    assert!(
        after >= before + 100,
        "writes did not resume after the promotion: {before} acknowledged before, {after} after"
    );

    let listed = replica
        .psql("SELECT convert_from(key, 'UTF8') FROM app.state_entries ORDER BY key")
        .await?;
    let present: BTreeSet<String> = listed.lines().map(|l| l.trim().to_string()).collect();
    let ledger = ledger.lock().unwrap_or_else(|p| p.into_inner());
    let lost: Vec<&String> = ledger.acked.difference(&present).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are missing on the promoted node: {:?}",
        lost.len(),
        ledger.acked.len(),
        lost.iter().take(10).collect::<Vec<_>>()
    );
    // Nothing appears that no writer sent.
    let from_nowhere: Vec<&String> = present
        .iter()
        .filter(|k| !ledger.acked.contains(*k) && !ledger.unknown.contains(*k))
        .collect();
    assert!(
        from_nowhere.is_empty(),
        "rows nobody wrote: {from_nowhere:?}"
    );
    eprintln!(
        "acknowledged {} (present {}), outcome unknown {}, failed {}",
        ledger.acked.len(),
        present.len(),
        ledger.unknown.len(),
        ledger.failed
    );
    Ok(())
}
