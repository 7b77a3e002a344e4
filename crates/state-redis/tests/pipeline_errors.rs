//! RELIABILITY.md case 15: a pipeline with one failing command reports that command's
//! error and keeps the others' results; no unread reply leaks into the next command.
//!
//! The failures are real server refusals on a private redis-server: an ACL user that may
//! read `pipe:*` but write only `pipe:ok:*` gets NOPERM for one SET of a pipelined
//! `batch_put`, and a LIST created at the exact Redis key of a user key (`prefix + key`,
//! see `keys.rs`) gets WRONGTYPE from GET and from the scan's per-key script. The backend
//! has one multiplexed connection (the default pool), so every later command shares the
//! connection the failing pipeline used; distinct values per key show that each reply went
//! to its own command.

use std::time::Duration;

use state_core::{ErrorKind, StateBackend, StateError, stream};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::{LocalRedis, LocalRedisOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Reads `pipe:*`, reads and writes only `pipe:ok:*` (one pattern must grant both for a
/// script, which Redis counts as a read-write command) and the internal `{T}…` keys.
const ACL: &str = "user piper on >piper-pw resetkeys %R~pipe:* ~pipe:ok:* ~{*}* +@all";

async fn server() -> Result<LocalRedis, Box<dyn std::error::Error>> {
    Ok(LocalRedis::start(LocalRedisOptions {
        config: vec![ACL.to_string()],
        ..LocalRedisOptions::default()
    })
    .await?)
}

/// A backend as the ACL user, prefix `pipe:`, one connection, pipelines of `batch` commands.
async fn backend(server: &LocalRedis, batch: usize) -> Result<RedisStateBackend, StateError> {
    let url = format!("redis://piper:piper-pw@127.0.0.1:{}", server.port());
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix("pipe:")
        .pool_size(1, 1)
        .pipeline_batch_size(batch)
        .retries(0, Duration::ZERO, Duration::ZERO)
        .build()?;
    RedisStateBackend::new(config).await
}

/// The error and every source under it, as text.
fn full_text(err: &StateError) -> String {
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(" | ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads `count` keys `ok:check:N` written with distinct values, one GET each, then all at
/// once: a reply left unread on the connection would shift every answer by one.
async fn replies_line_up(b: &RedisStateBackend, round: usize) -> TestResult {
    let keys: Vec<Vec<u8>> = (0..8)
        .map(|i| format!("ok:check:{round}:{i}").into_bytes())
        .collect();
    for (i, key) in keys.iter().enumerate() {
        b.put(key, format!("v{round}:{i}").as_bytes()).await?;
    }
    for (i, key) in keys.iter().enumerate() {
        let got = b.get(key).await?;
        assert_eq!(
            got.as_deref(),
            Some(format!("v{round}:{i}").as_bytes()),
            "GET {i} of round {round} got another command's reply"
        );
    }
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    let all = b.batch_get(&refs).await?;
    for (i, got) in all.iter().enumerate() {
        assert_eq!(got.as_deref(), Some(format!("v{round}:{i}").as_bytes()));
    }
    assert!(b.health_check().await?.is_healthy());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_set_in_a_batch_reports_its_entry_and_the_others_are_written() -> TestResult {
    let server = server().await?;
    // One pipeline for the whole batch, then pipelines of two: the refusal is in the
    // middle of a pipeline either way.
    for batch in [100, 2] {
        let b = backend(&server, batch).await?;
        let entries: [(&[u8], &[u8]); 5] = [
            (b"ok:a", b"1"),
            (b"ok:b", b"2"),
            (b"denied", b"3"),
            (b"ok:c", b"4"),
            (b"ok:d", b"5"),
        ];
        let err = b
            .batch_put(&entries)
            .await
            .err()
            .unwrap_or_else(|| panic!("batch {batch}: the ACL let a write to pipe:denied in"));
        let text = full_text(&err);
        eprintln!("batch {batch}: {text}");
        assert_eq!(err.kind(), ErrorKind::Config, "{text}");
        assert!(err.message().contains("entry 2 (0-based) of 5"), "{text}");
        assert!(
            text.contains("NOPERM"),
            "the server's refusal is lost: {text}"
        );
        // The others were executed and kept: read back on the same connection, and by a
        // separate client.
        for (key, value) in entries.iter().filter(|(k, _)| k.starts_with(b"ok:")) {
            assert_eq!(b.get(key).await?.as_deref(), Some(*value));
            let raw = format!("pipe:{}", String::from_utf8_lossy(key));
            let shown = server.cli(&["GET", &raw]).await?;
            assert_eq!(shown.trim(), String::from_utf8_lossy(value), "{raw}");
        }
        assert_eq!(
            b.get(b"denied").await?,
            None,
            "the refused entry was written"
        );
        let got = b.batch_get(&[b"ok:a", b"denied", b"ok:d"]).await?;
        assert_eq!(
            got.iter().map(|v| v.as_deref()).collect::<Vec<_>>(),
            vec![Some(&b"1"[..]), None, Some(&b"5"[..])]
        );
        replies_line_up(&b, batch).await?;
        assert_eq!(
            b.batch_delete(&[b"ok:a", b"ok:b", b"ok:c", b"ok:d"])
                .await?,
            4
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_read_fails_alone_and_the_connection_stays_in_step() -> TestResult {
    let server = server().await?;
    let b = backend(&server, 2).await?;
    b.batch_put(&[(b"ok:x", b"x"), (b"ok:y", b"y")]).await?;
    // `pipe:` is readable; a key outside it is not, and the prefix puts every user key in
    // it, so a refused read needs a backend with another prefix on the same connection
    // settings.
    let url = format!("redis://piper:piper-pw@127.0.0.1:{}", server.port());
    let outside = RedisStateBackend::new(
        RedisConfig::builder()
            .url(url)
            .key_prefix("elsewhere:")
            .retries(0, Duration::ZERO, Duration::ZERO)
            .build()?,
    )
    .await?;
    let err = outside
        .batch_get(&[b"a", b"b", b"c"])
        .await
        .err()
        .unwrap_or_else(|| panic!("the ACL let a read of elsewhere:* through"));
    assert_eq!(err.kind(), ErrorKind::Config, "{}", full_text(&err));
    assert!(full_text(&err).contains("NOPERM"), "{}", full_text(&err));
    // The refused request did not disturb either backend's replies.
    assert!(outside.health_check().await?.is_healthy());
    assert_eq!(b.get(b"ok:x").await?.as_deref(), Some(&b"x"[..]));
    replies_line_up(&b, 7).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_wrong_type_fails_its_command_only() -> TestResult {
    let server = server().await?;
    let b = backend(&server, 2).await?;
    b.put(b"ok:before", b"b").await?;
    // A LIST at the Redis key of user key `ok:list`: prefix + key, stored as is.
    let pushed = server.cli(&["RPUSH", "pipe:ok:list", "item"]).await?;
    assert_eq!(pushed.trim(), "1");

    let err = b
        .get(b"ok:list")
        .await
        .err()
        .unwrap_or_else(|| panic!("GET of a LIST succeeded"));
    let text = full_text(&err);
    assert_eq!(err.kind(), ErrorKind::Backend, "{text}");
    assert!(
        text.contains("WRONGTYPE"),
        "the server's message is lost: {text}"
    );
    assert_eq!(b.get(b"ok:before").await?.as_deref(), Some(&b"b"[..]));

    // The scan reads every key of a page in one pipeline of scripts: the LIST's script
    // fails; the scan reports it rather than a partial or shifted page.
    for i in 0..6 {
        b.put(format!("ok:n{i}").as_bytes(), format!("{i}").as_bytes())
            .await?;
    }
    let scanned = stream::try_collect(b.scan(b"ok:")).await;
    let err = scanned
        .err()
        .unwrap_or_else(|| panic!("a scan over a LIST returned entries as if it were a value"));
    let text = full_text(&err);
    assert_eq!(err.kind(), ErrorKind::Backend, "{text}");
    assert!(text.contains("WRONGTYPE"), "{text}");
    // SCAN alone does not read values: the count includes the LIST's key.
    assert_eq!(b.count(b"ok:").await?, 8);

    // A write replaces the LIST (SET ignores the old type); then everything lines up.
    b.batch_put(&[(b"ok:list", b"now a value"), (b"ok:n0", b"zero")])
        .await?;
    assert_eq!(
        b.get(b"ok:list").await?.as_deref(),
        Some(&b"now a value"[..])
    );
    let entries = stream::try_collect(b.scan(b"ok:")).await?;
    assert_eq!(entries.len(), 8);
    replies_line_up(&b, 9).await?;
    Ok(())
}
