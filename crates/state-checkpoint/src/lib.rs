#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod coordinator;
pub mod format;
pub mod store;

pub use coordinator::{
    CheckpointCoordinator, CheckpointOptions, CheckpointStats, Cleanup, NO_LOCK_TOKEN, Restored,
};
pub use format::{
    Compression, FORMAT_VERSION, Summary, SummaryHandle, decode, decode_with_summary, encode,
};
pub use store::{CheckpointId, CheckpointStore, DirStore, Listing, Manifest, MemoryStore};
