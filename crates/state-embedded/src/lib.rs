#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backend;
mod config;
mod error;
mod flush;
#[doc(hidden)]
pub mod fuzzing;
mod group;
mod read;
mod record;
mod snapshot;
mod store;
mod streams;
mod tables;
mod task;
mod write;

use std::sync::Arc;

pub use backend::RedbBackend;
pub use config::{Durability, REDB, RedbConfig, URL_PARAMS, streaming_url};
pub use group::WriteStats;
pub use redb;
pub use state_core::{
    Bytes, Capabilities, Checkpoint, Entry, ErrorKind, FencingToken, ImportMode, Limits, Registry,
    Result, StateBackend, StateError, StateUrl, Ttl,
};
pub use store::SWEEP_BATCH;

/// Registers `redb:PATH` URLs with `registry`, so that `registry.connect("redb:…")` opens a
/// [`RedbBackend`]. The file is opened on the blocking pool (a crashed file is repaired on
/// open, which reads all of it).
pub fn register(registry: &mut Registry) {
    registry.register(&[REDB], |url| {
        Box::pin(async move {
            let backend = task::spawn(move || RedbBackend::from_url(&url)).await?;
            Ok(Arc::new(backend) as Arc<dyn StateBackend>)
        })
    });
}
