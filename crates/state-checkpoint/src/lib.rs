#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod format;
pub mod store;

pub use format::{
    Compression, FORMAT_VERSION, Summary, SummaryHandle, decode, decode_with_summary, encode,
};
pub use store::{CheckpointId, CheckpointStore, DirStore, Listing, Manifest, MemoryStore};
