//! [`connect`]: a lock picked by URL, for tools such as statectl.

use std::sync::Arc;
use std::time::Duration;

use state_core::{DistributedLock, ErrorKind, Result, Scheme, StateError, StateUrl};

use crate::MemoryLock;

/// Opens the lock service that `url` names, with `acquire` waiting up to `wait`:
/// `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://` (feature `redis`),
/// `postgres://` with `lock_mode=session|lease` (feature `postgres`), or `memory://` (one
/// process only). An embedded `redb:` store is refused: its file belongs to one process.
pub async fn connect(url: &str, wait: Duration) -> Result<Arc<dyn DistributedLock>> {
    match StateUrl::parse(url)?.scheme() {
        Scheme::Memory => Ok(Arc::new(MemoryLock::with_wait_timeout(wait))),
        #[cfg(feature = "redis")]
        Scheme::Redis | Scheme::Rediss | Scheme::RedisSentinel | Scheme::RedisCluster => {
            let config = crate::RedisLockConfig::from_url(url)?.with_wait_timeout(wait);
            Ok(Arc::new(
                crate::RedisDistributedLock::with_config(config).await?,
            ))
        }
        #[cfg(feature = "postgres")]
        Scheme::Postgres => {
            let config = crate::PostgresLockConfig::from_url(url)?.with_wait_timeout(wait);
            Ok(Arc::new(
                crate::PostgresDistributedLock::with_config(config).await?,
            ))
        }
        other => Err(StateError::new(
            ErrorKind::Unsupported,
            format!(
                "a {other} URL cannot hold locks shared by processes: use a redis:// or \
                 postgres:// URL (memory:// holds locks within one process)"
            ),
        )),
    }
}
