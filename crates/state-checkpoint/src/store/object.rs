//! [`ObjectCheckpointStore`]: checkpoints as objects in any [`ObjectStore`] (S3, GCS, Azure
//! Blob, a local directory, memory), through the `object_store` crate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    PutPayloadMut,
};
use state_core::{BoxStream, ErrorKind, Result, StateError};

use super::memory::{bad_name, missing_data};
use super::{
    CheckpointId, CheckpointStore, Listing, Manifest, Object, classify, data_name, manifest_name,
};

/// A manifest is a few hundred bytes; a larger object is not one, and is not read whole.
const MAX_MANIFEST_LEN: u64 = 64 * 1024;

/// The part size of data uploads: S3's least part is 5 MiB (but for the last one).
const PART_SIZE: usize = 8 * 1024 * 1024;

/// Checkpoints as objects `{prefix}/{id}.data` and `{prefix}/{id}.manifest.json` in an
/// [`ObjectStore`], with the guarantees of [`DirStore`](super::DirStore):
///
/// - **Data** is streamed as one multipart upload, which the store makes visible only when
///   it completes, whole: there is never a torn `{id}.data`. A write that fails is aborted
///   (its parts discarded). One that dies with its process leaves an incomplete upload
///   the store does not list (on S3, expire those with a lifecycle rule,
///   `AbortIncompleteMultipartUpload`).
/// - **The manifest** is written last, with [`PutMode::Create`]: create-if-absent, so of
///   two writers of one id exactly one commits. A store that cannot do it (an S3-like
///   service without conditional writes) makes every commit fail with `Unsupported`,
///   rather than commit without the guarantee.
/// - **Deletes** remove the manifest first; an object already missing counts as deleted.
/// - **Orphans** (data without a manifest) are listed with the object's last-modified
///   time, for the sweep by age.
///
/// Only the objects directly under the prefix are read; others are left alone.
#[derive(Debug, Clone)]
pub struct ObjectCheckpointStore {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// What [`describe`](CheckpointStore::describe) says: a URL without credentials.
    place: Arc<str>,
}

impl ObjectCheckpointStore {
    /// The store of the objects under `prefix` (`""`: the root; `a/b`: the "directory"
    /// `a/b`) in `store`. `place` is how messages name it, such as `s3://bucket/a/b`:
    /// never put a credential in it.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, place: impl Into<String>) -> Self {
        ObjectCheckpointStore {
            store,
            prefix: Path::from(prefix),
            place: place.into().into(),
        }
    }

    /// The object store underneath.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn path_of(&self, name: &str) -> Path {
        self.prefix.clone().join(name)
    }

    /// The name of `location` if it lies directly under the prefix.
    fn name_of<'a>(&self, location: &'a Path) -> Option<&'a str> {
        let mut parts = location.prefix_match(&self.prefix)?;
        let first = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        location.filename().filter(|name| *name == first.as_ref())
    }

    /// Every object directly under the prefix, by name.
    async fn objects(&self) -> Result<Vec<(String, ObjectMeta)>> {
        let prefix = (!self.prefix.is_root()).then_some(&self.prefix);
        let metas: Vec<ObjectMeta> = self
            .store
            .list(prefix)
            .try_collect()
            .await
            .map_err(|e| self.error("list", &self.prefix, e))?;
        Ok(metas
            .into_iter()
            .filter_map(|meta| Some((self.name_of(&meta.location)?.to_string(), meta)))
            .collect())
    }

    /// Deletes `path`; what is already gone is fine.
    async fn remove(&self, path: &Path) -> Result<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.error("delete", path, e)),
        }
    }

    /// Removes the data, any temporary objects and (if `manifest_too`, first) the
    /// manifest of `id`.
    async fn remove_id(&self, id: CheckpointId, manifest_too: bool) -> Result<()> {
        if manifest_too {
            // First: from here on the checkpoint does not exist.
            self.remove(&self.path_of(&manifest_name(id))).await?;
        }
        self.remove(&self.path_of(&data_name(id))).await?;
        // Temporaries are never written here, but a directory store's copied in may hold
        // some: they belong to the id too.
        for (name, meta) in self.objects().await? {
            if classify(&name) == Object::Temp(id) {
                self.remove(&meta.location).await?;
            }
        }
        Ok(())
    }

    async fn read_manifest(&self, meta: &ObjectMeta, id: CheckpointId) -> Result<Option<Manifest>> {
        let shown = self.show(&meta.location);
        if meta.size > MAX_MANIFEST_LEN {
            return Err(StateError::corrupt(format!(
                "checkpoint manifest `{shown}` is larger than {MAX_MANIFEST_LEN} bytes: not a \
                 manifest"
            )));
        }
        let json = match self.store.get(&meta.location).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let json = match json {
            Ok(json) => json,
            // Deleted since it was listed: gone, not invalid.
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("read", &meta.location, e)),
        };
        Manifest::from_json(&shown, Some(id), &json).map(Some)
    }

    /// An object's path as messages show it: `{place}/{name}`.
    fn show(&self, path: &Path) -> String {
        let name = path.filename().unwrap_or_default();
        format!("{}/{name}", self.place.trim_end_matches('/'))
    }

    fn error(&self, action: &str, path: &Path, e: object_store::Error) -> StateError {
        object_error(action, &self.show(path), e)
    }
}

/// Uploads one part of `upload`.
async fn send_part(upload: &mut dyn MultipartUpload, part: PutPayload) -> object_store::Result<()> {
    upload.put_part(part).await
}

/// An `object_store` error as a [`StateError`] naming what failed on which object.
fn object_error(action: &str, shown: &str, e: object_store::Error) -> StateError {
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::NotSupported { .. } | object_store::Error::NotImplemented { .. } => {
            ErrorKind::Unsupported
        }
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => ErrorKind::Config,
        _ => ErrorKind::Backend,
    };
    StateError::new(
        kind,
        format!("checkpoint store: {action} `{shown}` failed: {e}"),
    )
    .with_source(e)
}

#[async_trait::async_trait]
impl CheckpointStore for ObjectCheckpointStore {
    async fn write_data(
        &self,
        id: CheckpointId,
        mut chunks: BoxStream<'_, Result<Bytes>>,
    ) -> Result<u64> {
        let path = self.path_of(&data_name(id));
        let mut upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.error("start the upload of", &path, e))?;
        // One part in memory at a time, sent when full: memory stays at one part.
        let mut part = PutPayloadMut::new();
        let mut written = 0u64;
        let fed: Result<()> = async {
            while let Some(chunk) = state_core::stream::next(&mut chunks).await {
                let chunk = chunk?;
                written += chunk.len() as u64;
                part.push(chunk);
                if part.content_length() >= PART_SIZE {
                    let full = std::mem::take(&mut part).freeze();
                    send_part(upload.as_mut(), full)
                        .await
                        .map_err(|e| self.error("upload", &path, e))?;
                }
            }
            if part.content_length() > 0 {
                send_part(upload.as_mut(), part.freeze())
                    .await
                    .map_err(|e| self.error("upload", &path, e))?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = fed {
            // Nothing becomes visible: the parts are discarded.
            let _ = upload.abort().await;
            return Err(e);
        }
        if let Err(e) = upload.complete().await {
            let _ = upload.abort().await;
            return Err(self.error("complete the upload of", &path, e));
        }
        Ok(written)
    }

    async fn read_data(&self, id: CheckpointId) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = self.path_of(&data_name(id));
        let got = self.store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => StateError::new(
                ErrorKind::NotFound,
                format!("checkpoint {id} has no data in {}", self.place),
            ),
            e => self.error("read", &path, e),
        })?;
        let shown = self.show(&path);
        let chunks = got
            .into_stream()
            .map(move |chunk| chunk.map_err(|e| object_error("read", &shown, e)));
        Ok(Box::pin(chunks))
    }

    async fn commit(&self, manifest: &Manifest) -> Result<bool> {
        let id = manifest.id;
        let json = manifest.to_json()?;
        let data = self.path_of(&data_name(id));
        match self.store.head(&data).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StateError::new(
                    ErrorKind::NotFound,
                    format!(
                        "checkpoint {id} has no data in {}: write it before its manifest",
                        self.place
                    ),
                ));
            }
            Err(e) => return Err(self.error("look up", &data, e)),
        }
        let path = self.path_of(&manifest_name(id));
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(json), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(
                e @ (object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented { .. }),
            ) => Err(StateError::new(
                ErrorKind::Unsupported,
                format!(
                    "{} cannot create an object only if it is absent, which a checkpoint \
                     commit needs so that two writers never both commit one id: use a store \
                     with conditional writes ({e})",
                    self.place
                ),
            )
            .with_source(e)),
            Err(e) => Err(self.error("write the manifest", &path, e)),
        }
    }

    async fn manifests(&self) -> Result<Listing> {
        let objects = self.objects().await?;
        let data: BTreeSet<CheckpointId> = objects
            .iter()
            .filter_map(|(name, _)| match classify(name) {
                Object::Data(id) => Some(id),
                _ => None,
            })
            .collect();
        let mut listing = Listing::default();
        for (name, meta) in objects {
            match classify(&name) {
                Object::Manifest(id) => match self.read_manifest(&meta, id).await {
                    Ok(Some(_)) if !data.contains(&id) => {
                        let shown = self.show(&meta.location);
                        listing.invalid.push((name, missing_data(&shown, id)));
                    }
                    Ok(Some(manifest)) => listing.valid.push(manifest),
                    Ok(None) => {}
                    Err(e) => listing.invalid.push((name, e)),
                },
                Object::BadManifest => {
                    let error = bad_name(&self.show(&meta.location));
                    listing.invalid.push((name, error));
                }
                Object::Data(_) | Object::Temp(_) | Object::Other => {}
            }
        }
        listing.valid.sort_by_key(|m| m.id);
        listing.invalid.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(listing)
    }

    async fn delete(&self, id: CheckpointId) -> Result<()> {
        self.remove_id(id, true).await
    }

    async fn orphans(&self) -> Result<Vec<(CheckpointId, SystemTime)>> {
        let objects = self.objects().await?;
        let committed: BTreeSet<CheckpointId> = objects
            .iter()
            .filter_map(|(name, _)| match classify(name) {
                Object::Manifest(id) => Some(id),
                _ => None,
            })
            .collect();
        let mut orphans: BTreeMap<CheckpointId, SystemTime> = BTreeMap::new();
        for (name, meta) in &objects {
            if let Object::Data(id) | Object::Temp(id) = classify(name)
                && !committed.contains(&id)
            {
                let modified = SystemTime::from(meta.last_modified);
                let newest = orphans.entry(id).or_insert(modified);
                *newest = (*newest).max(modified);
            }
        }
        Ok(orphans.into_iter().collect())
    }

    async fn delete_data(&self, id: CheckpointId) -> Result<()> {
        self.remove_id(id, false).await
    }

    fn describe(&self) -> String {
        self.place.to_string()
    }
}
