#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
// The async state machines of batched, retried operations nest deeply.
#![recursion_limit = "256"]

mod backend;
mod config;
mod conn;
mod driver;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod keys;
mod ops;
mod reply;
mod restore;
mod scan;
mod scripts;

use std::sync::Arc;

pub use backend::NodeInfo;
pub use config::builder::RedisConfigBuilder;
pub use config::scheme::{REDIS, REDIS_CLUSTER, REDIS_SENTINEL, REDISS, SCHEMES};
pub use config::url::URL_PARAMS;
pub use config::{ReadFrom, RedisConfig, Topology, WaitReplicas};
pub use driver::RedisStateBackend;
pub use scripts::Script;

/// The driver, re-exported so that users need no separate dependency on it.
pub use redis;
pub use state_core::{
    Capabilities, Checkpoint, Entry, ErrorKind, FencingToken, Health, Idempotency, ImportMode,
    Result, StateBackend, StateError, Ttl,
};

/// Registers this backend for `redis://`, `rediss://`, `redis+sentinel://` and
/// `redis+cluster://` URLs.
///
/// ```
/// let mut registry = state_core::Registry::new();
/// state_redis::register(&mut registry);
/// assert!(registry.schemes().contains(&state_redis::REDIS_CLUSTER));
/// ```
pub fn register(registry: &mut state_core::Registry) {
    registry.register(&SCHEMES, |url| {
        Box::pin(async move {
            let config = RedisConfig::from_state_url(&url)?;
            let backend = RedisStateBackend::new(config).await?;
            Ok(Arc::new(backend) as Arc<dyn StateBackend>)
        })
    });
}
