//! `RedisDistributedLock` on a Redis Cluster (3 masters + 3 replicas) and behind Sentinels
//! (primary, replica, 3 sentinels): the whole lock suite in one test per topology (nextest
//! runs each test in its own process, so one topology per test), and what a failover does
//! to a held lock: a Sentinel failover, and a Cluster master failover to a replica that had
//! fallen behind.
//!
//! Each test starts its own topology; every loop is bounded in count and time.

use std::time::{Duration, Instant};

use state_core::{DistributedLock, ErrorKind, LockGuard, StateBackend};
use state_lock::RedisDistributedLock;
use state_redis::RedisStateBackend;
use testing::services::{RedisCluster, RedisSentinel};

const LONG: Duration = Duration::from_secs(60);

mod common;

use common::redis::{lock_on, redis_config};

/// A subject factory over `url`: two independent handles and a fenced-write backend under
/// a fresh prefix per subject, cleared afterwards.
fn factory(url: String) -> testing::locks::LockFactory {
    testing::locks::factory(move || {
        let url = url.clone();
        async move { common::redis::subject_on(&url).await }
    })
}

#[test]
fn cluster_runs_the_lock_suite() {
    let rt = testing::conformance::runtime();
    let cluster = rt
        .block_on(RedisCluster::start())
        .unwrap_or_else(|e| panic!("cannot start the Redis Cluster: {e}"));
    testing::locks::run_all_in_one(factory(cluster.url()));
    drop(cluster);
}

#[test]
fn sentinel_runs_the_lock_suite() {
    let rt = testing::conformance::runtime();
    let sentinel = rt
        .block_on(RedisSentinel::start())
        .unwrap_or_else(|e| panic!("cannot start the Sentinel topology: {e}"));
    testing::locks::run_all_in_one(factory(sentinel.url()));
    drop(sentinel);
}

/// Calls `attempt` until it returns anything but a retryable error (a failover in
/// progress), for at most 45 s and 300 attempts, and returns that.
async fn settled<T, F, Fut>(what: &str, mut attempt: F) -> state_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = state_core::Result<T>>,
{
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt().await {
            Err(e)
                if e.is_retryable()
                    && attempts < 300
                    && started.elapsed() < Duration::from_secs(45) =>
            {
                eprintln!("{what}: retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            outcome => return outcome,
        }
    }
}

/// What both failover stories start from: two independent lock handles (holders A and B)
/// and a backend for fenced writes, all under a fresh key prefix, and the keys of lock
/// `name` there.
struct Holders {
    prefix: String,
    a_lock: RedisDistributedLock,
    b_lock: RedisDistributedLock,
    backend: RedisStateBackend,
    lock_key: String,
    counter_key: String,
}

async fn two_holders(url: &str, name: &str) -> Holders {
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let a_lock = lock_on(url, &prefix).await;
    let b_lock = lock_on(url, &prefix).await;
    let backend = RedisStateBackend::new(redis_config(url, &prefix))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let lock_key = format!("{prefix}lock:{{{name}}}");
    let counter_key = format!("{lock_key}:fence");
    Holders {
        prefix,
        a_lock,
        b_lock,
        backend,
        lock_key,
        counter_key,
    }
}

/// The end of both failover stories: the promoted node does not have A's lock, so B
/// acquires it while A's guard is still within its lease; B's token is higher although the
/// counter was lost, so A's late fenced write to `resource` is rejected, A's extend and
/// release say `NotOwner`, and `resource` holds B's write.
async fn after_the_failover_the_old_holder_is_fenced(
    a_lock: &RedisDistributedLock,
    b_lock: &RedisDistributedLock,
    backend: &RedisStateBackend,
    mut a: LockGuard,
    name: &str,
    resource: &[u8],
) {
    let token_a = a.fencing_token();
    let b = settled("B acquires after the failover", || {
        b_lock.try_acquire(name, LONG)
    })
    .await
    .expect("B's acquire after the failover")
    .expect("the promoted node does not have A's lock, so B gets it");
    assert!(
        !a.is_expired(),
        "A's guard still believes it holds the lock"
    );
    assert!(
        b.fencing_token() > token_a,
        "B's token {:?} must be above A's {token_a:?} although the counter was lost",
        b.fencing_token()
    );
    settled("B's fenced write", || {
        backend.put_fenced(resource, b"b1", b.fencing_token())
    })
    .await
    .expect("B's fenced write");
    let late = settled("A's late write", || {
        backend.put_fenced(resource, b"a2", token_a)
    })
    .await;
    let e = late.expect_err("A's late write must be fenced");
    assert_eq!(e.kind(), ErrorKind::Fenced, "{e}");
    // A's handle may still be reconnecting or finding the new slot owner: retry what is
    // retryable, bounded.
    let mut extended = a_lock.extend(&mut a, LONG).await;
    for _ in 0..100 {
        match &extended {
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(150)).await;
                extended = a_lock.extend(&mut a, LONG).await;
            }
            _ => break,
        }
    }
    let e = extended.expect_err("A lost the lock");
    assert_eq!(e.kind(), ErrorKind::NotOwner, "{e}");
    assert_eq!(
        backend.get(resource).await.expect("read back").as_deref(),
        Some(&b"b1"[..])
    );
    b_lock.release(b).await.expect("B releases");
    let e = a_lock.release(a).await.expect_err("A no longer holds it");
    // NotOwner, or, when A's first release went out on its connection to the dead node (a
    // request whose outcome the client cannot know), an outcome-unknown error saying the
    // lock is not held: never success, never a second holder's lock freed.
    assert!(
        e.kind() == ErrorKind::NotOwner
            || (e.outcome_unknown() && e.message().contains("no longer held")),
        "{e}"
    );
}

/// RELIABILITY 4 and the module docs' failover story. Holder A takes a lock and writes
/// with its token; the replica is made to miss the lock and its counter (as asynchronous
/// replication can: the keys are deleted on the replica alone), then the primary is
/// SIGKILLed. After the Sentinels promote the replica, B acquires the "free" lock while A's
/// guard is still within its lease — and B's token is higher, so A's late fenced write is
/// rejected and A's extend says `NotOwner`. The handles re-resolve the primary by
/// themselves.
#[test]
fn sentinel_failover_that_loses_the_lock_still_fences_the_old_holder() {
    let rt = testing::conformance::runtime();
    let mut sentinel = rt
        .block_on(RedisSentinel::start())
        .unwrap_or_else(|e| panic!("cannot start the Sentinel topology: {e}"));
    rt.block_on(async {
        let name = "failover";
        let Holders {
            a_lock,
            b_lock,
            backend,
            lock_key,
            counter_key,
            ..
        } = two_holders(&sentinel.url(), name).await;

        let a = a_lock
            .try_acquire(name, LONG)
            .await
            .expect("A acquires")
            .expect("the lock is free");
        let token_a = a.fencing_token();
        backend
            .put_fenced(b"resource", b"a1", token_a)
            .await
            .expect("A's fenced write");

        // The replica got the lock and the counter; make it lose them, as a replica that
        // lagged behind would not have them.
        let replica = sentinel.replica_port().await.expect("the replica's port");
        let started = Instant::now();
        loop {
            let both = sentinel
                .cli(replica, &["EXISTS", &lock_key, &counter_key])
                .await
                .expect("redis-cli on the replica");
            if both.trim() == "2" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the replica never received the lock keys ({both})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for args in [
            &["CONFIG", "SET", "replica-read-only", "no"][..],
            &["DEL", &lock_key, &counter_key][..],
            &["CONFIG", "SET", "replica-read-only", "yes"][..],
        ] {
            sentinel
                .cli(replica, args)
                .await
                .expect("redis-cli on the replica");
        }
        let left = sentinel
            .cli(replica, &["EXISTS", &lock_key, &counter_key])
            .await
            .expect("redis-cli on the replica");
        assert_eq!(left.trim(), "0", "the replica still has the lock keys");

        let old = sentinel.kill_primary().await.expect("kill the primary");
        let new = sentinel
            .wait_for_new_primary(old, Duration::from_secs(60))
            .await
            .expect("a new primary");
        assert_eq!(new, replica, "the replica was promoted");

        after_the_failover_the_old_holder_is_fenced(
            &a_lock,
            &b_lock,
            &backend,
            a,
            name,
            b"resource",
        )
        .await;
        backend.clear(b"").await.expect("cleanup");
    });
    drop(sentinel);
}

/// The port of the Cluster master that owns the slot of `key`: only the owner answers an
/// integer to `EXISTS`, the others answer `MOVED`.
async fn owner_of(cluster: &RedisCluster, key: &str) -> u16 {
    let masters = cluster.masters().await.expect("the cluster's masters");
    for &port in &masters {
        if let Ok(reply) = cluster.cli(port, &["EXISTS", key]).await
            && matches!(reply.trim(), "0" | "1")
        {
            return port;
        }
    }
    panic!("none of the masters {masters:?} owns the slot of {key}");
}

/// The port of the Cluster replica that replicates `master`, as its `INFO replication`
/// says.
async fn replica_of(cluster: &RedisCluster, master: u16) -> u16 {
    let replicas = cluster.replicas().await.expect("the cluster's replicas");
    for &port in &replicas {
        let info = cluster
            .cli(port, &["INFO", "replication"])
            .await
            .expect("redis-cli on a replica");
        let of = info
            .lines()
            .find_map(|l| l.trim().strip_prefix("master_port:"));
        if of == Some(master.to_string().as_str()) {
            return port;
        }
    }
    panic!("none of the replicas {replicas:?} replicates the master on port {master}");
}

/// RELIABILITY 4 on a Redis Cluster. The replica of the master that owns the lock's slot is
/// SIGSTOPped and the master drops its replication link, so the replica falls behind for
/// real: holder A's lock, its counter, and A's fenced write (to a key with the lock name's
/// hash tag, so in the same slot) reach the master only. The master is SIGKILLed and the
/// replica resumed; once the Cluster has promoted it, B acquires the "free" lock while A's
/// guard is still within its lease — and B's token, seeded from the server clock, is
/// higher although the counter was lost, so A's late fenced write is rejected and A's
/// extend says `NotOwner`. The handles follow the new slot owner by themselves.
#[test]
fn cluster_master_failover_that_loses_the_lock_still_fences_the_old_holder() {
    let rt = testing::conformance::runtime();
    let mut cluster = rt
        .block_on(RedisCluster::start())
        .unwrap_or_else(|e| panic!("cannot start the Redis Cluster: {e}"));
    rt.block_on(async {
        let name = "cluster-failover";
        let Holders {
            prefix,
            a_lock,
            b_lock,
            backend,
            lock_key,
            counter_key,
        } = two_holders(&cluster.url(), name).await;
        // The backend's prefix has no brace, so the name's tag puts it in the lock's slot.
        let resource = format!("{{{name}}}resource");
        let resource = resource.as_bytes();
        let resource_key = format!("{prefix}{{{name}}}resource");

        let master = owner_of(&cluster, &lock_key).await;
        assert_eq!(
            owner_of(&cluster, &resource_key).await,
            master,
            "the resource key shares the lock's slot"
        );
        let replica = replica_of(&cluster, master).await;

        // A replica that lags: stopped, and cut off by its master, which would otherwise
        // keep sending the replication stream into the stopped process's socket buffer
        // (the kernel accepts it, and the replica would apply it on SIGCONT).
        cluster.pause_node(replica).expect("SIGSTOP the replica");
        let dropped = cluster
            .cli(master, &["CLIENT", "KILL", "TYPE", "replica"])
            .await
            .expect("redis-cli on the master");
        assert_eq!(dropped.trim(), "1", "the master drops its one replica link");

        let a = a_lock
            .try_acquire(name, LONG)
            .await
            .expect("A acquires")
            .expect("the lock is free");
        let token_a = a.fencing_token();
        backend
            .put_fenced(resource, b"a1", token_a)
            .await
            .expect("A's fenced write");

        cluster.kill_node(master).expect("SIGKILL the master");
        let killed = Instant::now();
        cluster.resume_node(replica).expect("SIGCONT the replica");
        let promoted = cluster
            .wait_for_promotion(master, Duration::from_secs(60))
            .await
            .expect("a replica promoted in the killed master's place");
        eprintln!(
            "master {master} killed, replica {promoted} promoted after {:?}",
            killed.elapsed()
        );
        assert_eq!(promoted, replica, "the lagging replica was promoted");
        let left = cluster
            .cli(
                promoted,
                &["EXISTS", &lock_key, &counter_key, &resource_key],
            )
            .await
            .expect("redis-cli on the promoted replica");
        assert_eq!(
            left.trim(),
            "0",
            "the promoted replica has none of the keys written while it lagged"
        );

        after_the_failover_the_old_holder_is_fenced(&a_lock, &b_lock, &backend, a, name, resource)
            .await;
        backend.clear(b"").await.expect("cleanup");
    });
    drop(cluster);
}
