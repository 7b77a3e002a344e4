#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod batch_read;
mod coalesce;
mod coalescer;
mod config;
mod conn;
mod copy;
mod driver;
mod error;
mod export;
mod extras;
mod groups;
mod import;
mod migrate;
mod ops;
mod pager;
mod point;
mod seen;
mod sql;
mod stats;
mod values;

use std::sync::Arc;

pub use backend::migrate;
pub use driver::PostgresStateBackend;
/// Driver errors as [`StateError`]s, for crates with sqlx connections of their own.
pub mod errors {
    pub use crate::error::{
        ServerHint, breaks_connection, client_timeout, convert_with, kind_of_sqlstate,
    };
}
pub use config::PostgresConfig;
pub use config::deploy::{ReadFrom, TargetSessionAttrs};
pub use config::url::{POSTGRES, URL_PARAMS};
pub use config::validate::{MAX_FULL_KEY_LEN, MAX_TABLE_NAME_LEN};
pub use extras::CheckpointInfo;
pub use migrate::{AppliedMigration, MIGRATION_LOCK_KEY};
pub use stats::EXTRA_STATS;

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
/// assert!(registry.schemes().contains(&state_postgres::POSTGRES));
/// ```
pub fn register(registry: &mut state_core::Registry) {
    registry.register(&[POSTGRES], |url| {
        Box::pin(async move {
            let config = PostgresConfig::from_state_url(&url)?;
            let backend = PostgresStateBackend::new(config).await?;
            Ok(Arc::new(backend) as Arc<dyn StateBackend>)
        })
    });
}
