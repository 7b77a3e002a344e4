//! The factory the backend suite and the model-based properties build backends with, and
//! the namespaces that keep their keys apart.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use state_core::StateBackend;

/// The future a backend factory returns.
pub type BackendFuture = Pin<Box<dyn Future<Output = Arc<dyn StateBackend>> + Send>>;

/// Builds a backend whose key prefix is the given namespace, over shared storage.
pub type Factory = Arc<dyn Fn(String) -> BackendFuture + Send + Sync>;

/// Wraps an `async fn(String) -> Arc<dyn StateBackend>` (or any such closure) as a
/// [`Factory`].
pub fn factory<F, Fut>(f: F) -> Factory
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Arc<dyn StateBackend>> + Send + 'static,
{
    Arc::new(move |namespace| Box::pin(f(namespace)))
}

/// A fresh namespace such as `t:5f0c2a9e41b7d3c8:`, unique within and across processes.
pub fn unique_namespace() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; time, pid and a counter separate calls.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    format!("t:{:016x}:", hasher.finish())
}
