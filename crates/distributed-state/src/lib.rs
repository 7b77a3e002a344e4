#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::sync::Arc;

pub use state_core::*;

/// The embedded on-disk backend (feature `redb`).
#[cfg(feature = "redb")]
pub use state_embedded as embedded;
/// Distributed locks, the watchdog and leader election (feature `lock`).
#[cfg(feature = "lock")]
pub use state_lock as lock;
/// Metrics, tracing and the Prometheus exporter (feature `metrics`).
#[cfg(feature = "metrics")]
pub use state_metrics as metrics;
/// The PostgreSQL backend (feature `postgres`).
#[cfg(feature = "postgres")]
pub use state_postgres as postgres;
/// The Redis backend (feature `redis`).
#[cfg(feature = "redis")]
pub use state_redis as redis;

/// A registry holding every backend and lock service this build's features enable.
pub fn registry() -> Registry {
    let mut registry = Registry::new(); // memory://
    #[cfg(feature = "redb")]
    state_embedded::register(&mut registry);
    #[cfg(feature = "redis")]
    state_redis::register(&mut registry);
    #[cfg(feature = "postgres")]
    state_postgres::register(&mut registry);
    #[cfg(feature = "lock")]
    state_lock::register(&mut registry);
    #[cfg(feature = "metrics")]
    state_metrics::register(&mut registry);
    registry
}

/// Opens the backend `url` names, in the layers it names ([`LAYER_PARAMS`]).
pub async fn connect(url: &str) -> Result<Arc<dyn StateBackend>> {
    registry().connect(url).await
}

/// Opens the lock service `url` names (feature `lock`).
pub async fn connect_lock(url: &str) -> Result<Arc<dyn DistributedLock>> {
    registry().connect_lock(url).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_url_opens_a_backend_in_its_layers_and_a_lock() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| StateError::config(e.to_string()))?;
        let path = dir.path().join("state.redb");
        let url = format!("redb:{}?stats=true&deadline=5s", path.display());
        let backend = connect(&url).await?;
        backend.put(b"k", b"v").await?;
        assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v"[..]));
        assert_eq!(backend.stats().await.operations, 2);
        assert!(
            backend
                .as_any()
                .is_some_and(|b| b.is::<embedded::RedbBackend>())
        );
        drop(backend);

        let lock = connect_lock("memory://?wait_timeout=1s").await?;
        let guard = lock
            .try_acquire("job", std::time::Duration::from_secs(5))
            .await?;
        assert!(guard.is_some());
        let refused = connect_lock(&url).await.err().map(|e| e.kind());
        assert_eq!(
            refused,
            Some(ErrorKind::Unsupported),
            "a redb file is one process's"
        );
        Ok(())
    }
}
