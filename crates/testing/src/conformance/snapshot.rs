//! Cases for `export`/`import` and `checkpoint`/`restore`: absolute expiry, modes,
//! atomicity and snapshots.

use std::time::{Duration, SystemTime};

use state_core::{Checkpoint, Entry, ErrorKind, ImportMode, Result, StateError, Ttl, stream};

use super::ctx::Ctx;
use crate::clock::sleep_past;
use crate::harness::{bytes, close, entries_stream, expect_kind, keys, show, some, value};

const MINUTE: Duration = Duration::from_secs(60);

/// `export` carries each entry's absolute expiry (none for persistent keys) and only the
/// prefix asked for.
pub async fn export_carries_absolute_expiry_and_prefix(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let before = SystemTime::now();
    b.put(b"a:persistent", b"1").await?;
    b.put_with_ttl(b"a:minute", b"2", MINUTE).await?;
    b.put(b"b:other", b"3").await?;
    let after = SystemTime::now();
    let exported = ctx.export(b, b"a:").await?;
    assert_eq!(
        keys(&exported),
        vec![b"a:minute".to_vec(), b"a:persistent".to_vec()]
    );
    let [minute, persistent] = exported.as_slice() else {
        panic!("export returned {} entries", exported.len());
    };
    assert_eq!(
        persistent.expires_at, None,
        "a persistent key exported an expiry"
    );
    assert_eq!(persistent.value, bytes(b"1"));
    let at = minute
        .expires_at
        .unwrap_or_else(|| panic!("a 60s key exported no expiry"));
    // Millisecond rounding on either side allows a little slack around [before, after] + 60s.
    let slack = Duration::from_millis(2);
    assert!(
        at + slack >= before + MINUTE && at <= after + MINUTE + slack,
        "exported expiry is not 60s after the write"
    );
    assert_eq!(ctx.export(b, b"").await?.len(), 3);
    Ok(())
}

/// An exported expiry comes back unchanged: importing later neither extends nor resets it.
pub async fn export_import_keeps_ttl_fidelity(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"k", b"v", MINUTE).await?;
    b.put(b"p", b"v").await?;
    let exported = ctx.export(b, b"").await?;
    let original = exported
        .first()
        .and_then(|e| e.expires_at)
        .unwrap_or_else(|| panic!("no expiry exported"));
    sleep_past(Duration::from_millis(200)).await;
    assert_eq!(b.clear(b"").await?, 2);
    assert_eq!(
        b.import(entries_stream(exported), ImportMode::Replace)
            .await?,
        2
    );
    let again = ctx.export(b, b"").await?;
    let restored = again
        .first()
        .and_then(|e| e.expires_at)
        .unwrap_or_else(|| panic!("import dropped the expiry"));
    assert!(
        close(original, restored, Duration::from_millis(50)),
        "import moved the absolute expiry"
    );
    match b.ttl(b"k").await? {
        // The 200ms pause must show: an import that restarted the TTL would report ~60s.
        Ttl::Remaining(left) => assert!(
            left <= MINUTE - Duration::from_millis(150),
            "ttl {left:?}: import reset it"
        ),
        other => panic!("imported key has {other:?}"),
    }
    assert_eq!(b.ttl(b"p").await?, Ttl::Persistent);
    Ok(())
}

/// An entry whose expiry has already passed is absent after import, and takes any older
/// value of its key with it.
pub async fn import_drops_entries_already_expired(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"k", b"old").await?;
    let past = SystemTime::now() - Duration::from_secs(1);
    let stream = entries_stream(vec![
        Entry::new(bytes(b"k"), bytes(b"new")).with_expiry(past),
        Entry::new(bytes(b"dead"), bytes(b"v")).with_expiry(past),
        Entry::new(bytes(b"live"), bytes(b"v")).with_expiry(SystemTime::now() + MINUTE),
    ]);
    assert_eq!(
        b.import(stream, ImportMode::Merge).await?,
        1,
        "import counts live entries"
    );
    assert_eq!(
        value(b, b"k").await?,
        None,
        "an expired import left the old value"
    );
    assert_eq!(
        value(b, b"dead").await?,
        None,
        "an expired entry was revived"
    );
    assert_eq!(value(b, b"live").await?, some(b"v"));
    assert_eq!(b.count(b"").await?, 1);
    Ok(())
}

/// `import(Replace)` removes every other key of the namespace.
pub async fn import_replace_removes_other_keys(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.batch_put(&[(b"x", b"1"), (b"y", b"1"), (b"z", b"1")])
        .await?;
    let stream = entries_stream(vec![
        Entry::new(bytes(b"z"), bytes(b"2")),
        Entry::new(bytes(b"w"), bytes(b"")),
    ]);
    assert_eq!(b.import(stream, ImportMode::Replace).await?, 2);
    assert_eq!(
        keys(&ctx.scan(b, b"").await?),
        vec![b"w".to_vec(), b"z".to_vec()]
    );
    assert_eq!(value(b, b"z").await?, some(b"2"));
    assert_eq!(value(b, b"w").await?, some(b""));
    Ok(())
}

/// `import(Merge)` overwrites the imported keys (expiry included) and keeps the rest.
pub async fn import_merge_keeps_other_keys(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"x", b"1", MINUTE).await?;
    b.put(b"y", b"1").await?;
    let stream = entries_stream(vec![
        Entry::new(bytes(b"x"), bytes(b"2")),
        Entry::new(bytes(b"z"), bytes(b"2")),
    ]);
    assert_eq!(b.import(stream, ImportMode::Merge).await?, 2);
    assert_eq!(value(b, b"x").await?, some(b"2"));
    assert_eq!(
        b.ttl(b"x").await?,
        Ttl::Persistent,
        "the imported entry has no expiry"
    );
    assert_eq!(value(b, b"y").await?, some(b"1"));
    assert_eq!(value(b, b"z").await?, some(b"2"));
    Ok(())
}

/// A stream that fails midway fails the import with the stream's error; where
/// [`atomic_restore`](state_core::Capabilities::atomic_restore) holds, nothing changed.
pub async fn import_error_midway_leaves_old_state(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"x", b"old").await?;
    for mode in [ImportMode::Replace, ImportMode::Merge] {
        let items: Vec<Result<Entry>> = vec![
            Ok(Entry::new(bytes(b"x"), bytes(b"new"))),
            Ok(Entry::new(bytes(b"y"), bytes(b"new"))),
            Err(StateError::corrupt("planted error in the import stream")),
            Ok(Entry::new(bytes(b"z"), bytes(b"new"))),
        ];
        let result = b.import(stream::iter(items), mode).await;
        let err = expect_kind(
            &format!("import({mode:?}) of a failing stream"),
            result,
            ErrorKind::Corrupt,
        );
        assert!(
            err.message().contains("planted"),
            "the stream's error was replaced: {err}"
        );
        let x = value(b, b"x").await?;
        if ctx.caps().atomic_restore {
            assert_eq!(x, some(b"old"), "a failed import({mode:?}) changed x");
            assert_eq!(
                value(b, b"y").await?,
                None,
                "a failed import({mode:?}) wrote y"
            );
            assert_eq!(b.count(b"").await?, 1);
        } else {
            assert!(
                x == some(b"old") || x == some(b"new"),
                "x is {x:?} after a failed import"
            );
        }
        assert_eq!(value(b, b"z").await?, None, "import went on past the error");
    }
    Ok(())
}

/// Entries with an invalid key or value fail the import with `InvalidInput`.
pub async fn import_rejects_invalid_entries(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"x", b"old").await?;
    let too_long = vec![b'k'; ctx.caps().max_key_len + 1];
    for bad in [
        Entry::new(bytes(b""), bytes(b"v")),
        Entry::new(too_long, bytes(b"v")),
    ] {
        let stream = entries_stream(vec![Entry::new(bytes(b"x"), bytes(b"new")), bad]);
        let result = b.import(stream, ImportMode::Replace).await;
        expect_kind("import of an invalid key", result, ErrorKind::InvalidInput);
        if ctx.caps().atomic_restore {
            assert_eq!(
                value(b, b"x").await?,
                some(b"old"),
                "a rejected import changed x"
            );
        }
    }
    assert!(
        b.health_check().await?.is_healthy(),
        "a rejected import left the backend unhealthy"
    );
    Ok(())
}

/// `checkpoint` then `restore` brings back values, empty values, metadata and expiries,
/// and removes what was written since.
pub async fn checkpoint_restore_round_trip_keeps_ttls(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"a", b"1").await?;
    b.put(b"b", b"").await?;
    b.put_with_ttl(b"c", b"3", MINUTE).await?;
    let checkpoint = b.checkpoint().await?;
    assert_eq!(checkpoint.len(), 3, "checkpoint().len()");
    assert_eq!(checkpoint.is_consistent(), ctx.caps().consistent_snapshot);
    let before = ctx.export(b, b"").await?;

    assert!(b.delete(b"a").await?);
    b.put(b"b", b"changed").await?;
    b.put(b"c", b"persistent now").await?;
    b.put(b"d", b"new").await?;
    b.restore(checkpoint).await?;

    let after = ctx.export(b, b"").await?;
    assert_eq!(
        keys(&after),
        keys(&before),
        "restore did not bring back exactly the keys"
    );
    for (x, y) in before.iter().zip(&after) {
        assert_eq!(x.value, y.value, "value of {}", show(&x.key));
        assert_eq!(x.metadata, y.metadata);
        match (x.expires_at, y.expires_at) {
            (None, None) => {}
            (Some(p), Some(q)) => assert!(
                close(p, q, Duration::from_millis(50)),
                "restore moved an expiry"
            ),
            other => panic!("restore changed an expiry: {other:?}"),
        }
    }
    assert!(matches!(b.ttl(b"c").await?, Ttl::Remaining(left) if left <= MINUTE));
    Ok(())
}

/// `restore` replaces the whole namespace; where it is atomic and snapshots are
/// consistent, a concurrent reader sees the old state or the new one, never a mix.
pub async fn restore_replaces_everything_atomically(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend();
    let n = 200u32;
    let make = |tag: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
        (0..n)
            .map(|i| (format!("r:{i:03}").into_bytes(), tag.to_vec()))
            .collect()
    };
    let put_all = |pairs: Vec<(Vec<u8>, Vec<u8>)>| {
        let b = std::sync::Arc::clone(b);
        async move {
            let refs: Vec<(&[u8], &[u8])> = pairs.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            b.batch_put(&refs).await
        }
    };
    put_all(make(b"new")).await?;
    let checkpoint = b.checkpoint().await?;
    b.clear(b"").await?;
    put_all(make(b"old")).await?;
    b.batch_put(&[(b"extra:1", b"old"), (b"extra:2", b"old")])
        .await?;

    let is_old = |c: &Checkpoint| {
        c.len() == n as usize + 2 && c.entries().iter().all(|e| e.value == bytes(b"old"))
    };
    let is_new = |c: &Checkpoint| {
        c.len() == n as usize && c.entries().iter().all(|e| e.value == bytes(b"new"))
    };
    let restorer = {
        let b = std::sync::Arc::clone(b);
        tokio::spawn(async move { b.restore(checkpoint).await })
    };
    let watch = ctx.caps().atomic_restore && ctx.caps().consistent_snapshot;
    let mut reads = 0;
    while watch && !restorer.is_finished() && reads < 1000 {
        let seen = b.checkpoint().await?;
        assert!(
            is_old(&seen) || is_new(&seen),
            "a reader saw a mix of old and new state"
        );
        reads += 1;
    }
    match restorer.await {
        Ok(result) => result?,
        Err(e) => panic!("the restore task failed: {e}"),
    }
    let done = b.checkpoint().await?;
    assert!(
        is_new(&done),
        "after restore the namespace is not exactly the checkpoint"
    );
    assert_eq!(value(b.as_ref(), b"extra:1").await?, None);
    Ok(())
}

/// Restoring a checkpoint whose entries have since expired does not revive them.
pub async fn restore_never_revives_expired_entries(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"short", b"v", Duration::from_millis(50))
        .await?;
    b.put(b"long", b"v").await?;
    let checkpoint = b.checkpoint().await?;
    let expiring = checkpoint
        .entries()
        .iter()
        .filter(|e| e.expires_at.is_some())
        .count();
    sleep_past(Duration::from_millis(100)).await;
    b.restore(checkpoint).await?;
    assert_eq!(
        value(b, b"short").await?,
        None,
        "restore revived an expired key"
    );
    assert_eq!(value(b, b"long").await?, some(b"v"));
    assert!(expiring <= 1, "the checkpoint invented expiries");
    Ok(())
}

/// Where [`consistent_snapshot`](state_core::Capabilities::consistent_snapshot) holds, an
/// export that has started is not disturbed by later writes; otherwise every key not
/// touched meanwhile is still exported.
pub async fn export_is_a_point_in_time_snapshot(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let owned: Vec<Vec<u8>> = (0..600u32)
        .map(|i| format!("s:{i:03}").into_bytes())
        .collect();
    let refs: Vec<(&[u8], &[u8])> = owned.iter().map(|k| (&k[..], &b"v"[..])).collect();
    b.batch_put(&refs).await?;
    let mut export = b.export(b"s:");
    let mut seen = Vec::new();
    if let Some(first) = stream::next(&mut export).await {
        seen.push(first?.key.to_vec());
    }
    b.put(b"s:999", b"late").await?;
    assert!(b.delete(b"s:598").await?);
    while let Some(entry) = stream::next(&mut export).await {
        seen.push(entry?.key.to_vec());
    }
    drop(export);
    seen.sort();
    if ctx.caps().consistent_snapshot {
        assert_eq!(
            seen, owned,
            "a snapshot export saw writes made after it started"
        );
    } else {
        assert!(
            seen.windows(2).all(|w| matches!(w, [a, b] if a != b)),
            "a fuzzy export returned a key twice"
        );
        let untouched: Vec<&Vec<u8>> = owned.iter().filter(|k| k.as_slice() != b"s:598").collect();
        assert!(
            untouched.iter().all(|k| seen.binary_search(k).is_ok()),
            "a fuzzy export lost a key"
        );
    }
    Ok(())
}
