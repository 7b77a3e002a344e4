//! [`MemoryStore`]: checkpoints in process memory, for tests.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use state_core::{BoxStream, ErrorKind, Result, StateError};

use super::{
    CheckpointId, CheckpointStore, Listing, Manifest, Object, classify, data_name, manifest_name,
    temp_name,
};

/// Checkpoints in process memory, named as [`DirStore`](super::DirStore) names its files,
/// so that the same tests run on both. Clones share the same contents.
///
/// A write in progress is visible as a temporary object, as in a directory, so orphan
/// handling can be tested here too. Not durable: for tests and examples.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    objects: Arc<Mutex<BTreeMap<String, Stored>>>,
}

#[derive(Debug, Clone)]
struct Stored {
    chunks: Vec<Bytes>,
    modified: SystemTime,
}

impl Stored {
    fn new(chunks: Vec<Bytes>) -> Self {
        Stored {
            chunks,
            modified: SystemTime::now(),
        }
    }

    fn concat(&self) -> Vec<u8> {
        self.chunks.concat()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Stores `bytes` as the object `name` (`{id}.data`, `{id}.manifest.json`…), replacing
    /// it: for tests that damage or plant objects, as they would write a file of a
    /// [`DirStore`](super::DirStore).
    pub fn put_object(&self, name: &str, bytes: impl Into<Bytes>) {
        self.lock()
            .insert(name.to_string(), Stored::new(vec![bytes.into()]));
    }

    /// The bytes of the object `name`, if there is one.
    pub fn object(&self, name: &str) -> Option<Bytes> {
        self.lock()
            .get(name)
            .map(|stored| Bytes::from(stored.concat()))
    }

    /// Every object's name, in order.
    pub fn object_names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Stored>> {
        // A panic elsewhere while holding the lock leaves the map whole: every change is
        // one insert or remove.
        self.objects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remove_id(&self, id: CheckpointId, manifest_too: bool) {
        let mut objects = self.lock();
        objects.retain(|name, _| match classify(name) {
            Object::Data(of) | Object::Temp(of) => of != id,
            Object::Manifest(of) => !(manifest_too && of == id),
            Object::BadManifest | Object::Other => true,
        });
    }
}

#[async_trait::async_trait]
impl CheckpointStore for MemoryStore {
    async fn write_data(
        &self,
        id: CheckpointId,
        mut chunks: BoxStream<'_, Result<Bytes>>,
    ) -> Result<u64> {
        let temp = temp_name(&data_name(id));
        self.lock().insert(temp.clone(), Stored::new(Vec::new()));
        let mut written = 0u64;
        while let Some(chunk) = state_core::stream::next(&mut chunks).await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    self.lock().remove(&temp);
                    return Err(e);
                }
            };
            written += chunk.len() as u64;
            let mut objects = self.lock();
            let Some(stored) = objects.get_mut(&temp) else {
                return Err(StateError::new(
                    ErrorKind::NotFound,
                    format!("the data of checkpoint {id} was deleted while it was written"),
                ));
            };
            stored.chunks.push(chunk);
            stored.modified = SystemTime::now();
        }
        let mut objects = self.lock();
        let stored = objects.remove(&temp).ok_or_else(|| {
            StateError::new(
                ErrorKind::NotFound,
                format!("the data of checkpoint {id} was deleted while it was written"),
            )
        })?;
        objects.insert(data_name(id), stored);
        Ok(written)
    }

    async fn read_data(&self, id: CheckpointId) -> Result<BoxStream<'static, Result<Bytes>>> {
        let chunks = self
            .lock()
            .get(&data_name(id))
            .map(|stored| stored.chunks.clone())
            .ok_or_else(|| no_data(id))?;
        Ok(state_core::stream::iter(chunks.into_iter().map(Ok)))
    }

    async fn commit(&self, manifest: &Manifest) -> Result<bool> {
        let json = manifest.to_json()?;
        let mut objects = self.lock();
        if !objects.contains_key(&data_name(manifest.id)) {
            return Err(no_data(manifest.id));
        }
        let name = manifest_name(manifest.id);
        if objects.contains_key(&name) {
            return Ok(false);
        }
        objects.insert(name, Stored::new(vec![Bytes::from(json)]));
        Ok(true)
    }

    async fn manifests(&self) -> Result<Listing> {
        let objects = self.lock().clone();
        let mut listing = Listing::default();
        for (name, stored) in &objects {
            match classify(name) {
                Object::Manifest(id) => {
                    let checked = Manifest::from_json(name, Some(id), &stored.concat()).and_then(
                        |manifest| {
                            if objects.contains_key(&data_name(id)) {
                                Ok(manifest)
                            } else {
                                Err(missing_data(name, id))
                            }
                        },
                    );
                    match checked {
                        Ok(manifest) => listing.valid.push(manifest),
                        Err(e) => listing.invalid.push((name.clone(), e)),
                    }
                }
                Object::BadManifest => listing.invalid.push((name.clone(), bad_name(name))),
                Object::Data(_) | Object::Temp(_) | Object::Other => {}
            }
        }
        listing.valid.sort_by_key(|m| m.id);
        Ok(listing)
    }

    async fn delete(&self, id: CheckpointId) -> Result<()> {
        // One lock: the manifest and the data go together here.
        self.remove_id(id, true);
        Ok(())
    }

    async fn orphans(&self) -> Result<Vec<(CheckpointId, SystemTime)>> {
        let objects = self.lock();
        let committed: BTreeSet<CheckpointId> = objects
            .keys()
            .filter_map(|name| match classify(name) {
                Object::Manifest(id) => Some(id),
                _ => None,
            })
            .collect();
        let mut orphans: BTreeMap<CheckpointId, SystemTime> = BTreeMap::new();
        for (name, stored) in objects.iter() {
            if let Object::Data(id) | Object::Temp(id) = classify(name)
                && !committed.contains(&id)
            {
                let newest = orphans.entry(id).or_insert(stored.modified);
                *newest = (*newest).max(stored.modified);
            }
        }
        Ok(orphans.into_iter().collect())
    }

    async fn delete_data(&self, id: CheckpointId) -> Result<()> {
        self.remove_id(id, false);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory://".to_string()
    }
}

fn no_data(id: CheckpointId) -> StateError {
    StateError::new(
        ErrorKind::NotFound,
        format!("checkpoint {id} has no data in memory://"),
    )
}

/// The error for a manifest whose data object is missing (shared with the dir store).
pub(crate) fn missing_data(name: &str, id: CheckpointId) -> StateError {
    StateError::corrupt(format!(
        "checkpoint manifest `{name}`: the data of checkpoint {id} is missing, so the \
         checkpoint is incomplete"
    ))
}

/// The error for a `….manifest.json` whose name is not a checkpoint id.
pub(crate) fn bad_name(name: &str) -> StateError {
    StateError::corrupt(format!(
        "checkpoint manifest `{name}`: the name is not TOKEN-SEQ.manifest.json with a \
         canonical checkpoint id"
    ))
}
