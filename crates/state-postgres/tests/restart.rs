//! A server restart (`pg_ctl restart -m fast`) in the middle of a load: the load resumes by
//! itself, the errors seen meanwhile are retryable kinds, and no acknowledged write is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use state_core::{RetryPolicy, Stack, Stats, StatsLayer};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use testing::services::{LocalPostgres, LocalPostgresOptions};

const WRITERS: usize = 4;
/// Writes each writer must get acknowledged after the restart before the load stops.
const RESUMED_WRITES: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_resumes_after_a_fast_restart_and_keeps_every_acknowledged_write() {
    let pg = match LocalPostgres::start(LocalPostgresOptions::default()).await {
        Ok(pg) => pg,
        Err(e) => panic!("cannot start a local PostgreSQL: {e}"),
    };
    let config = PostgresConfig::new(&pg.url())
        .with_ssl_mode("disable")
        .with_pool_size(1, WRITERS as u32)
        .with_connect_timeout(Duration::from_secs(2))
        .with_retry(RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(400),
            max_elapsed: Duration::from_secs(3),
            failover_timeout: Duration::from_secs(3),
        });
    let backend = match PostgresStateBackend::new(config).await {
        // The stats layer counts operations; the backend its broken connections.
        Ok(b) => Stack::new().layer(StatsLayer::new()).apply(Arc::new(b)),
        Err(e) => panic!("cannot open the backend: {e}"),
    };

    let restarted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (backend, restarted, stop) = (backend.clone(), restarted.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            let resumed = AtomicU64::new(0);
            let mut i: u64 = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let key = format!("w{w}:{i}");
                match backend.put(key.as_bytes(), &i.to_be_bytes()).await {
                    Ok(()) => {
                        acked.push((key, i));
                        if restarted.load(Ordering::Relaxed) {
                            resumed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => errors.push((e.kind(), e.is_retryable(), e.to_string())),
                }
                i += 1;
            }
            (acked, errors, resumed.load(Ordering::Relaxed))
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = backend.stats().await;
    if let Err(e) = pg.restart().await {
        stop.store(true, Ordering::Relaxed);
        panic!("pg_ctl restart failed: {e}");
    }
    restarted.store(true, Ordering::Relaxed);
    // Let the writers prove the load resumed, bounded by the deadline.
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if backend.stats().await.operations
            >= before.operations + RESUMED_WRITES * WRITERS as u64 * 2
        {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all_acked = Vec::new();
    for (w, writer) in writers.into_iter().enumerate() {
        let (acked, errors, resumed) = match writer.await {
            Ok(out) => out,
            Err(e) => panic!("writer {w} panicked: {e}"),
        };
        for (kind, retryable, message) in &errors {
            assert!(
                retryable,
                "writer {w} saw a non-retryable {kind:?} error: {message}"
            );
        }
        assert!(
            resumed >= RESUMED_WRITES,
            "writer {w} got only {resumed} writes acknowledged after the restart"
        );
        eprintln!(
            "writer {w}: {} acknowledged ({resumed} after the restart), {} retryable errors",
            acked.len(),
            errors.len()
        );
        all_acked.extend(acked);
    }
    let after = backend.stats().await;
    let broken = |s: &Stats| s.extra("broken_connections").unwrap_or(0);
    assert!(
        broken(&after) > broken(&before),
        "the restart was not noticed: {after:?}"
    );

    // Every acknowledged write is there, read back in batches.
    for chunk in all_acked.chunks(500) {
        let keys: Vec<&[u8]> = chunk.iter().map(|(k, _)| k.as_bytes()).collect();
        let values = match backend.batch_get(&keys).await {
            Ok(v) => v,
            Err(e) => panic!("reading back failed: {e}"),
        };
        for ((key, i), value) in chunk.iter().zip(values) {
            assert_eq!(
                value.as_deref(),
                Some(&i.to_be_bytes()[..]),
                "acknowledged write {key} was lost"
            );
        }
    }
    eprintln!(
        "{} acknowledged writes verified; {after:?}",
        all_acked.len()
    );
}
