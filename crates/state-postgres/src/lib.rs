#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod coalesce;
mod config;
mod conn;
mod error;
mod extras;
mod migrate;
mod pager;
mod sql;
mod stats;

use std::sync::Arc;

pub use backend::{PostgresStateBackend, migrate};
/// Driver errors as [`StateError`]s, for crates with sqlx connections of their own.
pub mod errors {
    pub use crate::error::{
        ServerHint, breaks_connection, client_timeout, convert_with, kind_of_sqlstate,
    };
}
pub use config::{MAX_FULL_KEY_LEN, MAX_TABLE_NAME_LEN, PostgresConfig, URL_PARAMS};
pub use extras::CheckpointInfo;
pub use migrate::{AppliedMigration, MIGRATION_LOCK_KEY};
pub use stats::PostgresStats;

pub use sqlx;
pub use state_core::{
    self, Bytes, Entry, ErrorKind, FencingToken, Health, ImportMode, Result, StateBackend,
    StateError, Ttl,
};

/// Teaches `registry` to open `postgres://` and `postgresql://` URLs with this backend.
///
/// ```
/// let mut registry = state_core::Registry::new();
/// state_postgres::register(&mut registry);
/// assert!(registry.schemes().contains(&state_core::Scheme::Postgres));
/// ```
pub fn register(registry: &mut state_core::Registry) {
    registry.register(&[state_core::Scheme::Postgres], |url| {
        Box::pin(async move {
            let config = PostgresConfig::from_state_url(&url)?;
            let backend = PostgresStateBackend::new(config).await?;
            Ok(Arc::new(backend) as Arc<dyn StateBackend>)
        })
    });
}
