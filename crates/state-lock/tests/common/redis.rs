//! Redis lock subjects for the suite: two independent handles and a fenced-write backend
//! under a fresh key prefix, cleared afterwards (lock keys, counters and fencing marks).

use std::sync::Arc;

use state_core::StateBackend;
use state_lock::{RedisDistributedLock, RedisLockConfig};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::locks::{LockKind, LockSubject, WAIT_TIMEOUT};

pub fn redis_config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig::builder()
        .url(url)
        .key_prefix(prefix)
        .build()
        .unwrap_or_else(|e| panic!("bad test config: {e}"))
}

/// A lock handle with its own connections, waiting [`WAIT_TIMEOUT`] in `acquire`.
pub async fn lock_on(url: &str, prefix: &str) -> RedisDistributedLock {
    let config = RedisLockConfig::new(redis_config(url, prefix)).with_wait_timeout(WAIT_TIMEOUT);
    RedisDistributedLock::with_config(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect the lock to {url}: {e}"))
}

/// Two handles and a backend on the Redis at `url`, under a fresh prefix.
pub async fn subject_on(url: &str) -> LockSubject {
    let prefix = format!("rlock-{}", testing::conformance::unique_namespace());
    let lock = lock_on(url, &prefix).await;
    let other = lock_on(url, &prefix).await;
    let backend = RedisStateBackend::new(redis_config(url, &prefix))
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    let backend = Arc::new(backend);
    let cleaner = Arc::clone(&backend);
    LockSubject {
        lock: Arc::new(lock),
        other: Arc::new(other),
        kind: LockKind::Lease,
        backend,
        cleanup: Some(Box::new(move || {
            Box::pin(async move {
                if let Err(e) = cleaner.clear(b"").await {
                    eprintln!("cleanup of the test's keys failed: {e}");
                }
            })
        })),
    }
}

/// A subject on the standalone test Redis (`testing::services::redis`).
pub async fn standalone() -> LockSubject {
    let service = testing::services::redis()
        .await
        .unwrap_or_else(|e| panic!("no Redis for the tests: {e}"));
    subject_on(&service.url()).await
}
