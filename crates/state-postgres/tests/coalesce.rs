//! Coalescing of concurrent point operations and batch reads: results stay linearizable,
//! statements are fewer than operations, `coalesce=0` turns it off, cancelled callers and
//! other runtimes do no harm.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use state_core::{Stack, StateBackend, StateError, Stats, StatsLayer};
use state_postgres::{PostgresConfig, PostgresStateBackend};

/// No test here waits longer than this for anything.
const BOUND: Duration = Duration::from_secs(60);

async fn open(schema: &str, coalesce: Option<usize>) -> PostgresStateBackend {
    let mut config = common::config(schema).await.with_pool_size(1, 16);
    if let Some(n) = coalesce {
        config = config.with_coalescing(n);
    }
    match PostgresStateBackend::new(config).await {
        Ok(backend) => backend,
        Err(e) => panic!("cannot open the backend: {e}"),
    }
}

async fn join<T>(tasks: Vec<tokio::task::JoinHandle<Result<T, StateError>>>) -> Vec<T> {
    let mut out = Vec::new();
    for task in tasks {
        match tokio::time::timeout(BOUND, task).await {
            Ok(Ok(Ok(value))) => out.push(value),
            Ok(Ok(Err(e))) => panic!("an operation failed: {e}"),
            Ok(Err(e)) => panic!("a task panicked: {e}"),
            Err(_) => panic!("a task did not finish within {BOUND:?}"),
        }
    }
    out
}

/// A put: which key, the id it wrote, and when (on the shared logical clock) it was
/// called and acknowledged.
#[derive(Debug, Clone, Copy)]
struct Put {
    key: u64,
    start: u64,
    end: u64,
}

#[derive(Debug, Clone, Copy)]
struct Get {
    key: u64,
    id: u64,
    start: u64,
    end: u64,
}

impl Get {
    /// A read of `key` that returned `value` (an id) between `start` and `end`.
    fn of(key: u64, value: Option<&[u8]>, start: u64, end: u64) -> Get {
        let id = decode_id(value);
        Get {
            key,
            id,
            start,
            end,
        }
    }
}

const TASKS: u64 = 32;
const KEYS: u64 = 20;
const OPS_PER_TASK: u64 = 200;

fn key_name(key: u64) -> Vec<u8> {
    format!("lin:{key:02}").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_gets_and_puts_are_linearizable() {
    common::in_schema("co_lin", |schema| async move {
        let backend = Arc::new(open(&schema, None).await);
        // Id 0 is the value every key starts with.
        let initial = 0u64.to_be_bytes();
        let names: Vec<Vec<u8>> = (0..KEYS).map(key_name).collect();
        let entries: Vec<(&[u8], &[u8])> = names.iter().map(|k| (&k[..], &initial[..])).collect();
        backend.batch_put(&entries).await?;

        let clock = Arc::new(AtomicU64::new(1));
        let puts = Arc::new(Mutex::new(HashMap::<u64, Put>::new()));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (backend, clock, puts) = (backend.clone(), clock.clone(), puts.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut gets = Vec::new();
                // Reads beyond one per operation (a batch read of two keys is two).
                let mut extra = 0u64;
                let mut last_put: Option<(u64, u64)> = None;
                for seq in 0..OPS_PER_TASK {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let key = rng % KEYS;
                    let start = clock.fetch_add(1, Ordering::SeqCst);
                    if (rng >> 32) % 2 == 0 {
                        let id = task * 1_000_000 + seq + 1;
                        backend.put(&key_name(key), &id.to_be_bytes()).await?;
                        let end = clock.fetch_add(1, Ordering::SeqCst);
                        if let Ok(mut puts) = puts.lock() {
                            puts.insert(id, Put { key, start, end });
                        }
                        last_put = Some((key, id));
                    } else if (rng >> 40) % 3 == 0 {
                        // A batch read of two keys, which may share a statement with point
                        // reads: each value is checked as a read of its key.
                        let other = (key + 1 + (rng >> 48) % (KEYS - 1)) % KEYS;
                        let names = [key_name(key), key_name(other)];
                        let values = backend.batch_get(&[&names[0], &names[1]]).await?;
                        let end = clock.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(values.len(), 2, "a batch read of two keys");
                        for (key, value) in [key, other].into_iter().zip(values) {
                            gets.push(Get::of(key, value.as_deref(), start, end));
                        }
                        extra += 1;
                    } else {
                        let value = backend.get(&key_name(key)).await?;
                        let end = clock.fetch_add(1, Ordering::SeqCst);
                        gets.push(Get::of(key, value.as_deref(), start, end));
                    }
                }
                // The final read of the last key this task wrote.
                let mut last = None;
                if let Some((key, own)) = last_put {
                    let start = clock.fetch_add(1, Ordering::SeqCst);
                    let value = backend.get(&key_name(key)).await?;
                    let end = clock.fetch_add(1, Ordering::SeqCst);
                    let get = Get::of(key, value.as_deref(), start, end);
                    last = Some((own, get.id));
                    gets.push(get);
                }
                Ok::<_, StateError>((gets, last, extra))
            }));
        }
        let results = join(tasks).await;
        let puts = match puts.lock() {
            Ok(puts) => puts.clone(),
            Err(e) => panic!("the put log is poisoned: {e}"),
        };
        let reads: u64 = results
            .iter()
            .map(|(g, _, extra)| g.len() as u64 - extra)
            .sum();
        let finals = results.iter().filter(|(_, l, _)| l.is_some()).count() as u64;
        assert_eq!(puts.len() as u64 + reads, TASKS * OPS_PER_TASK + finals);
        let initial = |key| Put {
            key,
            start: 0,
            end: 0,
        };
        let mut by_key: HashMap<u64, Vec<Put>> = HashMap::new();
        for put in puts.values() {
            by_key.entry(put.key).or_default().push(*put);
        }
        let mut checked = 0;
        for (gets, last, _) in &results {
            for get in gets {
                // Every read returns a value some put of that key wrote, called before the
                // read returned...
                let written = if get.id == 0 {
                    initial(get.key)
                } else {
                    match puts.get(&get.id) {
                        Some(put) => *put,
                        None => panic!("{get:?} returned a value no put wrote"),
                    }
                };
                assert_eq!(written.key, get.key, "{get:?} returned another key's value");
                assert!(
                    written.start < get.end,
                    "{get:?} saw a later put {written:?}"
                );
                // ...and no put of that key came wholly between that put and the read.
                let newer = by_key
                    .get(&get.key)
                    .into_iter()
                    .flatten()
                    .find(|p| p.start > written.end && p.end < get.start);
                assert!(
                    newer.is_none(),
                    "{get:?} returned {written:?}, overwritten before the read by {newer:?}"
                );
                checked += 1;
            }
            // Each task's final read sees its own write or one not finished before it.
            if let (Some((own, seen)), Some(final_get)) = (last, gets.last()) {
                let own_put = puts[own];
                let seen_put = if *seen == 0 {
                    initial(final_get.key)
                } else {
                    puts[seen]
                };
                assert!(
                    seen == own || seen_put.end > own_put.start,
                    "a final read saw {seen_put:?}, older than the task's own {own_put:?}"
                );
            }
        }
        eprintln!("{checked} reads checked; {:?}", backend.stats().await);
        Ok::<(), StateError>(())
    })
    .await;
}

fn decode_id(value: Option<&[u8]>) -> u64 {
    match value.map(<[u8; 8]>::try_from) {
        Some(Ok(bytes)) => u64::from_be_bytes(bytes),
        other => panic!("a read returned {other:?}, not an id"),
    }
}

/// `backend` under the stats layer, which counts each caller's operation once.
fn counted(backend: &Arc<PostgresStateBackend>) -> Arc<dyn StateBackend> {
    Stack::new().layer(StatsLayer::new()).apply(backend.clone())
}

/// The statements the driver sent.
fn queries(stats: &Stats) -> u64 {
    stats
        .extra("queries")
        .unwrap_or_else(|| panic!("no `queries` figure in {stats:?}"))
}

/// 32 tasks × 50 calls each: how many operations and statements the stats show.
async fn concurrent_load(backend: &Arc<PostgresStateBackend>) -> (u64, u64) {
    let backend = counted(backend);
    let before = backend.stats().await;
    let mut tasks = Vec::new();
    for task in 0..32u32 {
        let backend = backend.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u32 {
                let key = format!("load:{}", (task * 7 + i) % 40);
                if i % 3 == 0 {
                    backend.put(key.as_bytes(), &i.to_be_bytes()).await?;
                } else {
                    backend.get(key.as_bytes()).await?;
                }
            }
            Ok::<(), StateError>(())
        }));
    }
    join(tasks).await;
    let after = backend.stats().await;
    (
        after.operations - before.operations,
        queries(&after) - queries(&before),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_sends_fewer_statements_than_operations() {
    common::in_schema("co_stats", |schema| async move {
        let backend = Arc::new(open(&schema, Some(2)).await);
        let (operations, statements) = concurrent_load(&backend).await;
        eprintln!("{operations} operations in {statements} statements");
        // Each caller counts once, whatever statement served it.
        assert_eq!(operations, 32 * 50);
        assert!(
            statements * 2 <= operations,
            "{operations} operations took {statements} statements: nothing was coalesced"
        );
        Ok::<(), StateError>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesce_0_sends_one_statement_per_operation() {
    common::in_schema("co_off", |schema| async move {
        let url = common::url().await;
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!(
            "{url}{sep}schema={schema}&sslmode=disable&synchronous_commit=off&pool_max=16&coalesce=0"
        );
        let config = PostgresConfig::from_url(&url)?;
        assert_eq!(config.coalescing(), 0);
        let backend = Arc::new(PostgresStateBackend::new(config).await?);
        let (operations, statements) = concurrent_load(&backend).await;
        assert_eq!(operations, 32 * 50);
        assert_eq!(statements, operations);
        Ok::<(), StateError>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_leave_the_backend_working() {
    common::in_schema("co_cancel", |schema| async move {
        let backend = Arc::new(open(&schema, Some(2)).await);
        backend.put(b"kept", b"v0").await?;
        let mut cancelled = 0;
        for round in 0..10u32 {
            let mut tasks = Vec::new();
            for i in 0..50u32 {
                let backend = backend.clone();
                tasks.push(tokio::spawn(async move {
                    let zero = Duration::ZERO;
                    let gave_up = if i % 5 == 0 {
                        let value = format!("r{round}");
                        tokio::time::timeout(zero, backend.put(b"kept", value.as_bytes()))
                            .await
                            .is_err()
                    } else {
                        tokio::time::timeout(zero, backend.get(b"kept"))
                            .await
                            .is_err()
                    };
                    Ok::<bool, StateError>(gave_up)
                }));
            }
            cancelled += join(tasks).await.into_iter().filter(|c| *c).count();
        }
        assert!(cancelled > 0, "no call was cancelled");
        // Everything still works, alone and under concurrency.
        backend.put(b"after", b"ok").await?;
        assert_eq!(backend.get(b"after").await?.as_deref(), Some(&b"ok"[..]));
        let value = backend.get(b"kept").await?;
        assert!(value.is_some_and(|v| v.starts_with(b"r") || &v[..] == b"v0"));
        let (operations, _) = concurrent_load(&backend).await;
        assert_eq!(operations, 32 * 50);
        Ok::<(), StateError>(())
    })
    .await;
}

/// A connection holding the row of key `blocker` locked in an open transaction (until
/// `COMMIT`): a statement touching that row waits, and calls made meanwhile queue up.
async fn lock_blocker(schema: &str) -> sqlx::PgConnection {
    let mut locker = match sqlx::PgConnection::connect(&common::url().await).await {
        Ok(c) => c,
        Err(e) => panic!("cannot connect: {e}"),
    };
    let lock = format!(
        "BEGIN; SELECT 1 FROM \"{schema}\".state_entries \
         WHERE key = convert_to('blocker', 'UTF8') FOR UPDATE"
    );
    if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(lock))
        .execute(&mut locker)
        .await
    {
        panic!("cannot lock the row: {e}");
    }
    locker
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_group_naming_a_key_twice_stores_the_later_value() {
    common::in_schema("co_dup", |schema| async move {
        // One statement at a time: while a put waits on a row lock, the next calls queue
        // up and go out together.
        let backend = Arc::new(open(&schema, Some(1)).await);
        backend.put(b"blocker", b"0").await?;
        let mut locker = lock_blocker(&schema).await;
        let counted = counted(&backend);
        let before = counted.stats().await;
        let spawn_put = |key: &'static [u8], value: &'static [u8]| {
            let backend = counted.clone();
            tokio::spawn(async move { backend.put(key, value).await })
        };
        let blocked = spawn_put(b"blocker", b"1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let first = spawn_put(b"dup", b"first");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = spawn_put(b"dup", b"second");
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = sqlx::raw_sql("COMMIT").execute(&mut locker).await {
            panic!("cannot release the lock: {e}");
        }
        join(vec![blocked, first, second]).await;
        let after = counted.stats().await;
        assert_eq!(after.operations - before.operations, 3);
        // The blocked put alone, then both puts of `dup` in one statement.
        assert!(
            queries(&after) - queries(&before) <= 2,
            "the two puts of one key were not grouped: {before:?} -> {after:?}"
        );
        assert_eq!(backend.get(b"dup").await?.as_deref(), Some(&b"second"[..]));
        assert_eq!(backend.get(b"blocker").await?.as_deref(), Some(&b"1"[..]));
        let _ = locker.close().await;
        Ok::<(), StateError>(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_reads_queued_together_each_get_their_own_values() {
    common::in_schema("co_batch", |schema| async move {
        // One statement at a time: while a put waits on a row lock, the reads queue up.
        let backend = Arc::new(open(&schema, Some(1)).await);
        let names: Vec<Vec<u8>> = (0..600u32)
            .map(|i| format!("b:{i:03}").into_bytes())
            .collect();
        // Even keys hold their name reversed; odd keys are absent.
        let values: Vec<Vec<u8>> = names
            .iter()
            .map(|n| n.iter().rev().copied().collect())
            .collect();
        let entries: Vec<(&[u8], &[u8])> = names
            .iter()
            .zip(&values)
            .step_by(2)
            .map(|(k, v)| (&k[..], &v[..]))
            .collect();
        backend.batch_put(&entries).await?;
        backend.put(b"blocker", b"0").await?;
        let expected = |key: &[u8]| -> Option<Vec<u8>> {
            let i = names.iter().position(|n| n == key)?;
            (i % 2 == 0).then(|| values[i].clone())
        };
        // Reads of 1 to 600 keys, with repeats, absent keys and one empty batch: 1256 keys
        // in all, more than one statement holds (1000), so the last read goes out alone.
        let reads: Vec<Vec<Vec<u8>>> = vec![
            names[..300].to_vec(),
            names[250..260]
                .iter()
                .chain(&names[250..260])
                .cloned()
                .collect(),
            vec![names[7].clone()],
            vec![b"never written".to_vec(), names[4].clone()],
            Vec::new(),
            names[..600].iter().rev().take(333).cloned().collect(),
            names[..600].to_vec(),
        ];
        let mut locker = lock_blocker(&schema).await;
        let counted = counted(&backend);
        let before = counted.stats().await;
        let blocked = {
            let backend = counted.clone();
            tokio::spawn(async move { backend.put(b"blocker", b"1").await })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut tasks = Vec::new();
        for keys in reads.clone() {
            let backend = counted.clone();
            tasks.push(tokio::spawn(async move {
                let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
                backend.batch_get(&keys).await
            }));
            // In this order in the queue.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let point = {
            let backend = counted.clone();
            tokio::spawn(async move { backend.get(b"b:002").await })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = sqlx::raw_sql("COMMIT").execute(&mut locker).await {
            panic!("cannot release the lock: {e}");
        }
        join(vec![blocked]).await;
        let answers = join(tasks).await;
        for (keys, answer) in reads.iter().zip(&answers) {
            let want: Vec<Option<Vec<u8>>> = keys.iter().map(|k| expected(k)).collect();
            let got: Vec<Option<Vec<u8>>> = answer
                .iter()
                .map(|v| v.as_ref().map(|b| b.to_vec()))
                .collect();
            assert_eq!(
                got,
                want,
                "a batch read of {} keys got other values",
                keys.len()
            );
        }
        let point = join(vec![point]).await;
        assert_eq!(point[0].as_deref(), Some(&b"200:b"[..]));
        let after = counted.stats().await;
        assert_eq!(
            after.operations - before.operations,
            1 + reads.len() as u64 + 1
        );
        // The blocked put, then the reads in two statements (an empty batch sends none).
        let statements = queries(&after) - queries(&before);
        assert!(
            statements <= 3,
            "{statements} statements for the put and {} queued reads",
            reads.len() + 1
        );
        let _ = locker.close().await;
        Ok::<(), StateError>(())
    })
    .await;
}

/// A backend opened on one runtime and used from another: the dispatcher is not used
/// from there (that runtime might not be driven), and nothing hangs, before and after the
/// first runtime is gone.
#[test]
fn a_backend_serves_other_runtimes_and_outlives_its_own() {
    let build = |threaded: bool| {
        let mut builder = if threaded {
            tokio::runtime::Builder::new_multi_thread()
        } else {
            tokio::runtime::Builder::new_current_thread()
        };
        match builder.worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => panic!("cannot build a runtime: {e}"),
        }
    };
    let first = build(false);
    let second = build(true);
    let schema = common::unique_schema("co_rt");
    let backend = first.block_on(async {
        // No connection is opened on the first runtime: its I/O is not driven later.
        let config = common::config(&schema).await.with_pool_size(0, 4);
        match PostgresStateBackend::new(config).await {
            Ok(backend) => backend,
            Err(e) => panic!("cannot open the backend: {e}"),
        }
    });
    let exercise = |round: &'static str| {
        second.block_on(async {
            let work = async {
                backend.put(round.as_bytes(), b"v").await?;
                backend.put_with_ttl(b"ttl", b"v", BOUND).await?;
                let value = backend.get(round.as_bytes()).await?;
                Ok::<_, StateError>(value)
            };
            match tokio::time::timeout(BOUND, work).await {
                Ok(Ok(value)) => assert_eq!(value.as_deref(), Some(&b"v"[..])),
                Ok(Err(e)) => panic!("{round}: {e}"),
                Err(_) => panic!("{round}: an operation hung"),
            }
        })
    };
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The first runtime is alive but idle.
        exercise("while_idle");
        drop(first);
        exercise("after_shutdown");
    }));
    second.block_on(async {
        drop(backend);
        common::drop_schema(&schema).await;
    });
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Counters incremented by read-then-swap loops from many tasks, through one statement
/// slot: every swap reported as done happened exactly once (the totals match), and the
/// swaps went out grouped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_compare_and_swaps_count_exactly_once() {
    const COUNTERS: u64 = 16;
    const TASKS: u64 = 32;
    const INCREMENTS: u64 = 25;
    /// Swaps one increment may try before the test gives up on it.
    const ATTEMPTS: u32 = 1000;
    common::in_schema("co_cas", |schema| async move {
        let backend = Arc::new(open(&schema, Some(1)).await);
        let counted = counted(&backend);
        let before = counted.stats().await;
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let backend = counted.clone();
            tasks.push(tokio::spawn(async move {
                let mut lost = 0u64;
                for i in 0..INCREMENTS {
                    let key = format!("counter:{}", (task + i) % COUNTERS);
                    let mut attempts = 0;
                    loop {
                        // Counters start absent: the first swap of each is an insert.
                        let current = backend.get(key.as_bytes()).await?;
                        let next = current.as_deref().map_or(0, count) + 1;
                        let swapped = backend
                            .compare_and_swap(
                                key.as_bytes(),
                                current.as_deref(),
                                &next.to_be_bytes(),
                            )
                            .await?;
                        if swapped {
                            break;
                        }
                        lost += 1;
                        attempts += 1;
                        assert!(attempts < ATTEMPTS, "{key}: {attempts} swaps lost in a row");
                    }
                }
                Ok::<u64, StateError>(lost)
            }));
        }
        let lost: u64 = join(tasks).await.into_iter().sum();
        let mut total = 0;
        for counter in 0..COUNTERS {
            let value = backend.get(format!("counter:{counter}").as_bytes()).await?;
            total += value.as_deref().map_or(0, count);
        }
        assert_eq!(total, TASKS * INCREMENTS, "increments lost or doubled");
        let after = counted.stats().await;
        let operations = after.operations - before.operations;
        let statements = queries(&after) - queries(&before);
        eprintln!("{operations} operations ({lost} lost swaps) in {statements} statements");
        assert!(
            statements * 2 <= operations,
            "{operations} operations took {statements} statements: nothing was coalesced"
        );
        Ok::<(), StateError>(())
    })
    .await;
}

fn count(value: &[u8]) -> u64 {
    match <[u8; 8]>::try_from(value) {
        Ok(bytes) => u64::from_be_bytes(bytes),
        Err(_) => panic!("a counter holds {value:?}"),
    }
}

/// Two swaps of one key from the same value, and two inserts of one absent key, queued
/// together behind a blocked statement: one of each pair wins, as if they ran in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swaps_naming_a_key_twice_take_turns() {
    common::in_schema("co_casdup", |schema| async move {
        let backend = Arc::new(open(&schema, Some(1)).await);
        backend.put(b"blocker", b"0").await?;
        backend.put(b"dup", b"old").await?;
        let mut locker = lock_blocker(&schema).await;
        let cas = |key: &'static [u8], expected: Option<&'static [u8]>, new: &'static [u8]| {
            let backend = backend.clone();
            tokio::spawn(async move { backend.compare_and_swap(key, expected, new).await })
        };
        let blocked = cas(b"blocker", Some(b"0"), b"1");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut queued = Vec::new();
        for (key, expected, new) in [
            (&b"dup"[..], Some(&b"old"[..]), &b"a"[..]),
            (b"dup", Some(b"old"), b"b"),
            (b"fresh", None, b"a"),
            (b"fresh", None, b"b"),
            (b"other", None, b"x"),
        ] {
            queued.push(cas(key, expected, new));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Err(e) = sqlx::raw_sql("COMMIT").execute(&mut locker).await {
            panic!("cannot release the lock: {e}");
        }
        assert_eq!(join(vec![blocked]).await, vec![true]);
        let won = join(queued).await;
        assert_eq!(
            won[0] as u8 + won[1] as u8,
            1,
            "two swaps from one value: {won:?}"
        );
        assert_eq!(
            won[2] as u8 + won[3] as u8,
            1,
            "two inserts of one key: {won:?}"
        );
        assert!(won[4], "the insert of a key named once lost: {won:?}");
        let dup = backend.get(b"dup").await?;
        let expected: &[u8] = if won[0] { b"a" } else { b"b" };
        assert_eq!(dup.as_deref(), Some(expected));
        let fresh = backend.get(b"fresh").await?;
        let expected: &[u8] = if won[2] { b"a" } else { b"b" };
        assert_eq!(fresh.as_deref(), Some(expected));
        assert_eq!(backend.get(b"other").await?.as_deref(), Some(&b"x"[..]));
        let _ = locker.close().await;
        Ok::<(), StateError>(())
    })
    .await;
}
