//! [`register`]: this crate's lock services in the composition root, and [`connect`], a lock
//! picked by URL through it.

use std::sync::Arc;
use std::time::Duration;

use state_core::{
    DistributedLock, LockConnectFuture, LockOptions, MEMORY, Registry, Result, StateError,
    StateUrl, parse_duration,
};

use crate::MemoryLock;

/// Registers the lock services of this build in `registry`: `memory://` (one process
/// only), `redis://`, `rediss://`, `redis+sentinel://`, `redis+cluster://` (feature
/// `redis`) and `postgres://` with `lock_mode=session|lease` (feature `postgres`).
///
/// Each reads its own URL parameters. How long `acquire` waits: a
/// [`LockOptions::wait_timeout`] given in code, else the URL's `wait_timeout=` for
/// `memory://` and `postgres://` (in a Redis URL that parameter is `WAIT`'s), else 30 s.
///
/// ```
/// # tokio_test_block_on(async {
/// let mut registry = state_core::Registry::new();
/// state_lock::register(&mut registry);
/// let lock = registry.connect_lock("memory://").await?;
/// let guard = lock.try_acquire("job", std::time::Duration::from_secs(5)).await?;
/// assert!(guard.is_some());
/// # Ok::<(), state_core::StateError>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
pub fn register(registry: &mut Registry) {
    registry.register_locks(&[MEMORY], |url, options| {
        boxed(async move {
            url.check_params(&["wait_timeout"])?;
            let lock = match options.wait_timeout.or(wait_timeout_param(&url)?) {
                Some(wait) => MemoryLock::with_wait_timeout(wait),
                None => MemoryLock::new(),
            };
            Ok(Arc::new(lock) as Arc<dyn DistributedLock>)
        })
    });
    #[cfg(feature = "redis")]
    registry.register_locks(&state_redis::SCHEMES, |url, options| {
        boxed(async move {
            let mut config = crate::RedisLockConfig::from_state_url(&url)?;
            if let Some(wait) = options.wait_timeout {
                config = config.with_wait_timeout(wait);
            }
            let lock = crate::RedisDistributedLock::with_config(config).await?;
            Ok(Arc::new(lock) as Arc<dyn DistributedLock>)
        })
    });
    #[cfg(feature = "postgres")]
    registry.register_locks(&[state_postgres::POSTGRES], |url, options| {
        boxed(async move {
            let mut config = crate::PostgresLockConfig::from_state_url(&url)?;
            if let Some(wait) = options.wait_timeout {
                config = config.with_wait_timeout(wait);
            }
            let lock = crate::PostgresDistributedLock::with_config(config).await?;
            Ok(Arc::new(lock) as Arc<dyn DistributedLock>)
        })
    });
}

fn boxed(
    future: impl Future<Output = Result<Arc<dyn DistributedLock>>> + Send + 'static,
) -> LockConnectFuture {
    Box::pin(future)
}

/// Opens the lock service that `url` names, with `acquire` waiting up to `wait`, through a
/// registry holding this crate's services ([`register`]). An embedded `redb:` store is
/// refused: its file belongs to one process.
pub async fn connect(url: &str, wait: Duration) -> Result<Arc<dyn DistributedLock>> {
    let mut registry = Registry::new();
    register(&mut registry);
    let options = LockOptions::default().with_wait_timeout(wait);
    let url = registry.parse(url)?;
    registry.connect_lock_url(url, options).await
}

/// The `wait_timeout=` parameter: how long `acquire` waits for a busy lock.
pub(crate) fn wait_timeout_param(url: &StateUrl) -> Result<Option<Duration>> {
    url.param("wait_timeout")
        .map(|raw| {
            parse_duration(raw).map_err(|e| {
                StateError::config(format!("parameter `wait_timeout`: {}", e.message()))
            })
        })
        .transpose()
}
