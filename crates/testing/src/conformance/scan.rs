//! Cases for `scan`, `count` and `clear`: exact prefixes, 0xFF, metacharacters, size and
//! namespace isolation.

use std::time::Duration;

use state_core::{Entry, FencingToken, ImportMode, Result, stream};

use super::ctx::Ctx;
use crate::clock::sleep_past;
use crate::harness::{entries_stream, keys, show, some, value};

/// Writes `all` (value = key), then checks `scan` and `count` of each prefix against a
/// plain filter of the list.
async fn check_prefixes(ctx: &Ctx, all: &[Vec<u8>], prefixes: &[&[u8]]) -> Result<()> {
    let b = ctx.backend().as_ref();
    for prefix in prefixes {
        let mut expected: Vec<Vec<u8>> = all
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        expected.sort();
        let scanned = ctx.scan(b, prefix).await?;
        assert_eq!(keys(&scanned), expected, "scan({})", show(prefix));
        for entry in &scanned {
            assert_eq!(
                entry.value,
                entry.key,
                "scan({}) value of {}",
                show(prefix),
                show(&entry.key)
            );
        }
        assert_eq!(
            b.count(prefix).await?,
            expected.len() as u64,
            "count({})",
            show(prefix)
        );
    }
    Ok(())
}

async fn put_keys(ctx: &Ctx, all: &[Vec<u8>]) -> Result<()> {
    for k in all {
        ctx.backend().put(k, k).await?;
    }
    Ok(())
}

/// `scan` and `count` see the keys that start with the prefix, and nothing else.
pub async fn scan_and_count_see_exactly_the_prefix(ctx: &Ctx) -> Result<()> {
    let all: Vec<Vec<u8>> = [
        "user:1", "user:2", "user:10", "usera", "use", "order:1", "u",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    put_keys(ctx, &all).await?;
    check_prefixes(
        ctx,
        &all,
        &[
            b"",
            b"user:",
            b"user:1",
            b"use",
            b"u",
            b"order:",
            b"zzz",
            b"user:10x",
        ],
    )
    .await
}

/// A prefix ending in 0xFF (where a naive upper bound overflows) scans exactly its keys.
pub async fn prefix_ending_in_0xff_scans_correctly(ctx: &Ctx) -> Result<()> {
    let all: Vec<Vec<u8>> = vec![
        vec![b'a'],
        vec![b'a', 0xFE],
        vec![b'a', 0xFE, 0xFF],
        vec![b'a', 0xFF],
        vec![b'a', 0xFF, 0x00],
        vec![b'a', 0xFF, 0xFF],
        vec![b'a', 0xFF, 0xFF, 0x01],
        vec![b'a', 0xFF, 0xFF, 0xFF],
        vec![b'b'],
        vec![b'b', 0x00],
        vec![0xFF],
        vec![0xFF, 0xFF, 0xFF],
    ];
    put_keys(ctx, &all).await?;
    check_prefixes(
        ctx,
        &all,
        &[
            &[b'a', 0xFF],
            &[b'a', 0xFF, 0xFF],
            &[b'a', 0xFE],
            &[0xFF],
            &[0xFF, 0xFF],
            b"a",
            &[],
        ],
    )
    .await?;
    let b = ctx.backend().as_ref();
    assert_eq!(
        b.clear(&[b'a', 0xFF, 0xFF]).await?,
        3,
        "clear of a 0xFF 0xFF prefix"
    );
    assert_eq!(b.count(&[b'a', 0xFF]).await?, 2);
    assert_eq!(
        value(b, b"b").await?,
        some(b"b"),
        "clear went past its prefix"
    );
    assert_eq!(b.count(b"").await?, all.len() as u64 - 3);
    Ok(())
}

/// Glob (`* ? [ ] \`) and LIKE (`% _ \`) metacharacters in keys and prefixes are literal.
pub async fn glob_and_like_metacharacters_are_literal(ctx: &Ctx) -> Result<()> {
    let all: Vec<Vec<u8>> = [
        "m*", "m?", "m[a]", "m[ab]x", "m%", "m_", "m_x", "m\\", "m\\%", "ma", "mb", "mxyz", "*",
        "%", "_", "?x", "m^", "m-", "m!",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect();
    put_keys(ctx, &all).await?;
    let prefixes: [&[u8]; 15] = [
        b"m*", b"m?", b"m[", b"m[a]", b"m%", b"m_", b"m\\", b"m\\%", b"m", b"*", b"%", b"_", b"?",
        b"[", b"m^",
    ];
    check_prefixes(ctx, &all, &prefixes).await?;
    let b = ctx.backend().as_ref();
    assert_eq!(
        b.clear(b"m_").await?,
        2,
        "clear(m_) must not match any single character"
    );
    assert_eq!(
        b.clear(b"m*").await?,
        1,
        "clear(m*) must not match everything"
    );
    assert_eq!(
        b.clear(b"%").await?,
        1,
        "clear(%) must not match everything"
    );
    assert_eq!(
        value(b, b"ma").await?,
        some(b"ma"),
        "a metacharacter clear removed ma"
    );
    assert_eq!(value(b, b"m\\%").await?, some(b"m\\%"));
    assert_eq!(b.count(b"").await?, all.len() as u64 - 4);
    Ok(())
}

/// `clear` deletes the live keys under its prefix, returns how many, and spares the rest.
pub async fn clear_returns_live_count_and_spares_other_prefixes(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.batch_put(&[
        (b"c:1", b"v"),
        (b"c:2", b"v"),
        (b"c:3", b""),
        (b"d:1", b"v"),
        (b"c", b"v"),
    ])
    .await?;
    b.put_with_ttl(b"c:4", b"v", Duration::from_millis(20))
        .await?;
    sleep_past(Duration::from_millis(70)).await;
    assert_eq!(b.clear(b"c:").await?, 3, "clear counts live keys only");
    assert_eq!(b.count(b"c:").await?, 0);
    assert_eq!(value(b, b"d:1").await?, some(b"v"));
    assert_eq!(value(b, b"c").await?, some(b"v"), "clear(c:) removed c");
    assert_eq!(b.clear(b"c:").await?, 0, "a second clear finds nothing");
    assert_eq!(b.clear(b"").await?, 2, "clear of the whole namespace");
    assert_eq!(b.count(b"").await?, 0);
    Ok(())
}

/// 1,000 keys stream through `scan` one entry at a time, and `count`/`clear` agree.
pub async fn large_scan_streams_every_key(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let owned: Vec<(Vec<u8>, Vec<u8>)> = (0..1000u32)
        .map(|i| {
            (
                format!("big:{i:04}").into_bytes(),
                vec![b'v'; (i % 7) as usize],
            )
        })
        .collect();
    for chunk in owned.chunks(100) {
        let entries: Vec<(&[u8], &[u8])> = chunk.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        b.batch_put(&entries).await?;
    }
    b.put(b"bif", b"outside").await?;
    let mut scan = b.scan(b"big:");
    let mut seen: Vec<Entry> = Vec::new();
    while let Some(entry) = stream::next(&mut scan).await {
        seen.push(entry?);
    }
    drop(scan);
    if ctx.caps().ordered_scan {
        assert!(
            seen.windows(2)
                .all(|w| matches!(w, [a, b] if a.key < b.key)),
            "scan out of order"
        );
    }
    seen.sort_by(|a, b| a.key.cmp(&b.key));
    assert!(
        seen.windows(2)
            .all(|w| matches!(w, [a, b] if a.key != b.key)),
        "scan of 1,000 keys returned a key twice"
    );
    let got: Vec<(Vec<u8>, Vec<u8>)> = seen
        .iter()
        .map(|e| (e.key.to_vec(), e.value.to_vec()))
        .collect();
    assert_eq!(got, owned, "scan of 1,000 keys");
    assert_eq!(b.count(b"big:").await?, 1000);
    assert_eq!(b.count(b"big:00").await?, 100);
    assert_eq!(ctx.scan(b, b"big:099").await?.len(), 10);
    assert_eq!(b.clear(b"big:").await?, 1000);
    assert_eq!(value(b, b"bif").await?, some(b"outside"));
    Ok(())
}

/// Two backends over the same storage with namespaces `t:<hex>/a:` and `t:<hex>/b:` (and
/// the main `t:<hex>:`) never see each other's keys, counts, clears, checkpoints, restores, imports or fencing marks.
pub async fn namespaces_are_isolated(ctx: &Ctx) -> Result<()> {
    let a = ctx.sibling("a").await;
    let b = ctx.sibling("b").await;
    a.put(b"k", b"from-a").await?;
    a.put(b"only-a", b"1").await?;
    b.put(b"k", b"from-b").await?;
    assert_eq!(value(a.as_ref(), b"k").await?, some(b"from-a"));
    assert_eq!(value(b.as_ref(), b"k").await?, some(b"from-b"));
    assert_eq!(value(b.as_ref(), b"only-a").await?, None);
    assert_eq!(a.count(b"").await?, 2);
    assert_eq!(b.count(b"").await?, 1);
    assert_eq!(
        ctx.backend().count(b"").await?,
        0,
        "the main namespace saw a and b"
    );
    assert_eq!(keys(&ctx.scan(b.as_ref(), b"").await?), vec![b"k".to_vec()]);
    assert_eq!(
        keys(&ctx.export(a.as_ref(), b"").await?),
        vec![b"k".to_vec(), b"only-a".to_vec()]
    );

    let checkpoint = a.checkpoint().await?;
    assert_eq!(checkpoint.len(), 2, "a's checkpoint");
    assert!(
        checkpoint
            .entries()
            .iter()
            .all(|e| !e.value.starts_with(b"from-b")),
        "a's checkpoint saw b"
    );

    assert_eq!(b.clear(b"").await?, 1, "b's clear");
    assert_eq!(a.count(b"").await?, 2, "b's clear reached a");
    b.put(b"k", b"from-b").await?;
    a.restore(checkpoint).await?;
    assert_eq!(
        value(b.as_ref(), b"k").await?,
        some(b"from-b"),
        "a's restore reached b"
    );
    b.import(
        entries_stream(vec![Entry::new(&b"n"[..], &b"1"[..])]),
        ImportMode::Replace,
    )
    .await?;
    assert_eq!(a.count(b"").await?, 2, "b's import(Replace) reached a");

    a.put_fenced(b"f", b"v", FencingToken(9)).await?;
    b.put_fenced(b"f", b"v", FencingToken(1)).await?;
    assert_eq!(
        value(b.as_ref(), b"f").await?,
        some(b"v"),
        "a's fence reached b"
    );
    Ok(())
}
