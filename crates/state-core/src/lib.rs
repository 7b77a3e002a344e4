#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod error;
pub mod layer;
mod lock;
pub mod memory;
mod registry;
mod retry;
mod stats;
pub mod stream;
mod types;
pub mod url;

pub use backend::{BoxStream, StateBackend};
pub use bytes::Bytes;
pub use error::{ErrorKind, Result, StateError};
pub use layer::{
    Algorithm, CompressionLayer, Hook, Input, Layer, Layered, LimitsLayer, LockHook, LockLayer,
    LockLayered, LockOp, LockOutcome, Observed, Op, OpKind, Outcome, Stack, Stats, StatsLayer,
    TimeoutLayer,
};
pub use lock::{
    DistributedLock, GuardState, LockGuard, MAX_LOCK_NAME_LEN, check_lock_name, new_owner_token,
};
pub use memory::{MEMORY, MemoryBackend, MemoryBackendBuilder, MemoryStore};
pub use registry::{
    ConnectFuture, Connector, LAYER_PARAMS, LockConnectFuture, LockConnector, LockOptions, Registry,
};
pub use retry::{Idempotency, RetryPolicy};
pub use stats::Gauge;
pub use types::{
    Capabilities, Checkpoint, Entry, FencingToken, Health, ImportMode, Limits, MAX_TTL, Ttl,
    expiry_after, remaining_ttl, ttl_millis,
};
pub use url::{HostPort, Scheme, Secret, StateUrl, UrlShape, parse_duration};
