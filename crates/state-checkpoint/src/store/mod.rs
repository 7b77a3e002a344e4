//! [`CheckpointStore`]: where checkpoint files and their manifests are kept, and its
//! implementations ([`DirStore`] on local disk, [`ObjectCheckpointStore`] on any
//! `object_store` (S3, GCS, Azure…), [`PostgresCheckpointStore`] in a table of a
//! PostgreSQL database, [`MemoryStore`] for tests), and [`open_url`].
//!
//! Every store holds two kinds of objects per checkpoint, named after its id: the data
//! (`{id}.data`, the bytes of a [format](crate::format) file) and the manifest
//! (`{id}.manifest.json`). The protocol that makes a checkpoint all-or-nothing:
//!
//! 1. [`write_data`](CheckpointStore::write_data) makes the data durable and invisible
//!    (there is no manifest yet);
//! 2. [`commit`](CheckpointStore::commit) writes the manifest, create-if-absent: from then
//!    on the checkpoint exists, and before it never does;
//! 3. [`delete`](CheckpointStore::delete) removes the manifest first, so a checkpoint being
//!    deleted is never listed with half its data.
//!
//! Data left without a manifest (a crash between 1 and 2, a failed attempt) is an orphan:
//! [`orphans`](CheckpointStore::orphans) lists it with its age so that a sweep can remove
//! it with [`delete_data`](CheckpointStore::delete_data), and storage never grows without
//! bound.

use std::time::SystemTime;

use bytes::Bytes;
use state_core::{BoxStream, Result, StateError};

mod dir;
mod manifest;
mod memory;
mod object;
mod postgres;
mod url;

pub use dir::{DirStore, FILE};
pub use manifest::{CheckpointId, Manifest};
pub use memory::MemoryStore;
pub use object::ObjectCheckpointStore;
pub use postgres::PostgresCheckpointStore;
pub use url::open_url;

/// Every manifest a store holds: the valid ones, and what is wrong with the others.
#[derive(Debug, Default)]
pub struct Listing {
    /// Manifests that parsed, passed their checks and whose data is present, ascending by id.
    pub valid: Vec<Manifest>,
    /// Manifest objects that are not valid, by object name, with why (`Corrupt`, or the
    /// error reading them). Their checkpoints do not exist.
    pub invalid: Vec<(String, StateError)>,
}

impl Listing {
    /// The newest valid checkpoint: the highest fencing token, then the highest sequence.
    pub fn latest(&self) -> Option<&Manifest> {
        self.valid.iter().max_by_key(|m| m.id)
    }
}

/// A place that keeps checkpoints. Implementations: [`DirStore`] (a local directory),
/// [`ObjectCheckpointStore`] (object storage), [`PostgresCheckpointStore`] (a PostgreSQL
/// table) and [`MemoryStore`] (tests). See the [module docs](self) for the protocol.
#[async_trait::async_trait]
pub trait CheckpointStore: Send + Sync + std::fmt::Debug + 'static {
    /// Writes the data of `id` from `chunks` durably and invisibly (no manifest yet);
    /// returns the bytes written. Replaces leftover data of the same id from a failed
    /// attempt. An error from `chunks` is returned and leaves no data for `id` behind
    /// (besides what a crash may leave, which [`orphans`](Self::orphans) reports).
    ///
    /// [`DirStore`]: writes a temporary file, fsyncs it, renames it into place and fsyncs
    /// the directory.
    async fn write_data(
        &self,
        id: CheckpointId,
        chunks: BoxStream<'_, Result<Bytes>>,
    ) -> Result<u64>;

    /// The data of `id` as chunks, streamed (never read whole). `NotFound` if there is
    /// none.
    async fn read_data(&self, id: CheckpointId) -> Result<BoxStream<'static, Result<Bytes>>>;

    /// Commits `manifest` unless one exists for its id: `Ok(true)` when written, `Ok(false)`
    /// when one was already there (of two concurrent commits of one id exactly one wins).
    /// `NotFound` if the id has no data: a manifest never points at nothing.
    async fn commit(&self, manifest: &Manifest) -> Result<bool>;

    /// Every manifest: valid ones parsed, unreadable or invalid ones reported in
    /// [`Listing::invalid`] (one bad manifest never fails the whole listing). A manifest
    /// whose data is missing is invalid.
    async fn manifests(&self) -> Result<Listing>;

    /// Deletes checkpoint `id`: the manifest first, then the data and any temporary
    /// objects of the id. What is already gone counts as deleted.
    async fn delete(&self, id: CheckpointId) -> Result<()>;

    /// Ids that have data, complete or partial (temporary), and no manifest, each with
    /// when it was last written: for the orphan sweep.
    ///
    /// A checkpoint being written right now is among them until it is committed, so a
    /// sweep removes only orphans older than any checkpoint can take to write.
    async fn orphans(&self) -> Result<Vec<(CheckpointId, SystemTime)>>;

    /// Deletes the data of `id` (and its temporary objects), not its manifest. What is
    /// already gone counts as deleted.
    async fn delete_data(&self, id: CheckpointId) -> Result<()>;

    /// Where the store is, for messages (`file:///var/ckpt`, `memory://`); never a secret.
    fn describe(&self) -> String;
}

/// What an object name in a store stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Object {
    /// `{id}.data`
    Data(CheckpointId),
    /// `{id}.manifest.json`
    Manifest(CheckpointId),
    /// `{id}.data.tmp-…` or `{id}.manifest.json.tmp-…`: a write in progress or abandoned.
    Temp(CheckpointId),
    /// `….manifest.json` whose id does not parse: reported as an invalid manifest.
    BadManifest,
    /// Anything else: not ours, left alone.
    Other,
}

pub(crate) const DATA_SUFFIX: &str = ".data";
pub(crate) const MANIFEST_SUFFIX: &str = ".manifest.json";
pub(crate) const TEMP_MARK: &str = ".tmp-";

pub(crate) fn data_name(id: CheckpointId) -> String {
    format!("{id}{DATA_SUFFIX}")
}

pub(crate) fn manifest_name(id: CheckpointId) -> String {
    format!("{id}{MANIFEST_SUFFIX}")
}

/// A fresh temporary name for the object `name`: `{name}.tmp-{16 hex digits}`.
pub(crate) fn temp_name(name: &str) -> String {
    let mut random = [0u8; 8];
    if getrandom::fill(&mut random).is_err() {
        // Uniqueness, not secrecy, is what matters: fall back to the clock.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        random = (nanos as u64).to_le_bytes();
    }
    format!("{name}{TEMP_MARK}{}", hex::encode(random))
}

pub(crate) fn classify(name: &str) -> Object {
    if let Some((base, _)) = name.split_once(TEMP_MARK) {
        let id = base
            .strip_suffix(DATA_SUFFIX)
            .or_else(|| base.strip_suffix(MANIFEST_SUFFIX))
            .and_then(|id| id.parse().ok());
        return id.map_or(Object::Other, Object::Temp);
    }
    if let Some(id) = name.strip_suffix(DATA_SUFFIX) {
        return id.parse().map_or(Object::Other, Object::Data);
    }
    if let Some(id) = name.strip_suffix(MANIFEST_SUFFIX) {
        return id.parse().map_or(Object::BadManifest, Object::Manifest);
    }
    Object::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify_back_to_their_ids() {
        let id = CheckpointId { token: 4, seq: 2 };
        assert_eq!(classify(&data_name(id)), Object::Data(id));
        assert_eq!(classify(&manifest_name(id)), Object::Manifest(id));
        assert_eq!(classify(&temp_name(&data_name(id))), Object::Temp(id));
        assert_eq!(classify(&temp_name(&manifest_name(id))), Object::Temp(id));
        assert_eq!(classify("notes.manifest.json"), Object::BadManifest);
        assert_eq!(classify("1-2.data"), Object::Other);
        assert_eq!(classify("README"), Object::Other);
        assert_ne!(temp_name("a"), temp_name("a"));
    }
}
