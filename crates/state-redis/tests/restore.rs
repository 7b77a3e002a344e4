//! A large restore on standalone Redis: 200,000 entries streamed through `import` with
//! expiries, expired entries and duplicates, over an old state with fencing marks. The
//! contents must be exactly the checkpoint's and nothing staged may be left behind.
//! (No timing is asserted: `cargo xtask bench checkpoint` measures it.)

use std::time::{Duration, SystemTime};

use state_core::{Entry, FencingToken, ImportMode, StateBackend, Ttl, stream};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::{LocalRedis, LocalRedisOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const N: usize = 200_000;

fn key(i: usize) -> Vec<u8> {
    format!("k:{i:07}").into_bytes()
}

fn value(i: usize) -> Vec<u8> {
    format!("value-{i}-{}", "x".repeat(48)).into_bytes()
}

/// Entry `i` of the checkpoint: one in ten expires in an hour, one in a hundred has
/// expired already.
fn entry(i: usize, now: SystemTime) -> Entry {
    let mut e = Entry::new(key(i), value(i));
    if i % 100 == 50 {
        e.expires_at = Some(now - Duration::from_secs(1));
    } else if i % 10 == 3 {
        e.expires_at = Some(now + Duration::from_secs(3600));
    }
    e
}

fn live(i: usize) -> bool {
    i % 100 != 50 && i != 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_of_200k_entries_lands_whole_and_leaves_nothing_staged() -> TestResult {
    let server = LocalRedis::start(LocalRedisOptions::default()).await?;
    let config = RedisConfig::builder()
        .url(server.url())
        .key_prefix("app:")
        .build()?;
    let backend = RedisStateBackend::new(config).await?;

    // The old state: keys the checkpoint lacks, keys it overwrites, a fencing mark.
    for i in 0..500 {
        backend.put(format!("old:{i}").as_bytes(), b"old").await?;
        backend.put(&key(i * 7), b"old").await?;
    }
    backend
        .put_fenced(b"old:fenced", b"old", FencingToken(7))
        .await?;

    let now = SystemTime::now();
    // Last one wins: k:1 is written again, k:2 comes back expired after being live.
    let tail = vec![
        Entry::new(key(1), &b"last"[..]),
        Entry {
            expires_at: Some(now - Duration::from_secs(5)),
            ..Entry::new(key(2), &b"gone"[..])
        },
    ];
    let entries = (0..N).map(move |i| entry(i, now)).chain(tail).map(Ok);
    let restored = backend
        .import(stream::iter(entries), ImportMode::Replace)
        .await?;
    let expected = (0..N).filter(|&i| live(i)).count();
    // The live entries of the stream: k:1 counts twice, k:2 once (live, then expired).
    assert_eq!(
        restored,
        expected as u64 + 2,
        "live entries reported written"
    );
    assert_eq!(backend.count(b"").await?, expected as u64);

    // Every entry, by one scan: value and expiry.
    let found = stream::try_collect(backend.export(b"")).await?;
    assert_eq!(found.len(), expected);
    for e in &found {
        let text = std::str::from_utf8(&e.key)?;
        let i: usize = text
            .strip_prefix("k:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("unexpected key {text}"))?;
        assert!(live(i), "{text} should be absent");
        let want = if i == 1 { b"last".to_vec() } else { value(i) };
        assert_eq!(&e.value[..], &want[..], "{text}");
        assert_eq!(e.expires_at.is_some(), i % 10 == 3, "{text}: expiry");
    }
    assert!(
        matches!(backend.ttl(&key(13)).await?, Ttl::Remaining(d) if d <= Duration::from_secs(3600))
    );
    assert_eq!(backend.ttl(&key(0)).await?, Ttl::Persistent);
    assert_eq!(backend.get(b"old:1").await?, None);

    // Nothing else on the server: no staging hash, ticket or fencing mark.
    let dbsize = server.cli(&["DBSIZE"]).await?;
    assert_eq!(dbsize.trim(), expected.to_string(), "keys left behind");

    // A Merge keeps what it does not name and removes what it names as expired.
    let merge = vec![
        Ok(Entry::new(&b"new"[..], &b"n"[..])),
        Ok(Entry {
            expires_at: Some(now - Duration::from_secs(1)),
            ..Entry::new(key(0), &b"x"[..])
        }),
    ];
    assert_eq!(
        backend
            .import(stream::iter(merge), ImportMode::Merge)
            .await?,
        1
    );
    assert_eq!(backend.get(b"new").await?.as_deref(), Some(&b"n"[..]));
    assert_eq!(backend.get(&key(0)).await?, None);
    assert_eq!(backend.count(b"").await?, expected as u64);
    let dbsize = server.cli(&["DBSIZE"]).await?;
    assert_eq!(dbsize.trim(), expected.to_string(), "keys left behind");

    // A Replace by nothing empties the namespace.
    let none: Vec<state_core::Result<Entry>> = Vec::new();
    assert_eq!(
        backend
            .import(stream::iter(none), ImportMode::Replace)
            .await?,
        0
    );
    let dbsize = server.cli(&["DBSIZE"]).await?;
    assert_eq!(dbsize.trim(), "0", "keys left behind");
    Ok(())
}

/// The restore's own connection, and every other, killed while the entries stream: the
/// transaction is dropped by the server (or a chunk would go over a connection dialled
/// again, which the restore refuses), so the old state stays whole and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_whose_connection_dies_midway_leaves_the_old_state() -> TestResult {
    use futures_util::StreamExt;

    let server = LocalRedis::start(LocalRedisOptions::default()).await?;
    let config = RedisConfig::builder()
        .url(server.url())
        .key_prefix("app:")
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    for i in 0..100 {
        backend.put(&key(i), b"old").await?;
    }
    let server = &server;
    let entries =
        stream::iter((0..50_000).map(Ok)).then(|i: state_core::Result<usize>| async move {
            let i = i?;
            if i == 20_000 {
                let killed = server.cli(&["CLIENT", "KILL", "TYPE", "normal"]).await;
                eprintln!("CLIENT KILL at entry {i}: {killed:?}");
            }
            Ok(Entry::new(key(i), value(i)))
        });
    let err = match backend.import(Box::pin(entries), ImportMode::Replace).await {
        Ok(n) => panic!("a restore whose connection was killed reported {n} keys set"),
        Err(e) => e,
    };
    assert!(err.to_string().contains("unchanged"), "{err}");
    assert_eq!(backend.count(b"").await?, 100);
    for i in 0..100 {
        assert_eq!(backend.get(&key(i)).await?.as_deref(), Some(&b"old"[..]));
    }
    let dbsize = server.cli(&["DBSIZE"]).await?;
    assert_eq!(dbsize.trim(), "100", "keys left behind");
    Ok(())
}

/// An `EXEC` that runs longer than `response_timeout` (a Replace over 1.5 million old
/// keys, which it deletes): its reply is lost, and the ticket settles the outcome (it ran)
/// instead of a second send. Whether the reply came in time or not, the restore succeeds
/// and the new state is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_slower_than_the_response_timeout_is_settled_by_its_ticket() -> TestResult {
    const KEYS: usize = 2_000;
    let server = LocalRedis::start(LocalRedisOptions {
        config: vec!["enable-debug-command yes".into()],
        ..LocalRedisOptions::default()
    })
    .await?;
    server
        .cli(&["DEBUG", "POPULATE", "1500000", "app:old", "16"])
        .await?;
    let config = RedisConfig::builder()
        .url(server.url())
        .key_prefix("app:")
        .response_timeout(Duration::from_millis(500))
        .retries(100, Duration::from_millis(10), Duration::from_millis(50))
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let entries = (0..KEYS).map(move |i| {
        let e = Entry::new(key(i), value(i));
        Ok(if i % 2 == 0 { e.with_expiry(later) } else { e })
    });
    let restored = backend
        .import(stream::iter(entries), ImportMode::Replace)
        .await?;
    assert_eq!(restored, KEYS as u64);
    assert_eq!(backend.count(b"").await?, KEYS as u64);
    assert_eq!(backend.get(b"old:1").await?, None);
    assert_eq!(
        backend.get(&key(KEYS - 1)).await?,
        Some(value(KEYS - 1).into())
    );
    assert!(matches!(backend.ttl(&key(8)).await?, Ttl::Remaining(_)));
    assert_eq!(backend.ttl(&key(7)).await?, Ttl::Persistent);
    let stats = server.cli(&["INFO", "commandstats"]).await?;
    let settles = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap_or("cmdstat_evalsha: none (the EXEC reply came in time)");
    eprintln!("settle scripts run: {settles}");
    let dbsize = server.cli(&["DBSIZE"]).await?;
    assert_eq!(dbsize.trim(), KEYS.to_string(), "keys left behind");
    Ok(())
}

/// A user whose ACL lacks `MSET` and `WATCH` (the documented rights of earlier versions)
/// gets the staged restore; one with them gets the transaction. Both land the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_needs_mset_and_watch_and_falls_back_to_staging() -> TestResult {
    const STAGING_ACL: &str = "user app on >app-secret-pw ~app:* ~{*}* +get +set +del +mget \
        +getdel +pttl +pexpireat +persist +rename +scan +evalsha +eval +script|load +multi \
        +exec +ping +info +hset +hexists +hscan +unlink";
    for (acl, staged) in [
        (STAGING_ACL.to_string(), true),
        (format!("{STAGING_ACL} +mset +watch"), false),
    ] {
        let server = LocalRedis::start(LocalRedisOptions {
            config: vec![acl],
            username: Some("app".into()),
            password: Some("app-secret-pw".into()),
            ..LocalRedisOptions::default()
        })
        .await?;
        let config = RedisConfig::builder()
            .url(server.url())
            .key_prefix("app:")
            .build()?;
        let backend = RedisStateBackend::new(config).await?;
        backend.put(b"old", b"old").await?;
        let now = SystemTime::now();
        let entries = (0..5_000).map(move |i| Ok(entry(i, now)));
        let restored = backend
            .import(stream::iter(entries), ImportMode::Replace)
            .await?;
        let live = (0..5_000).filter(|i| i % 100 != 50).count();
        assert_eq!(restored, live as u64);
        assert_eq!(backend.count(b"").await?, live as u64);
        assert_eq!(backend.get(b"old").await?, None);
        assert_eq!(backend.get(&key(9)).await?, Some(value(9).into()));
        assert!(matches!(backend.ttl(&key(3)).await?, Ttl::Remaining(_)));
        let stats = server.cli(&["INFO", "commandstats"]).await?;
        let used = |cmd: &str| stats.contains(&format!("cmdstat_{cmd}:calls="));
        assert_eq!(used("hset"), staged, "staging hashes used: {stats}");
        assert_eq!(used("mset"), !staged, "MSET used: {stats}");
        // The user may not run DBSIZE; INFO tells the same.
        let keyspace = server.cli(&["INFO", "keyspace"]).await?;
        assert!(
            keyspace.contains(&format!("db0:keys={live},")),
            "keys left behind: {keyspace}"
        );
    }
    Ok(())
}
