//! [`PostgresDistributedLock`]: locks kept by PostgreSQL, in [`LockMode::Session`] or
//! [`LockMode::Lease`]; the two are compared side by side on the type.
//!
//! The files, from the top down: `lock` (the lock type, dispatching to a mode), `session`
//! and `lease` (the two modes), `config` (the builder and URL parsing), and what the modes
//! share below them: `sql` (setup and literals), `errors`, `guard`, `pooler` (the probe),
//! `key` and `statements`.

mod config;
mod errors;
mod guard;
mod key;
mod lease;
mod lock;
mod pooler;
mod session;
mod sql;
pub(crate) mod statements;
#[cfg(test)]
mod test_server;

pub use config::{LockMode, PostgresLockConfig};
pub use key::advisory_key;
pub use lock::PostgresDistributedLock;
