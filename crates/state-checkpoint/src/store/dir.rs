//! [`DirStore`]: checkpoints as files in a local directory, written durably.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::stream;
use state_core::url::{Scheme, StateUrl, UrlShape};
use state_core::{BoxStream, ErrorKind, Result, StateError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::memory::{bad_name, missing_data};
use super::{
    CheckpointId, CheckpointStore, Listing, Manifest, Object, classify, data_name, manifest_name,
    temp_name,
};

/// The `file` scheme: `file:///absolute/dir` opens a [`DirStore`].
pub const FILE: Scheme = Scheme::new("file", UrlShape::Path);

/// How much of a data file one chunk of [`read_data`](CheckpointStore::read_data) holds.
const READ_CHUNK: usize = 256 * 1024;

/// A manifest is a few hundred bytes; a larger "manifest" is not one, and is not read whole.
const MAX_MANIFEST_LEN: u64 = 64 * 1024;

/// Checkpoints as files in one local directory: `{id}.data` and `{id}.manifest.json`,
/// with `….tmp-{random}` files while they are written.
///
/// Durability: data and manifests are written to a temporary file that is fsynced before it
/// is renamed (data) or hard-linked (manifest) into place, and the directory is fsynced
/// after, so a crash leaves the old state or the new one, never a zero-filled or torn file
/// under a final name. A manifest is committed with a hard link, which fails if the name
/// exists: two writers can never both commit one id.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: Arc<PathBuf>,
    /// The durability steps taken, in order, when a test asks for them.
    journal: Option<Arc<Mutex<Vec<String>>>>,
}

impl DirStore {
    /// The store in directory `path`, created (with its parents) if missing. A relative
    /// path is made absolute against the current directory. Blocks while it creates the
    /// directory: call it at start-up.
    pub fn open(path: impl Into<PathBuf>) -> Result<DirStore> {
        let path = path.into();
        let dir = std::path::absolute(&path).map_err(|e| {
            StateError::config(format!(
                "checkpoint directory `{}` cannot be made absolute",
                path.display()
            ))
            .with_source(e)
        })?;
        std::fs::create_dir_all(&dir).map_err(|e| {
            StateError::config(format!(
                "checkpoint directory `{}` cannot be created: {e}",
                dir.display()
            ))
            .with_source(e)
        })?;
        Ok(DirStore {
            dir: Arc::new(dir),
            journal: None,
        })
    }

    /// The store named by a `file:///absolute/dir` URL; `Config` for another scheme, a
    /// relative path or any query parameter.
    pub fn from_url(url: &str) -> Result<DirStore> {
        let parsed = StateUrl::parse(url, &[FILE])?;
        parsed.check_params(&[])?;
        let path = parsed.path().unwrap_or_default();
        if !path.starts_with('/') {
            return Err(StateError::config(format!(
                "the checkpoint store URL `{url}` needs an absolute path: file:///abs/dir"
            )));
        }
        DirStore::open(path)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn note(&self, step: impl FnOnce() -> String) {
        if let Some(journal) = &self.journal {
            journal
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(step());
        }
    }

    /// Makes the directory's entries (a rename, a link, a removal) durable.
    async fn sync_dir(&self) -> Result<()> {
        let dir = Arc::clone(&self.dir);
        tokio::task::spawn_blocking(move || std::fs::File::open(&*dir)?.sync_all())
            .await
            .map_err(|e| {
                StateError::new(ErrorKind::Backend, "the fsync task failed").with_source(e)
            })?
            .map_err(|e| io_error("fsync the directory", &self.dir, e))?;
        self.note(|| "fsync dir".to_string());
        Ok(())
    }

    /// Writes `bytes` to a new temporary file for `name` and fsyncs it; returns its path.
    async fn write_temp(&self, name: &str, bytes: &[u8]) -> Result<PathBuf> {
        let temp = self.path_of(&temp_name(name));
        let result = async {
            let mut file = create_new(&temp).await?;
            file.write_all(bytes)
                .await
                .map_err(|e| io_error("write", &temp, e))?;
            file.sync_all()
                .await
                .map_err(|e| io_error("fsync", &temp, e))
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(e);
        }
        self.note(|| format!("fsync {name} (temp)"));
        Ok(temp)
    }

    /// Every file name in the directory (names that are not UTF-8 are not ours).
    async fn names(&self) -> Result<Vec<String>> {
        let mut read = tokio::fs::read_dir(&*self.dir)
            .await
            .map_err(|e| io_error("list", &self.dir, e))?;
        let mut names = Vec::new();
        while let Some(entry) = read
            .next_entry()
            .await
            .map_err(|e| io_error("list", &self.dir, e))?
        {
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    /// Removes the data, the temporary files and (if `manifest_too`) the manifest of `id`;
    /// what is already gone is fine.
    async fn remove_id(&self, id: CheckpointId, manifest_too: bool) -> Result<()> {
        if manifest_too {
            // First, and durably: from here on the checkpoint does not exist.
            if remove_if_present(&self.path_of(&manifest_name(id))).await? {
                self.sync_dir().await?;
            }
        }
        let mut removed = remove_if_present(&self.path_of(&data_name(id))).await?;
        for name in self.names().await? {
            if classify(&name) == Object::Temp(id) {
                removed |= remove_if_present(&self.path_of(&name)).await?;
            }
        }
        if removed {
            self.sync_dir().await?;
        }
        Ok(())
    }

    async fn read_manifest(&self, name: &str, id: CheckpointId) -> Result<Option<Manifest>> {
        let path = self.path_of(name);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(file) => file,
            // Deleted since it was listed: gone, not invalid.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("open", &path, e)),
        };
        let mut json = Vec::new();
        (&mut file)
            .take(MAX_MANIFEST_LEN + 1)
            .read_to_end(&mut json)
            .await
            .map_err(|e| io_error("read", &path, e))?;
        if json.len() as u64 > MAX_MANIFEST_LEN {
            return Err(StateError::corrupt(format!(
                "checkpoint manifest `{}` is larger than {MAX_MANIFEST_LEN} bytes: not a manifest",
                path.display()
            )));
        }
        Manifest::from_json(&path.display().to_string(), Some(id), &json).map(Some)
    }
}

#[async_trait::async_trait]
impl CheckpointStore for DirStore {
    async fn write_data(
        &self,
        id: CheckpointId,
        mut chunks: BoxStream<'_, Result<Bytes>>,
    ) -> Result<u64> {
        let name = data_name(id);
        let temp = self.path_of(&temp_name(&name));
        let mut file = create_new(&temp).await?;
        let result = async {
            let mut written = 0u64;
            while let Some(chunk) = state_core::stream::next(&mut chunks).await {
                let chunk = chunk?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| io_error("write", &temp, e))?;
                written += chunk.len() as u64;
            }
            file.flush()
                .await
                .map_err(|e| io_error("write", &temp, e))?;
            file.sync_all()
                .await
                .map_err(|e| io_error("fsync", &temp, e))?;
            Ok(written)
        }
        .await;
        drop(file);
        let written = match result {
            Ok(written) => written,
            Err(e) => {
                let _ = tokio::fs::remove_file(&temp).await;
                return Err(e);
            }
        };
        self.note(|| format!("fsync {name} (temp)"));
        let target = self.path_of(&name);
        if let Err(e) = tokio::fs::rename(&temp, &target).await {
            let _ = tokio::fs::remove_file(&temp).await;
            return Err(io_error("rename into", &target, e));
        }
        self.note(|| format!("rename {name}"));
        self.sync_dir().await?;
        Ok(written)
    }

    async fn read_data(&self, id: CheckpointId) -> Result<BoxStream<'static, Result<Bytes>>> {
        let path = self.path_of(&data_name(id));
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StateError::new(
                    ErrorKind::NotFound,
                    format!("checkpoint {id} has no data in {}", self.describe()),
                )
            } else {
                io_error("open", &path, e)
            }
        })?;
        let chunks = stream::unfold(Some((file, path)), |state| async move {
            let (mut file, path) = state?;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            while buf.len() < READ_CHUNK {
                match file.read_buf(&mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Some((Err(io_error("read", &path, e)), None)),
                }
            }
            if buf.is_empty() {
                return None;
            }
            Some((Ok(buf.freeze()), Some((file, path))))
        });
        Ok(Box::pin(chunks))
    }

    async fn commit(&self, manifest: &Manifest) -> Result<bool> {
        let id = manifest.id;
        let json = manifest.to_json()?;
        let data = self.path_of(&data_name(id));
        match tokio::fs::metadata(&data).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::new(
                    ErrorKind::NotFound,
                    format!(
                        "checkpoint {id} has no data in {}: write it before its manifest",
                        self.describe()
                    ),
                ));
            }
            Err(e) => return Err(io_error("stat", &data, e)),
        }
        let name = manifest_name(id);
        let target = self.path_of(&name);
        let temp = self.write_temp(&name, &json).await?;
        // A hard link fails if the name exists, atomically: create-if-absent.
        let linked = tokio::fs::hard_link(&temp, &target).await;
        let _ = tokio::fs::remove_file(&temp).await;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(io_error("link the manifest into", &target, e)),
        }
        self.note(|| format!("link {name}"));
        self.sync_dir().await?;
        Ok(true)
    }

    async fn manifests(&self) -> Result<Listing> {
        let names = self.names().await?;
        let data: BTreeSet<CheckpointId> = names
            .iter()
            .filter_map(|name| match classify(name) {
                Object::Data(id) => Some(id),
                _ => None,
            })
            .collect();
        let mut listing = Listing::default();
        for name in names {
            match classify(&name) {
                Object::Manifest(id) => match self.read_manifest(&name, id).await {
                    Ok(Some(_)) if !data.contains(&id) => {
                        let shown = self.path_of(&name).display().to_string();
                        listing.invalid.push((name, missing_data(&shown, id)));
                    }
                    Ok(Some(manifest)) => listing.valid.push(manifest),
                    Ok(None) => {}
                    Err(e) => listing.invalid.push((name, e)),
                },
                Object::BadManifest => {
                    let error = bad_name(&self.path_of(&name).display().to_string());
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
        let names = self.names().await?;
        let committed: BTreeSet<CheckpointId> = names
            .iter()
            .filter_map(|name| match classify(name) {
                Object::Manifest(id) => Some(id),
                _ => None,
            })
            .collect();
        let mut orphans: BTreeMap<CheckpointId, SystemTime> = BTreeMap::new();
        for name in names {
            let (Object::Data(id) | Object::Temp(id)) = classify(&name) else {
                continue;
            };
            if committed.contains(&id) {
                continue;
            }
            let path = self.path_of(&name);
            let modified = match tokio::fs::metadata(&path).await {
                Ok(meta) => meta.modified().map_err(|e| io_error("stat", &path, e))?,
                // Renamed or removed since it was listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error("stat", &path, e)),
            };
            let newest = orphans.entry(id).or_insert(modified);
            *newest = (*newest).max(modified);
        }
        Ok(orphans.into_iter().collect())
    }

    async fn delete_data(&self, id: CheckpointId) -> Result<()> {
        self.remove_id(id, false).await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

async fn create_new(path: &Path) -> Result<tokio::fs::File> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(|e| io_error("create", path, e))
}

/// Removes `path`; `Ok(false)` if it was already gone.
async fn remove_if_present(path: &Path) -> Result<bool> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("remove", path, e)),
    }
}

fn io_error(action: &str, path: &Path, e: io::Error) -> StateError {
    let kind = if e.kind() == io::ErrorKind::NotFound {
        ErrorKind::NotFound
    } else {
        ErrorKind::Backend
    };
    StateError::new(
        kind,
        format!(
            "checkpoint store: {action} `{}` failed: {e}",
            path.display()
        ),
    )
    .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{Compression, encode};
    use state_core::Entry;

    fn journaled(dir: &Path) -> (DirStore, Arc<Mutex<Vec<String>>>) {
        let journal = Arc::new(Mutex::new(Vec::new()));
        let store = DirStore {
            journal: Some(Arc::clone(&journal)),
            ..DirStore::open(dir).expect("open the store")
        };
        (store, journal)
    }

    /// The failure this guards against: a rename without fsync leaves, after a crash, a
    /// final name over a zero-filled file. Each step must come after the one it relies on.
    #[tokio::test]
    async fn data_and_manifest_are_fsynced_before_they_get_their_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (store, journal) = journaled(tmp.path());
        let id = CheckpointId { token: 1, seq: 1 };
        let entries = state_core::stream::iter(vec![Ok(Entry::new("k", "v"))]);
        let (chunks, summary) = encode(entries, Compression::Lz4);
        store.write_data(id, chunks).await.expect("write");
        let summary = summary.get().expect("summary");
        let manifest = Manifest::new(id, &summary, Compression::Lz4, "memory", true);
        assert!(store.commit(&manifest).await.expect("commit"));
        let steps = journal.lock().map(|j| j.clone()).unwrap_or_default();
        let data = data_name(id);
        let man = manifest_name(id);
        assert_eq!(
            steps,
            vec![
                format!("fsync {data} (temp)"),
                format!("rename {data}"),
                "fsync dir".to_string(),
                format!("fsync {man} (temp)"),
                format!("link {man}"),
                "fsync dir".to_string(),
            ]
        );
    }

    #[test]
    fn urls_open_absolute_directories_only() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ckpt");
        let url = format!("file://{}", dir.display());
        let store = DirStore::from_url(&url).expect("open by url");
        assert_eq!(store.describe(), url);
        assert!(dir.is_dir());
        for bad in [
            "file://relative/dir".to_string(),
            format!("{url}?sync=false"),
            format!("s3://{}", dir.display()),
        ] {
            let err = DirStore::from_url(&bad).err().map(|e| e.kind());
            assert_eq!(err, Some(ErrorKind::Config), "{bad}");
        }
    }
}
