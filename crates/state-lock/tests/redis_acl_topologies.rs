//! RELIABILITY case 27 for the lock, on a Redis Cluster and behind Sentinels: a user with
//! exactly the rights `RedisDistributedLock`'s docs list acquires, extends, checks and
//! releases locks, and its fencing tokens guard writes made by a backend user with the rights
//! the state-redis README lists; the same lock user under another key prefix is refused
//! with a permission error.
//!
//! Each test starts its own topology; users are created with `ACL SETUSER` on every data
//! node (ACLs are per node).

use std::future::Future;
use std::time::Duration;

use state_core::{DistributedLock, ErrorKind, StateBackend};
use state_lock::{RedisDistributedLock, RedisLockConfig};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::{RedisCluster, RedisSentinel, ServiceError};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const PREFIX: &str = "jobs:";
const LOCK_USER: (&str, &str) = ("locker", "locker-acl-pw");
const DATA_USER: (&str, &str) = ("writer", "writer-acl-pw");

/// The rights `RedisDistributedLock`'s documentation lists (its **ACL.** paragraph), for
/// the keys of the backend prefix followed by the lock's (`lock:`).
fn lock_rights(cluster: bool) -> Vec<String> {
    let mut rights: Vec<String> = [
        "+evalsha", "+eval", "+pttl", "+get", "+set", "+pexpire", "+del", "+time", "+info",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    rights.push(format!("~{PREFIX}lock:*"));
    if cluster {
        // ASKING is documented too, but only a migrating slot needs it.
        rights.push("+cluster|nodes".to_owned());
        rights.push("+cluster|slots".to_owned());
    }
    rights
}

/// The rights of the state-redis README's ACL block, for `PREFIX` (no `WAIT`).
fn backend_rights(cluster: bool) -> Vec<String> {
    let readme = include_str!("../../state-redis/README.md");
    let block = readme
        .split("## ACL: what the backend needs")
        .nth(1)
        .and_then(|rest| rest.split("```text").nth(1))
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("the state-redis README has no ACL block"));
    let mut rights: Vec<String> = block
        .split_whitespace()
        .filter(|t| t.starts_with('+'))
        .filter(|t| cluster || !(t.starts_with("+cluster|") || *t == "+asking"))
        .filter(|t| *t != "+wait" && *t != "+readonly")
        .map(str::to_owned)
        .collect();
    rights.push(format!("~{PREFIX}*"));
    rights.push("~{*}*".to_owned());
    rights
}

async fn create_users<F, Fut>(cli: F, cluster: bool) -> Result<(), ServiceError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: Future<Output = Result<String, ServiceError>>,
{
    for ((user, pass), rights) in [
        (LOCK_USER, lock_rights(cluster)),
        (DATA_USER, backend_rights(cluster)),
    ] {
        let mut args: Vec<String> = ["ACL", "SETUSER", user, "reset", "on"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        args.push(format!(">{pass}"));
        args.extend(rights);
        let out = cli(args).await?;
        if out.trim() != "OK" {
            return Err(ServiceError::from_message(format!(
                "ACL SETUSER {user}: {out}"
            )));
        }
    }
    Ok(())
}

fn config(url: &str, (user, pass): (&str, &str), prefix: &str) -> state_core::Result<RedisConfig> {
    RedisConfig::builder()
        .url(url)
        .username(user)
        .password(pass)
        .key_prefix(prefix)
        .build()
}

async fn lock_as(url: &str, prefix: &str) -> state_core::Result<RedisDistributedLock> {
    let config = RedisLockConfig::new(config(url, LOCK_USER, prefix)?)
        .with_wait_timeout(Duration::from_secs(5));
    RedisDistributedLock::with_config(config).await
}

/// Acquire, contend, extend, fence a write, release, re-acquire; then the confinement.
async fn lock_with_the_documented_rights(url: &str) -> TestResult {
    let lock = lock_as(url, PREFIX).await?;
    let other = lock_as(url, PREFIX).await?;
    let data = RedisStateBackend::new(config(url, DATA_USER, PREFIX)?).await?;
    let name = format!("acl-{}", testing::conformance::unique_namespace());

    let mut guard = lock
        .try_acquire(&name, Duration::from_secs(10))
        .await?
        .ok_or("a free lock was not acquired")?;
    assert!(lock.is_locked(&name).await?);
    assert!(
        other
            .try_acquire(&name, Duration::from_secs(10))
            .await?
            .is_none(),
        "a held lock was acquired twice"
    );
    lock.extend(&mut guard, Duration::from_secs(20)).await?;
    let first = guard.fencing_token();
    data.put_fenced(b"guarded", b"first", first).await?;
    lock.release(guard).await?;
    assert!(!lock.is_locked(&name).await?);

    let second = other.acquire(&name, Duration::from_secs(10)).await?;
    assert!(second.fencing_token() > first);
    data.put_fenced(b"guarded", b"second", second.fencing_token())
        .await?;
    let stale = data.put_fenced(b"guarded", b"stale", first).await;
    assert_eq!(stale.err().map(|e| e.kind()), Some(ErrorKind::Fenced));
    assert_eq!(data.get(b"guarded").await?.as_deref(), Some(&b"second"[..]));
    other.release(second).await?;

    // Another prefix is outside the lock user's key pattern: a permission error, not "held".
    let outside = lock_as(url, "elsewhere:").await?;
    let refused = outside.try_acquire(&name, Duration::from_secs(10)).await;
    let err = refused
        .err()
        .unwrap_or_else(|| panic!("the ACL let the lock user take a lock outside its prefix"));
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains("NOPERM") && err.to_string().contains("ACL"),
        "{err}"
    );
    data.clear(b"").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lock_user_with_the_documented_rights() -> TestResult {
    let cluster = RedisCluster::start().await?;
    let nodes = &cluster;
    for port in cluster.ports() {
        create_users(
            |args| async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                nodes.cli(port, &args).await
            },
            true,
        )
        .await?;
    }
    lock_with_the_documented_rights(&cluster.url()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_lock_user_with_the_documented_rights() -> TestResult {
    let topology = RedisSentinel::start().await?;
    let nodes = &topology;
    for port in topology.data_ports() {
        create_users(
            |args| async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                nodes.cli(port, &args).await
            },
            false,
        )
        .await?;
    }
    lock_with_the_documented_rights(&topology.url()).await
}
