//! RELIABILITY case 14, live resharding: one hash slot holding keys is moved between two
//! masters by hand (`CLUSTER SETSLOT … IMPORTING/MIGRATING`, `MIGRATE … KEYS` in small
//! batches, then `CLUSTER SETSLOT … NODE` on every master) while writers run gets, puts,
//! batch gets and puts, deletes and compare-and-swaps on keys of that slot and of others.
//!
//! Every operation must succeed with the value a single-threaded model predicts (each
//! writer owns its keys): `ASK` is followed during the move, `MOVED` after it, multi-key
//! requests that meet a half-moved slot (`TRYAGAIN`) wait; at the end every key holds its
//! last acknowledged value. The test also checks that the move really happened under the
//! load: keys were counted on both nodes mid-move, and the old owner answers `MOVED`.
//!
//! Every loop is bounded in count and time.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::RedisCluster;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// The hash tag of the slot that moves.
const TAG: &str = "{moving}";
/// Keys per writer in the moving slot.
const KEYS: usize = 12;
/// The longest a writer runs, whatever happens.
const LOAD_LIMIT: Duration = Duration::from_secs(90);
/// Keys moved per `MIGRATE`.
const BATCH: usize = 8;

fn text(out: &str) -> &str {
    out.trim()
}

fn int(out: &str) -> Result<i64, Box<dyn std::error::Error>> {
    text(out)
        .parse()
        .map_err(|e| format!("not an integer reply {out:?}: {e}").into())
}

/// The calls of `ASKING` in an `INFO commandstats` reply.
fn asking_calls(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("cmdstat_asking:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Runs one writer until `stop`; returns how many operations it checked. Panics (failing the
/// test) on any error or on a result the model does not predict.
async fn writer(
    b: Arc<RedisStateBackend>,
    w: usize,
    stop: Arc<AtomicBool>,
) -> (u64, HashMap<Vec<u8>, Vec<u8>>) {
    let began = Instant::now();
    let mut model: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let key = |j: usize| format!("{TAG}w{w}:{j}").into_bytes();
    let other = |j: usize| format!("w{w}:other{j}").into_bytes();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) && began.elapsed() < LOAD_LIMIT {
        let j = i % KEYS;
        let (k, k2, o) = (key(j), key((j + 1) % KEYS), other(j));
        let v = format!("w{w}:{i}").into_bytes();
        let what = i % 6;
        let context =
            |op: &str| format!("writer {w} step {i} {op} {}", String::from_utf8_lossy(&k));
        match what {
            0 => {
                b.put(&k, &v)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", context("put")));
                b.put(&o, &v)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", context("put other")));
                model.insert(k.clone(), v.clone());
                model.insert(o.clone(), v.clone());
            }
            1 => {
                let got = b
                    .get(&k)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", context("get")));
                assert_eq!(
                    got.as_deref(),
                    model.get(&k).map(Vec::as_slice),
                    "{}",
                    context("get")
                );
            }
            2 => {
                let v2 = format!("w{w}:{i}b").into_bytes();
                b.batch_put(&[(&k, &v), (&k2, &v2), (&o, &v)])
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", context("batch_put")));
                model.insert(k.clone(), v.clone());
                model.insert(k2.clone(), v2);
                model.insert(o.clone(), v.clone());
            }
            3 => {
                let got = b
                    .batch_get(&[&k, &k2, &o])
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", context("batch_get")));
                for (key, got) in [&k, &k2, &o].into_iter().zip(got) {
                    assert_eq!(
                        got.as_deref(),
                        model.get(key).map(Vec::as_slice),
                        "{} ({})",
                        context("batch_get"),
                        String::from_utf8_lossy(key)
                    );
                }
            }
            4 => {
                let existed = b
                    .delete(&k)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", context("delete")));
                assert_eq!(existed, model.remove(&k).is_some(), "{}", context("delete"));
            }
            _ => {
                let current = model.get(&k).cloned();
                let swapped = b
                    .compare_and_swap(&k, current.as_deref(), &v)
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e}", context("compare_and_swap")));
                assert!(
                    swapped,
                    "{}: the expected value was not there",
                    context("compare_and_swap")
                );
                model.insert(k.clone(), v.clone());
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (i as u64, model)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_load_loses_nothing_and_every_operation_succeeds() -> TestResult {
    let cluster = RedisCluster::start().await?;
    let masters = cluster.masters().await?;
    let any = *masters.first().ok_or("no master")?;
    let prefix = testing::conformance::unique_namespace();
    let config = RedisConfig::builder()
        .url(cluster.url())
        .key_prefix(&prefix)
        .build()?;
    let backend = Arc::new(RedisStateBackend::new(config).await?);

    // The slot of the tag (the key prefix is outside the braces, so it does not matter).
    let slot = int(&cluster.cli(any, &["CLUSTER", "KEYSLOT", TAG]).await?)?.to_string();
    let mut ids = HashMap::new();
    for &port in &masters {
        ids.insert(
            port,
            text(&cluster.cli(port, &["CLUSTER", "MYID"]).await?).to_owned(),
        );
    }
    let mut source = None;
    for &port in &masters {
        // Only the owner answers an integer; the others answer MOVED.
        if int(&cluster.cli(port, &["EXISTS", TAG]).await?).is_ok() {
            source = Some(port);
        }
    }
    let source = source.ok_or("no master owns the slot")?;
    let target = *masters
        .iter()
        .find(|&&p| p != source)
        .ok_or("one master only")?;
    let (source_id, target_id) = (ids[&source].clone(), ids[&target].clone());

    // Keys in the slot before the move, so that batches of it are migrated under load.
    let seed: Vec<(Vec<u8>, Vec<u8>)> = (0..120)
        .map(|i| {
            (
                format!("{TAG}seed{i}").into_bytes(),
                format!("s{i}").into_bytes(),
            )
        })
        .collect();
    let entries: Vec<(&[u8], &[u8])> = seed
        .iter()
        .map(|(k, v)| (k.as_slice(), v.as_slice()))
        .collect();
    backend.batch_put(&entries).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| tokio::spawn(writer(Arc::clone(&backend), w, Arc::clone(&stop))))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The move, step by step as `redis-cli --cluster reshard` does it.
    let stats_before = backend.stats().await;
    let ok = |out: String, what: &str| -> TestResult {
        if text(&out) == "OK" {
            Ok(())
        } else {
            Err(format!("{what}: {out}").into())
        }
    };
    ok(
        cluster
            .cli(
                target,
                &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
            )
            .await?,
        "IMPORTING",
    )?;
    ok(
        cluster
            .cli(
                source,
                &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
            )
            .await?,
        "MIGRATING",
    )?;
    let mut both_held_keys = false;
    let mut batches = 0;
    let target_port = target.to_string();
    loop {
        let listed = cluster
            .cli(
                source,
                &["CLUSTER", "GETKEYSINSLOT", &slot, &BATCH.to_string()],
            )
            .await?;
        let keys: Vec<&str> = listed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        if keys.is_empty() {
            break;
        }
        let mut args = vec![
            "MIGRATE",
            "127.0.0.1",
            target_port.as_str(),
            "",
            "0",
            "5000",
            "KEYS",
        ];
        args.extend(keys.iter().copied());
        let out = cluster.cli(source, &args).await?;
        // NOKEY: a writer deleted or the key expired between listing and moving it.
        if text(&out) != "OK" && text(&out) != "NOKEY" {
            return Err(format!("MIGRATE: {out}").into());
        }
        batches += 1;
        let on_source = int(&cluster
            .cli(source, &["CLUSTER", "COUNTKEYSINSLOT", &slot])
            .await?)?;
        let on_target = int(&cluster
            .cli(target, &["CLUSTER", "COUNTKEYSINSLOT", &slot])
            .await?)?;
        both_held_keys |= on_source > 0 && on_target > 0;
        assert!(
            batches < 500,
            "the slot never emptied: {on_source} keys left on the source"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &port in [target, source]
        .iter()
        .chain(masters.iter().filter(|&&p| p != source && p != target))
    {
        ok(
            cluster
                .cli(port, &["CLUSTER", "SETSLOT", &slot, "NODE", &target_id])
                .await?,
            "NODE",
        )?;
    }
    // Let the load run on after the move, through MOVED.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut expected = HashMap::new();
    let mut operations = 0;
    for w in writers {
        let (ops, model) = w.await?;
        operations += ops;
        expected.extend(model);
    }
    for (k, v) in &seed {
        expected.insert(k.clone(), v.clone());
    }
    // Clients sent ASKING to the importing node: ASK was followed, not only waited out
    // (MIGRATE itself uses RESTORE-ASKING, which is counted apart).
    let asking = asking_calls(&cluster.cli(target, &["INFO", "commandstats"]).await?);
    eprintln!(
        "slot {slot} moved from {source} to {target} in {batches} batches; {operations} checked \
         operations; {asking} ASKING on the target; retries {} -> {}",
        stats_before.retries,
        backend.stats().await.retries
    );
    assert!(
        asking > 0,
        "no client followed an ASK to the importing node"
    );
    assert!(
        both_held_keys,
        "the keys were never split between the two nodes mid-move"
    );
    assert!(
        batches >= 2,
        "the move took {batches} batches: no operation ran mid-move"
    );

    // Nothing lost: every key holds its last acknowledged value.
    let keys: Vec<&Vec<u8>> = expected.keys().collect();
    for chunk in keys.chunks(200) {
        let ks: Vec<&[u8]> = chunk.iter().map(|k| k.as_slice()).collect();
        let got = backend.batch_get(&ks).await?;
        for (k, got) in chunk.iter().zip(got) {
            assert_eq!(
                got.as_deref(),
                expected.get(*k).map(Vec::as_slice),
                "{}",
                String::from_utf8_lossy(k)
            );
        }
    }
    // The slot really moved: the old owner redirects, the new one serves.
    let probe = format!("{prefix}{TAG}seed0");
    let redirect = cluster.cli(source, &["GET", &probe]).await?;
    assert!(
        redirect.contains("MOVED") && redirect.contains(&target_port),
        "{redirect}"
    );
    assert_eq!(text(&cluster.cli(target, &["GET", &probe]).await?), "s0");
    backend.clear(b"").await?;
    Ok(())
}

/// The commands of the README's ACL block for Cluster mode without `WAIT`.
fn readme_rights() -> Vec<String> {
    let readme = include_str!("../README.md");
    let block = readme
        .split("## ACL: what the backend needs")
        .nth(1)
        .and_then(|rest| rest.split("```text").nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("the README has no ACL block under its ACL heading"));
    block
        .split_whitespace()
        .filter(|t| t.starts_with('+') && *t != "+wait" && *t != "+readonly")
        .map(str::to_owned)
        .collect()
}

/// The calls of `SET` in an `INFO commandstats` reply.
fn set_calls(info: &str) -> u64 {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("cmdstat_set:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A slot frozen half-way (IMPORTING/MIGRATING set, no key moved yet): one key of it is on
/// the old owner, another is new and must go to the importing node. A `batch_put` of both
/// writes each exactly once — the one on the old owner, the new one after `ASK`/`ASKING` on
/// the importing node — and succeeds at once: a redirect inside the batch neither hides
/// which write was applied (to send it again) nor waits for the migration to end. The
/// backend runs as an ACL user with the README's rights only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_into_a_half_moved_slot_writes_each_key_once() -> TestResult {
    let cluster = RedisCluster::start().await?;
    let masters = cluster.masters().await?;
    let any = *masters.first().ok_or("no master")?;
    // As an ACL user with the README's rights only: following ASK needs its `+asking`.
    let prefix = testing::conformance::unique_namespace();
    for port in cluster.ports() {
        let mut args = vec![
            "ACL".to_owned(),
            "SETUSER".to_owned(),
            "mover".to_owned(),
            "on".to_owned(),
            ">mover-acl-pw".to_owned(),
            format!("~{prefix}*"),
            "~{*}*".to_owned(),
        ];
        args.extend(readme_rights());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cluster.cli(port, &args).await?;
        assert_eq!(text(&out), "OK", "{out}");
    }
    let config = RedisConfig::builder()
        .url(cluster.url())
        .username("mover")
        .password("mover-acl-pw")
        .key_prefix(&prefix)
        // Waiting out the migration would take this long and then fail.
        .failover_timeout(Duration::from_secs(3))
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    let slot = int(&cluster.cli(any, &["CLUSTER", "KEYSLOT", TAG]).await?)?.to_string();
    let mut source = None;
    for &port in &masters {
        if int(&cluster.cli(port, &["EXISTS", TAG]).await?).is_ok() {
            source = Some(port);
        }
    }
    let source = source.ok_or("no master owns the slot")?;
    let target = *masters
        .iter()
        .find(|&&p| p != source)
        .ok_or("one master only")?;
    let source_id = text(&cluster.cli(source, &["CLUSTER", "MYID"]).await?).to_owned();
    let target_id = text(&cluster.cli(target, &["CLUSTER", "MYID"]).await?).to_owned();
    let (old, new) = (
        format!("{TAG}old").into_bytes(),
        format!("{TAG}new").into_bytes(),
    );
    backend.put(&old, b"1").await?;

    for (port, args) in [
        (
            target,
            ["CLUSTER", "SETSLOT", &slot, "IMPORTING", &source_id],
        ),
        (
            source,
            ["CLUSTER", "SETSLOT", &slot, "MIGRATING", &target_id],
        ),
    ] {
        let out = cluster.cli(port, &args).await?;
        assert_eq!(text(&out), "OK", "{args:?}: {out}");
    }
    let sets = |port: u16| {
        let cluster = &cluster;
        async move {
            Ok::<_, Box<dyn std::error::Error>>(set_calls(
                &cluster.cli(port, &["INFO", "commandstats"]).await?,
            ))
        }
    };
    let (source_sets, target_sets) = (sets(source).await?, sets(target).await?);
    backend.batch_put(&[(&old, b"2"), (&new, b"3")]).await?;
    assert_eq!(
        (
            sets(source).await? - source_sets,
            sets(target).await? - target_sets
        ),
        (1, 1),
        "each write of the batch must run once, on the node that holds (or takes) its key"
    );
    // Both keys read back through the redirections, one on each node.
    assert_eq!(backend.get(&old).await?.as_deref(), Some(&b"2"[..]));
    assert_eq!(backend.get(&new).await?.as_deref(), Some(&b"3"[..]));
    assert_eq!(
        int(&cluster
            .cli(target, &["CLUSTER", "COUNTKEYSINSLOT", &slot])
            .await?)?,
        1
    );
    // A lone blind write and a delete of the new key follow ASK the same way.
    backend.put(&new, b"4").await?;
    assert_eq!(backend.get(&new).await?.as_deref(), Some(&b"4"[..]));
    assert!(backend.delete(&new).await?);

    for port in [source, target] {
        let out = cluster
            .cli(port, &["CLUSTER", "SETSLOT", &slot, "STABLE"])
            .await?;
        assert_eq!(text(&out), "OK", "{out}");
    }
    backend.clear(b"").await?;
    Ok(())
}
