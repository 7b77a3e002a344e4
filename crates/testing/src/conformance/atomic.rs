//! Cases for the atomic operations, alone and raced by 16 tasks.

use std::sync::Arc;
use std::time::Duration;

use state_core::{Result, StateBackend, Ttl};
use tokio::sync::Barrier;

use super::ctx::Ctx;
use crate::clock::sleep_past;
use crate::harness::{some, value};

/// How many tasks race in the race cases.
const RACERS: usize = 16;

/// `set_if_not_exists` writes once and then leaves the value alone.
pub async fn set_if_not_exists_writes_only_when_absent(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    assert!(
        b.set_if_not_exists(b"k", b"first", None).await?,
        "the first claim wins"
    );
    assert!(
        !b.set_if_not_exists(b"k", b"second", None).await?,
        "the second claim loses"
    );
    assert_eq!(value(b, b"k").await?, some(b"first"));
    assert_eq!(b.ttl(b"k").await?, Ttl::Persistent);
    assert!(b.delete(b"k").await?);
    assert!(
        b.set_if_not_exists(b"k", b"third", None).await?,
        "a deleted key is absent"
    );
    assert_eq!(value(b, b"k").await?, some(b"third"));
    Ok(())
}

/// `set_if_not_exists` with a TTL gives the key that lifetime; a losing claim leaves it.
pub async fn set_if_not_exists_with_ttl_sets_an_expiry(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    let minute = Duration::from_secs(60);
    assert!(b.set_if_not_exists(b"lease", b"me", Some(minute)).await?);
    match b.ttl(b"lease").await? {
        Ttl::Remaining(left) => assert!(!left.is_zero() && left <= minute, "ttl {left:?}"),
        other => panic!("set_if_not_exists with a TTL left {other:?}"),
    }
    assert!(!b.set_if_not_exists(b"lease", b"you", None).await?);
    assert!(
        matches!(b.ttl(b"lease").await?, Ttl::Remaining(_)),
        "a losing claim changed the TTL"
    );
    assert_eq!(value(b, b"lease").await?, some(b"me"));
    Ok(())
}

/// An expired key counts as absent for `set_if_not_exists`.
pub async fn set_if_not_exists_treats_an_expired_key_as_absent(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put_with_ttl(b"k", b"old", Duration::from_millis(20))
        .await?;
    sleep_past(Duration::from_millis(70)).await;
    assert!(
        b.set_if_not_exists(b"k", b"new", None).await?,
        "an expired key blocked the claim"
    );
    assert_eq!(value(b, b"k").await?, some(b"new"));
    assert_eq!(
        b.ttl(b"k").await?,
        Ttl::Persistent,
        "the new value inherited the old TTL"
    );
    Ok(())
}

/// `compare_and_swap` replaces the value only when it matches `expected`.
pub async fn compare_and_swap_replaces_only_a_matching_value(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    b.put(b"k", b"a").await?;
    assert!(
        !b.compare_and_swap(b"k", Some(b"b"), b"c").await?,
        "a wrong expected value won"
    );
    assert_eq!(value(b, b"k").await?, some(b"a"));
    assert!(
        !b.compare_and_swap(b"k", Some(b"a\0"), b"c").await?,
        "a longer expected value won"
    );
    assert!(b.compare_and_swap(b"k", Some(b"a"), b"c").await?);
    assert_eq!(value(b, b"k").await?, some(b"c"));
    assert!(!b.compare_and_swap(b"missing", Some(b"a"), b"c").await?);
    assert_eq!(
        value(b, b"missing").await?,
        None,
        "a failed swap created the key"
    );
    Ok(())
}

/// `compare_and_swap` with `expected = None` creates a key only if it is absent or expired.
pub async fn compare_and_swap_with_none_expects_absence(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    assert!(
        b.compare_and_swap(b"k", None, b"v").await?,
        "None matches a missing key"
    );
    assert!(
        !b.compare_and_swap(b"k", None, b"w").await?,
        "None matched a present key"
    );
    assert_eq!(value(b, b"k").await?, some(b"v"));
    b.put_with_ttl(b"t", b"old", Duration::from_millis(20))
        .await?;
    sleep_past(Duration::from_millis(70)).await;
    assert!(
        b.compare_and_swap(b"t", None, b"new").await?,
        "None must match an expired key"
    );
    assert_eq!(value(b, b"t").await?, some(b"new"));
    Ok(())
}

/// An empty value is not a missing key, for `compare_and_swap` in both directions.
pub async fn compare_and_swap_tells_empty_from_missing(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend().as_ref();
    assert!(
        !b.compare_and_swap(b"m", Some(b""), b"v").await?,
        "Some(empty) matched a missing key"
    );
    assert_eq!(value(b, b"m").await?, None);
    b.put(b"e", b"").await?;
    assert!(
        !b.compare_and_swap(b"e", None, b"v").await?,
        "None matched an empty value"
    );
    assert!(b.compare_and_swap(b"e", Some(b""), b"v").await?);
    assert_eq!(value(b, b"e").await?, some(b"v"));
    assert!(
        b.compare_and_swap(b"e", Some(b"v"), b"").await?,
        "swapping to empty"
    );
    assert_eq!(value(b, b"e").await?, some(b""));
    Ok(())
}

/// Runs `RACERS` tasks released together; returns what each returned, by task index.
async fn race<T, F, Fut>(backend: &Arc<dyn StateBackend>, op: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(Arc<dyn StateBackend>, usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let barrier = Arc::new(Barrier::new(RACERS));
    let mut tasks = Vec::with_capacity(RACERS);
    for i in 0..RACERS {
        let barrier = Arc::clone(&barrier);
        let fut = op(Arc::clone(backend), i);
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            fut.await
        }));
    }
    let mut out = Vec::with_capacity(RACERS);
    for task in tasks {
        match task.await {
            Ok(result) => out.push(result?),
            Err(e) => panic!("a racing task failed: {e}"),
        }
    }
    Ok(out)
}

/// The index of the only `true`, failing unless exactly one task won.
#[track_caller]
fn single_winner(what: &str, wins: &[bool]) -> usize {
    let winners: Vec<usize> = wins
        .iter()
        .enumerate()
        .filter(|(_, w)| **w)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "{what}: tasks {winners:?} all won; exactly one must"
    );
    winners.first().copied().unwrap_or_default()
}

/// 16 tasks claim one key with `set_if_not_exists`: exactly one wins, and its value stays.
pub async fn set_if_not_exists_race_has_one_winner(ctx: &Ctx) -> Result<()> {
    let wins = race(ctx.backend(), |b, i| async move {
        b.set_if_not_exists(
            b"leader",
            format!("task-{i}").as_bytes(),
            Some(Duration::from_secs(60)),
        )
        .await
    })
    .await?;
    let winner = single_winner("set_if_not_exists", &wins);
    let stored = value(ctx.backend().as_ref(), b"leader").await?;
    assert_eq!(
        stored,
        some(format!("task-{winner}").as_bytes()),
        "the winner's value"
    );
    Ok(())
}

/// 16 tasks swap the same expected value: exactly one wins; then again with `None`.
pub async fn compare_and_swap_race_has_one_winner(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend();
    b.put(b"counter", b"0").await?;
    let wins = race(b, |b, i| async move {
        b.compare_and_swap(b"counter", Some(b"0"), format!("task-{i}").as_bytes())
            .await
    })
    .await?;
    let winner = single_winner("compare_and_swap(Some)", &wins);
    assert_eq!(
        value(b.as_ref(), b"counter").await?,
        some(format!("task-{winner}").as_bytes())
    );

    let wins = race(b, |b, i| async move {
        b.compare_and_swap(b"fresh", None, format!("task-{i}").as_bytes())
            .await
    })
    .await?;
    let winner = single_winner("compare_and_swap(None)", &wins);
    assert_eq!(
        value(b.as_ref(), b"fresh").await?,
        some(format!("task-{winner}").as_bytes())
    );
    Ok(())
}

/// 16 tasks take one key with `get_and_delete`: exactly one gets the value.
pub async fn get_and_delete_race_has_one_winner(ctx: &Ctx) -> Result<()> {
    let b = ctx.backend();
    b.put(b"job", b"payload").await?;
    let taken = race(b, |b, _| async move { b.get_and_delete(b"job").await }).await?;
    let wins: Vec<bool> = taken.iter().map(Option::is_some).collect();
    let winner = single_winner("get_and_delete", &wins);
    let got = taken.get(winner).cloned().flatten();
    assert_eq!(got.as_deref(), Some(&b"payload"[..]));
    assert_eq!(value(b.as_ref(), b"job").await?, None);
    Ok(())
}
