//! Standalone behaviour beyond the shared suites: configuration that must change what
//! happens, statistics, restore atomicity, timeouts and retries, the URL registry.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use state_core::{
    Checkpoint, Entry, ErrorKind, ImportMode, Registry, Stack, StateBackend, StatsLayer, Ttl,
    stream,
};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::{LocalRedis, LocalRedisOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

async fn shared_url() -> String {
    testing::services::redis()
        .await
        .unwrap_or_else(|e| panic!("no Redis for the tests: {e}"))
        .url()
}

async fn local() -> LocalRedis {
    LocalRedis::start(LocalRedisOptions::default())
        .await
        .unwrap_or_else(|e| panic!("cannot start a local redis-server: {e}"))
}

fn ns() -> String {
    testing::conformance::unique_namespace()
}

async fn connect(url: &str, prefix: &str) -> Result<RedisStateBackend, state_core::StateError> {
    RedisStateBackend::new(RedisConfig::builder().url(url).key_prefix(prefix).build()?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_opens_every_redis_scheme_by_url() -> TestResult {
    let mut registry = Registry::new();
    state_redis::register(&mut registry);
    let prefix = ns();
    let url = format!(
        "{}?prefix={prefix}&ttl=1h&pipeline_batch_size=7",
        shared_url().await
    );
    let backend = registry.connect(&url).await?;
    backend.put(b"k", b"v").await?;
    assert!(matches!(backend.ttl(b"k").await?, Ttl::Remaining(d) if d > Duration::from_secs(3500)));
    assert_eq!(backend.clear(b"").await?, 1);
    let err = registry
        .connect("redis://127.0.0.1:6379?colour=blue")
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Config));
    for scheme in ["redis", "rediss", "redis+sentinel", "redis+cluster"] {
        assert!(
            registry.schemes().iter().any(|s| s.as_str() == scheme),
            "{scheme} is not registered"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_every_operation_once() -> TestResult {
    let prefix = ns();
    let redis = Arc::new(connect(&shared_url().await, &prefix).await?);
    // The guide's counters come from the stats layer, the same for every backend.
    let backend = Stack::new().layer(StatsLayer::new()).apply(redis);
    backend.put(b"a", b"12345").await?;
    backend.get(b"a").await?;
    backend.get(b"missing").await?;
    backend.batch_get(&[b"a", b"missing"]).await?;
    backend.delete(b"a").await?;
    let _ = backend.get(b"").await; // invalid input: an operation that failed
    let s = backend.stats().await;
    assert_eq!(s.operations, 6, "{s:?}");
    assert_eq!((s.hits, s.misses), (2, 2), "{s:?}");
    assert_eq!(s.hit_rate(), 0.5);
    assert_eq!(s.errors, 1);
    assert_eq!(s.retries, 0);
    assert_eq!(s.bytes_read, 10);
    assert_eq!(s.bytes_written, 1 + 5, "the caller's key + value");
    assert!(s.avg_latency_us > 0);
    // A whole scan, a checkpoint and a clear are one operation each.
    let _ = stream::try_collect(backend.scan(b"")).await?;
    backend.checkpoint().await?;
    backend.clear(b"").await?;
    assert_eq!(backend.stats().await.operations, 9);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_memory_and_server_info_come_from_the_server() -> TestResult {
    let backend = connect(&shared_url().await, &ns()).await?;
    let health = backend.health_check().await?;
    assert!(health.is_healthy(), "{health:?}");
    assert!(health.detail.contains("PONG"), "{health:?}");
    assert!(backend.memory_usage().await? > 0);
    let info = backend.server_info().await?;
    assert_eq!(info.len(), 1);
    assert!(
        info[0].version.starts_with(|c: char| c.is_ascii_digit()),
        "{info:?}"
    );
    assert_eq!(info[0].role, "master");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_read_memory_and_clients_from_info_through_any_layer() -> TestResult {
    let redis = Arc::new(connect(&shared_url().await, &ns()).await?);
    let backend = Stack::new().layer(StatsLayer::new()).apply(redis);
    let gauges = backend.gauges().await?;
    let names: Vec<&str> = gauges.iter().map(|g| g.name).collect();
    assert_eq!(
        names,
        ["redis_memory_used_bytes", "redis_connected_clients"],
        "{gauges:?}"
    );
    assert!(gauges[0].value > 0.0, "{gauges:?}");
    assert!(
        gauges[1].value >= 1.0,
        "this backend is a client: {gauges:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_fast_with_a_connection_error() -> TestResult {
    // Port 1 refuses connections on loopback; connecting fails at once.
    let config = RedisConfig::builder()
        .url("redis://:hunter2@127.0.0.1:1")
        .retries(1, Duration::from_millis(1), Duration::from_millis(2))
        .build()?;
    let err = RedisStateBackend::new(config).await.err();
    let err = err.unwrap_or_else(|| panic!("connecting to port 1 succeeded"));
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(!format!("{err} {err:?}").contains("hunter2"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_size_opens_min_then_round_robins_up_to_max() -> TestResult {
    let server = local().await;
    let config = RedisConfig::builder()
        .url(server.url())
        .pool_size(2, 4)
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    let clients = |backend: &RedisStateBackend| {
        let backend = backend.clone();
        async move {
            let info = backend.server_info().await?;
            Ok::<u64, state_core::StateError>(info[0].connected_clients)
        }
    };
    assert_eq!(clients(&backend).await?, 2, "pool_min connections at start");
    for _ in 0..8 {
        backend.get(b"k").await?;
    }
    assert_eq!(clients(&backend).await?, 4, "pool_max connections in use");
    Ok(())
}

/// Our connections write through a stream of our own (Nagle's algorithm, `TCP_NODELAY` for
/// the rest of a partial write, see `conn/nagle.rs`) and run a task we spawn: many callers on one connection must each get their own reply, whatever mix of
/// write sizes they make, and dropping the backend must close the socket, as the driver's
/// own connections do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_serves_many_callers_and_closes_when_dropped() -> TestResult {
    let server = local().await;
    let config = RedisConfig::builder()
        .url(server.url())
        .pool_size(1, 1)
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    let callers = (0..64u32).map(|caller| {
        let backend = backend.clone();
        tokio::spawn(async move {
            for round in 0..50u32 {
                let key = format!("caller:{caller}");
                // One caller in eight writes values longer than a loopback segment (64 KiB)
                // among the small ones: packets of both sizes, and writes the kernel may
                // take in parts.
                let mut value = format!("{caller}/{round}/").into_bytes();
                if caller % 8 == 0 {
                    value.resize(100 << 10, b'v');
                }
                backend.put(key.as_bytes(), &value).await?;
                let read = backend.get(key.as_bytes()).await?;
                assert_eq!(read.as_deref(), Some(&value[..]), "caller {caller}");
            }
            Ok::<(), state_core::StateError>(())
        })
    });
    for caller in futures_util::future::join_all(callers).await {
        caller??;
    }
    assert_eq!(backend.server_info().await?[0].connected_clients, 1);
    drop(backend);
    // Only the `INFO` connection of redis-cli is left once our socket is closed.
    let mut clients = String::new();
    for _ in 0..50 {
        clients = server.cli(&["INFO", "clients"]).await?;
        if clients.lines().any(|l| l.trim() == "connected_clients:1") {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the dropped backend's connection is still open after 5 s: {clients}");
}

/// A connection given up on (a write to a paused server timed out with most of its bytes
/// still unsent) is closed at once, not left open until the server reads again: once the
/// pool has forgotten it and no request uses it, its task stops, as for the driver's own
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_connection_closes_while_its_reply_is_still_owed() -> TestResult {
    let server = local().await;
    let config = RedisConfig::builder()
        .url(server.url())
        .pool_size(1, 1)
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    backend.put(b"warm", b"up").await?;
    let in_use = established_to(server.port())?;
    server.pause()?;
    // More than the socket buffers hold: the connection's task is still writing it.
    let unanswered = backend.put(b"k", &vec![7u8; 32 << 20]).await;
    let mut open = in_use;
    for _ in 0..50 {
        open = established_to(server.port())?;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.resume()?;
    assert_eq!(in_use, 1, "the backend's one connection");
    assert!(unanswered.is_err(), "a paused server answered");
    assert_eq!(open, 0, "the timed-out connection is still open after 5 s");
    Ok(())
}

/// Established TCP connections (IPv4) to the local `port`, from any process.
fn established_to(port: u16) -> std::io::Result<usize> {
    const ESTABLISHED: &str = "01";
    let remote = format!(":{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(2).is_some_and(|r| r.ends_with(&remote))
                && fields.get(3) == Some(&ESTABLISHED)
        })
        .count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_batch_size_sets_the_commands_per_round_trip() -> TestResult {
    let server = local().await;
    let config = RedisConfig::builder()
        .url(server.url())
        .pipeline_batch_size(100)
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    let keys: Vec<Vec<u8>> = (0..250u32).map(|i| i.to_be_bytes().to_vec()).collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    backend.batch_get(&refs).await?;
    let stats = server.cli(&["INFO", "commandstats"]).await?;
    let mget = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_mget:"))
        .unwrap_or_default();
    assert!(mget.starts_with("cmdstat_mget:calls=3,"), "{mget}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_is_all_old_or_all_new_for_readers() -> TestResult {
    let backend = Arc::new(connect(&shared_url().await, &ns()).await?);
    let old = Checkpoint::new(
        vec![Entry::new(&b"old"[..], &b"1"[..])],
        SystemTime::now(),
        false,
    );
    let new = Checkpoint::new(
        vec![Entry::new(&b"new"[..], &b"2"[..])],
        SystemTime::now(),
        false,
    );
    backend.restore(old.clone()).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (backend, stop) = (Arc::clone(&backend), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut reads = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // One MGET: the server answers it between two transactions, never inside one.
                let got = backend.batch_get(&[b"old", b"new"]).await?;
                let present = got.iter().filter(|v| v.is_some()).count();
                assert_eq!(present, 1, "a reader saw a mix of two states: {got:?}");
                reads += 1;
            }
            Ok::<u32, state_core::StateError>(reads)
        })
    };
    for i in 0..40 {
        let checkpoint = if i % 2 == 0 { new.clone() } else { old.clone() };
        backend.restore(checkpoint).await?;
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader.await??;
    assert!(reads > 0);
    backend.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_import_leaves_no_staged_keys_and_the_old_state() -> TestResult {
    let server = local().await;
    let backend = connect(&server.url(), "app:").await?;
    backend.put(b"keep", b"old").await?;
    let entries = vec![
        Ok(Entry::new(&b"a"[..], &b"1"[..])),
        Ok(Entry::new(&b"b"[..], &b"2"[..])),
        Err(state_core::StateError::corrupt("truncated input")),
    ];
    let err = backend
        .import(stream::iter(entries), ImportMode::Replace)
        .await
        .err()
        .map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Corrupt));
    assert_eq!(backend.get(b"keep").await?.as_deref(), Some(&b"old"[..]));
    let dbsize = server.cli(&["DBSIZE"]).await?;
    assert_eq!(dbsize.trim(), "1", "staged keys were left behind");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_leave_writes_unknown_and_never_resend_them() -> TestResult {
    let server = local().await;
    let config = RedisConfig::builder()
        .url(server.url())
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .retries(2, Duration::from_millis(5), Duration::from_millis(10))
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    backend.put(b"warm", b"up").await?;
    server.pause()?;
    let outcome = backend.set_if_not_exists(b"once", b"v", None).await;
    let retries_after_write = backend.stats().await.retries;
    let read = backend.get(b"warm").await;
    let retries_after_read = backend.stats().await.retries;
    server.resume()?;
    let err = outcome
        .err()
        .unwrap_or_else(|| panic!("a write to a paused server succeeded"));
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.outcome_unknown(), "{err}");
    assert_eq!(retries_after_write, 0, "a non-idempotent write was re-sent");
    assert!(read.is_err());
    assert_eq!(retries_after_read, 2, "an idempotent read is retried");
    // The paused server still had the request: it applied it once on resuming.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(backend.get(b"once").await?.as_deref(), Some(&b"v"[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_with_connection_errors_then_recovers() -> TestResult {
    let mut server = local().await;
    let config = RedisConfig::builder()
        .url(server.url())
        .retries(1, Duration::from_millis(5), Duration::from_millis(10))
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    backend.put(b"k", b"v").await?;
    server.kill();
    let err = backend.get(b"k").await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Connection));
    server.restart().await?;
    // The broken connection was dropped; the next request dials again.
    backend.put(b"k", b"v2").await?;
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v2"[..]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_ttl_and_millisecond_ttls_reach_the_server() -> TestResult {
    let server = local().await;
    let config = RedisConfig::builder()
        .url(server.url())
        .key_prefix("p:")
        .default_ttl(Duration::from_millis(60_000))
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    backend.put(b"a", b"v").await?;
    let pttl: i64 = server.cli(&["PTTL", "p:a"]).await?.trim().parse()?;
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");
    backend
        .put_with_ttl(b"b", b"v", Duration::from_micros(1500))
        .await?;
    let pttl: i64 = server
        .cli(&["PTTL", "p:b"])
        .await?
        .trim()
        .parse()
        .unwrap_or(-2);
    assert!(pttl <= 2, "1.5ms rounds up to 2ms, got {pttl}");
    Ok(())
}

#[test]
fn the_test_fixtures_declare_this_crates_schemes() {
    let shapes = |schemes: &[state_core::Scheme]| -> Vec<(&str, state_core::UrlShape)> {
        schemes.iter().map(|s| (s.as_str(), s.shape())).collect()
    };
    assert_eq!(
        shapes(&testing::services::SCHEMES[..4]),
        shapes(&state_redis::SCHEMES)
    );
}

/// A key whose Redis key (prefix included) has the form of this crate's internal keys is
/// refused by every point operation and by a batch, before anything is sent; the same key
/// under a prefix that breaks the form is an ordinary key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_the_internal_form_are_refused_whole_prefix_included() -> TestResult {
    let url = shared_url().await;
    let namespace = ns();
    let internal_tail: &[u8] = b"\x00state-fence\x00k";
    // The prefix makes the form: `{7}` + marker + data key.
    let formed = connect(&url, "{7}").await?;
    let invalid = |what: &str, result: Result<(), state_core::StateError>| {
        let err = result
            .err()
            .ok_or(format!("{what} of an internal-form key succeeded"))?;
        if err.kind() != ErrorKind::InvalidInput || !err.to_string().contains("internal keys") {
            return Err(format!("{what}: {err}"));
        }
        Ok::<(), String>(())
    };
    invalid("put", formed.put(internal_tail, b"v").await)?;
    invalid(
        "put_with_ttl",
        formed
            .put_with_ttl(internal_tail, b"v", Duration::from_secs(60))
            .await,
    )?;
    invalid("get", formed.get(internal_tail).await.map(drop))?;
    invalid("delete", formed.delete(internal_tail).await.map(drop))?;
    invalid(
        "get_and_delete",
        formed.get_and_delete(internal_tail).await.map(drop),
    )?;
    invalid("ttl", formed.ttl(internal_tail).await.map(drop))?;
    invalid(
        "set_if_not_exists",
        formed
            .set_if_not_exists(internal_tail, b"v", None)
            .await
            .map(drop),
    )?;
    invalid(
        "batch_put",
        formed
            .batch_put(&[(b"fine", b"v"), (internal_tail, b"v")])
            .await,
    )?;
    assert_eq!(
        formed.get(b"fine").await?,
        None,
        "a refused batch sends nothing"
    );

    // Under this test's own prefix the same bytes are an ordinary key.
    let plain = connect(&url, &namespace).await?;
    plain.put(internal_tail, b"v").await?;
    assert_eq!(plain.get(internal_tail).await?.as_deref(), Some(&b"v"[..]));
    assert!(plain.delete(internal_tail).await?);
    Ok(())
}
