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
    assert_eq!(restored, expected as u64, "keys reported set");
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
