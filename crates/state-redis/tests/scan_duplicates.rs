//! RELIABILITY 16 on a private redis-server: SCAN really returns a key twice when the key
//! table shrinks during a scan, and the library's `scan`, `count` and `export` (what a
//! checkpoint streams) still return every key present throughout, each exactly once.
//!
//! The provocation is deterministic. The library talks through a `FaultProxy` that delays
//! every chunk by [`LATENCY`], so a SCAN round trip takes more than a second; the server
//! logs every command (`slowlog-log-slower-than 0`), which shows the library's SCANs with
//! their cursors. After the library's second SCAN, the test replays those SCANs itself (the
//! table has not changed, so the replies are the library's), keeps the last [`SURVIVORS`]
//! keys of the last reply, deletes every other key, and waits (`DEBUG HTSTATS`) until
//! `serverCron` has shrunk the table to 4 buckets. The survivors sit in the block of buckets
//! just behind the library's cursor, which the shrink folds into the one bucket the cursor
//! points at: the next SCAN returns them again. The test first shows that with its own raw
//! SCAN from that cursor, asserting a repeat, then checks from the slow log that the library
//! sent that SCAN after the shrink, and checks what the library returned.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use state_core::{Entry, StateBackend};
use state_redis::redis::{self, Value, aio::MultiplexedConnection};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::faults::{FaultProxy, proxy_in_front_of};
use testing::services::{LocalRedis, LocalRedisOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PREFIX: &str = "dup:";
const KEYS: usize = 6000;
/// The library's pipeline batch, hence its SCAN COUNT: about 12 SCANs for [`KEYS`].
const COUNT: usize = 500;
const SURVIVORS: usize = 3;
/// Per chunk and direction: the window between two library SCANs is twice this.
const LATENCY: Duration = Duration::from_millis(300);
/// Bound of every wait.
const PATIENCE: Duration = Duration::from_secs(60);

struct Setup {
    _server: LocalRedis,
    admin: MultiplexedConnection,
    proxy: FaultProxy,
    backend: RedisStateBackend,
}

async fn setup() -> Result<Setup, Box<dyn std::error::Error>> {
    let options = LocalRedisOptions {
        config: [
            "hz 500",
            "enable-debug-command yes",
            "slowlog-log-slower-than 0",
            "slowlog-max-len 100000",
        ]
        .map(String::from)
        .to_vec(),
        ..LocalRedisOptions::default()
    };
    let server = LocalRedis::start(options).await?;
    let mut admin = redis::Client::open(server.url())?
        .get_multiplexed_async_connection()
        .await?;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.cmd("SET")
                .arg(format!("{PREFIX}k{i:05}"))
                .arg(format!("value {i}"))
                .ignore();
        }
        pipe.query_async::<()>(&mut admin).await?;
    }
    let (proxy, proxied) = proxy_in_front_of(&server.url()).await?;
    let config = RedisConfig::builder()
        .url(proxied)
        .key_prefix(PREFIX)
        .pipeline_batch_size(COUNT)
        .response_timeout(Duration::from_secs(20))
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    proxy.set_latency(LATENCY, Duration::ZERO);
    Ok(Setup {
        _server: server,
        admin,
        proxy,
        backend,
    })
}

/// One command in the slow log.
struct Logged {
    id: i64,
    args: Vec<Vec<u8>>,
    addr: String,
}

async fn slowlog(admin: &mut MultiplexedConnection) -> redis::RedisResult<Vec<Logged>> {
    let reply: Value = redis::cmd("SLOWLOG")
        .arg("GET")
        .arg(1_000_000)
        .query_async(admin)
        .await?;
    let Value::Array(entries) = reply else {
        panic!("SLOWLOG GET: unexpected reply {reply:?}");
    };
    let mut out = Vec::new();
    for entry in entries {
        let Value::Array(fields) = entry else {
            panic!("SLOWLOG GET: unexpected entry {entry:?}");
        };
        let (Some(Value::Int(id)), Some(Value::Array(args)), Some(Value::BulkString(addr))) =
            (fields.first(), fields.get(3), fields.get(4))
        else {
            panic!("SLOWLOG GET: unexpected entry {fields:?}");
        };
        let args = args
            .iter()
            .map(|a| match a {
                Value::BulkString(b) => b.clone(),
                other => panic!("SLOWLOG GET: unexpected argument {other:?}"),
            })
            .collect();
        out.push(Logged {
            id: *id,
            args,
            addr: String::from_utf8_lossy(addr).into_owned(),
        });
    }
    out.sort_by_key(|l| l.id);
    Ok(out)
}

/// The library's SCANs so far (those that came through the proxy), oldest first.
async fn library_scans(setup: &mut Setup) -> redis::RedisResult<Vec<Logged>> {
    let ours: Vec<String> = setup
        .proxy
        .upstream_local_addrs()
        .iter()
        .map(|a| a.to_string())
        .collect();
    Ok(slowlog(&mut setup.admin)
        .await?
        .into_iter()
        .filter(|l| {
            l.args
                .first()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"SCAN"))
                && ours.contains(&l.addr)
        })
        .collect())
}

/// Sends `args` with the cursor replaced by `cursor`; returns the next cursor and the keys.
async fn scan_as(
    admin: &mut MultiplexedConnection,
    args: &[Vec<u8>],
    cursor: &[u8],
) -> redis::RedisResult<(Vec<u8>, Vec<Vec<u8>>)> {
    let mut cmd = redis::cmd("SCAN");
    cmd.arg(cursor);
    for arg in args.iter().skip(2) {
        cmd.arg(arg);
    }
    cmd.query_async(admin).await
}

/// What the provocation did, for the checks of the library's results.
struct Provoked {
    /// Every distinct key the raw SCAN sequence returned (the library's, replayed).
    distinct: BTreeSet<Vec<u8>>,
    /// The keys present throughout: they are not deleted.
    survivors: BTreeSet<Vec<u8>>,
    /// The cursor the library continues from after the shrink.
    cursor: Vec<u8>,
    /// The slow-log id of the check that saw the shrink done.
    shrunk_at: i64,
    replayed: usize,
}

/// Drives the provocation while the library scans (see the module docs).
async fn provoke(setup: &mut Setup) -> Result<Provoked, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let calls = loop {
        let scans = library_scans(setup).await?;
        if scans.len() >= 2 {
            break scans;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the library sent {} SCANs in {PATIENCE:?}",
            scans.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Replay the library's SCANs: the table is unchanged, so these are its replies.
    let mut distinct = BTreeSet::new();
    let mut last_reply = Vec::new();
    let mut cursor = Vec::new();
    for call in &calls {
        let sent = call.args.get(1).ok_or("a SCAN without a cursor")?;
        let (next, keys) = scan_as(&mut setup.admin, &call.args, sent).await?;
        distinct.extend(keys.iter().cloned());
        (cursor, last_reply) = (next, keys);
    }
    assert_ne!(
        cursor, b"0",
        "the library's scan ended before the provocation; raise KEYS"
    );
    let survivors: BTreeSet<Vec<u8>> = last_reply.iter().rev().take(SURVIVORS).cloned().collect();
    assert_eq!(survivors.len(), SURVIVORS, "a SCAN page of {COUNT} keys");
    let doomed: Vec<String> = (0..KEYS)
        .map(|i| format!("{PREFIX}k{i:05}"))
        .filter(|k| !survivors.contains(k.as_bytes()))
        .collect();
    for chunk in doomed.chunks(1000) {
        redis::cmd("UNLINK")
            .arg(chunk)
            .query_async::<i64>(&mut setup.admin)
            .await?;
    }
    // serverCron shrinks a table under 10% full to the next power of two of its size: 4.
    loop {
        let stats: String = redis::cmd("DEBUG")
            .arg("HTSTATS")
            .arg(0)
            .query_async(&mut setup.admin)
            .await?;
        if stats.contains("table size: 4\n") && !stats.contains("rehashing target") {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the key table did not shrink in {PATIENCE:?}: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let shrunk_at = slowlog(&mut setup.admin)
        .await?
        .last()
        .map(|l| l.id)
        .ok_or("an empty slow log")?;
    // The raw SCAN from the library's cursor returns survivors it returned already.
    let args = &calls.last().ok_or("no SCAN")?.args;
    let (mut at, mut again) = (cursor.clone(), Vec::new());
    for _ in 0..10_000 {
        let (next, keys) = scan_as(&mut setup.admin, args, &at).await?;
        again.extend(keys);
        if next == b"0" {
            break;
        }
        at = next;
    }
    let repeats = again.iter().filter(|k| distinct.contains(*k)).count();
    assert!(
        repeats > 0,
        "the shrink did not make SCAN repeat a key: the provocation no longer works"
    );
    println!(
        "raw SCAN after the shrink: {} keys, {repeats} of them returned before",
        again.len()
    );
    distinct.extend(again);
    Ok(Provoked {
        distinct,
        survivors,
        cursor,
        shrunk_at,
        replayed: calls.len(),
    })
}

/// The library's SCANs before the shrink were exactly the replayed ones, and it continued
/// from the provoked cursor after the shrink.
async fn check_timing(setup: &mut Setup, provoked: &Provoked) -> TestResult {
    let scans = library_scans(setup).await?;
    let before = scans.iter().filter(|l| l.id < provoked.shrunk_at).count();
    assert_eq!(
        before, provoked.replayed,
        "the library sent SCANs before the shrink that the test did not replay: raise LATENCY"
    );
    let resumed = scans
        .iter()
        .find(|l| l.args.get(1) == Some(&provoked.cursor))
        .ok_or("the library never continued from the provoked cursor")?;
    assert!(resumed.id > provoked.shrunk_at);
    Ok(())
}

fn strip(key: &[u8]) -> Vec<u8> {
    key.strip_prefix(PREFIX.as_bytes()).unwrap_or(key).to_vec()
}

/// The keys of `entries`, in order, after checking that none comes twice.
fn distinct_keys(what: &str, entries: &[Entry]) -> BTreeSet<Vec<u8>> {
    let keys: BTreeSet<Vec<u8>> = entries.iter().map(|e| e.key.to_vec()).collect();
    assert_eq!(keys.len(), entries.len(), "{what} returned a key twice");
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_returns_each_key_once_when_the_table_shrinks() -> TestResult {
    let mut setup = setup().await?;
    let backend = setup.backend.clone();
    let scanning =
        tokio::spawn(async move { state_core::stream::try_collect(backend.scan(b"")).await });
    let provoked = provoke(&mut setup).await?;
    let entries = scanning.await??;
    check_timing(&mut setup, &provoked).await?;
    let keys = distinct_keys("scan", &entries);
    let want: BTreeSet<Vec<u8>> = provoked.survivors.iter().map(|k| strip(k)).collect();
    assert_eq!(
        keys, want,
        "scan returns the keys present throughout, and only those"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_returns_each_key_once_when_the_table_shrinks() -> TestResult {
    let mut setup = setup().await?;
    let backend = setup.backend.clone();
    let exporting =
        tokio::spawn(async move { state_core::stream::try_collect(backend.export(b"")).await });
    let provoked = provoke(&mut setup).await?;
    let entries = exporting.await??;
    check_timing(&mut setup, &provoked).await?;
    let keys = distinct_keys("export", &entries);
    let want: BTreeSet<Vec<u8>> = provoked.survivors.iter().map(|k| strip(k)).collect();
    assert_eq!(
        keys, want,
        "export returns the keys present throughout, and only those"
    );
    for entry in &entries {
        let key = String::from_utf8_lossy(&entry.key).into_owned();
        let i: usize = key.trim_start_matches('k').parse()?;
        assert_eq!(
            entry.value.as_ref(),
            format!("value {i}").as_bytes(),
            "{key}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_counts_each_key_once_when_the_table_shrinks() -> TestResult {
    let mut setup = setup().await?;
    let backend = setup.backend.clone();
    let counting = tokio::spawn(async move { backend.count(b"").await });
    let provoked = provoke(&mut setup).await?;
    let counted = counting.await??;
    check_timing(&mut setup, &provoked).await?;
    // The keys listed before the deletion were there when SCAN returned them: a fuzzy
    // count includes them, but each key once.
    assert_eq!(counted, provoked.distinct.len() as u64);
    assert!(provoked.survivors.is_subset(&provoked.distinct));
    Ok(())
}
