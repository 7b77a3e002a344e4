//! Distributed locks with fencing tokens, a watchdog that keeps a lease alive, and leader
//! election, over any [`DistributedLock`].
//!
//! | type | where the lock lives | lease (TTL) | fencing token |
//! |---|---|---|---|
//! | [`MemoryLock`] | this process | yes | a counter in the lock |
//! | `RedisDistributedLock` (feature `redis`) | a key per lock, `SET NX PX` semantics by Lua | yes, server-side | a per-lock counter next to the key, seeded from the server clock |
//! | `PostgresDistributedLock`, `Session` mode (feature `postgres`) | a session advisory lock on one dedicated connection | no: held as long as the connection | a sequence |
//! | `PostgresDistributedLock`, `Lease` mode | a row of a lock table, expiry by the database clock | yes, server-side | a sequence |
//!
//! Every guard carries a [`FencingToken`] that increases strictly
//! across holders of a name. A lease can always be lost (a pause longer than the TTL, a
//! partition, a failover): pass the token to
//! [`StateBackend::put_fenced`](state_core::StateBackend::put_fenced) so that the storage
//! rejects a former holder's late writes.

#![deny(missing_docs)]
#![forbid(unsafe_code)]
// The lock futures nest the Redis and PostgreSQL backends' futures (and their boxed retry
// loops) deeply enough that proving them `Send` exceeds the default limit of 128.
#![recursion_limit = "256"]

mod connect;
#[cfg(feature = "redis")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod hot_path;
mod leader;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod wait;
mod watchdog;

#[cfg(feature = "postgres")]
pub(crate) use connect::wait_timeout_param;
pub use connect::{connect, register};
pub use leader::{LeaderElector, Leadership, Term};
pub use memory::MemoryLock;
#[cfg(feature = "postgres")]
pub use postgres::{LockMode, PostgresDistributedLock, PostgresLockConfig, advisory_key};
#[cfg(feature = "redis")]
pub use redis::{RedisDistributedLock, RedisLockConfig};
/// The Lua scripts [`RedisDistributedLock`] runs by `EVALSHA`: for audits, ACL reviews, and
/// `SCRIPT LOAD` ahead of time. KEYS and ARGV are described on each.
#[cfg(feature = "redis")]
pub mod redis_scripts {
    pub use crate::redis::{ACQUIRE_LUA as ACQUIRE, EXTEND_LUA as EXTEND, RELEASE_LUA as RELEASE};
}
/// The SQL [`PostgresDistributedLock`] runs in each mode, with `$n` placeholders described on
/// each: for audits, grants, and timing the same statements with other clients.
#[cfg(feature = "postgres")]
pub mod postgres_statements {
    pub use crate::postgres::statements::{
        SESSION_HELD, SESSION_IS_LOCKED, SESSION_RELEASE, lease_acquire, lease_extend,
        lease_is_locked, lease_release, session_acquire,
    };
}
pub use watchdog::{Lease, WatchedGuard};

pub use state_core::{
    DistributedLock, ErrorKind, FencingToken, LockGuard, Result, StateError, new_owner_token,
};
