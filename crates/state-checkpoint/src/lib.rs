#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod coordinator;
pub mod format;
pub mod store;

pub use coordinator::{
    CheckpointCoordinator, CheckpointOptions, CheckpointStats, Cleanup, NO_LOCK_TOKEN, Restored,
    describe_metrics,
};
pub use format::{
    Compression, FORMAT_VERSION, Summary, SummaryHandle, decode, decode_with_summary, encode,
};
/// The `object_store` crate the [`ObjectCheckpointStore`] is built on, for its
/// [`ObjectStore`](object_store::ObjectStore) implementations and builders.
pub use object_store;
pub use store::{
    CheckpointId, CheckpointStore, DirStore, Listing, Manifest, MemoryStore, ObjectCheckpointStore,
    PostgresCheckpointStore, open_url,
};
