//! Restoring a checkpoint into any backend: the file is checked whole before anything of
//! it can be seen in the target.
//!
//! Every entry is checked against what the target accepts (keys under the coordinator's
//! prefix, sizes within its limits, metadata only where it keeps metadata), and at the end
//! of the data every frame checksum, the footer's hash and counts, and the summary against
//! the manifest. Any problem is an error of the entry stream given to `import`.
//!
//! - Where the target's `atomic_restore` holds, that one pass is the import: an error in
//!   its stream, up to its last item, leaves the old state (the import commits only after
//!   the stream ended), so the file is read once.
//! - Otherwise pass 1 reads the data to the end without touching the target, so a damaged
//!   file fails the restore before the first write; pass 2 reads it again into the
//!   import, with the same checks (a file changed between the passes fails the import).
//!
//! - Whole namespace (empty prefix): `import(Replace)`: every key of the namespace, and
//!   its fencing marks, are replaced.
//! - Under a prefix: `Replace` would remove the keys outside the prefix too, so the
//!   restore is one `import(Merge)` of a tombstone (an entry expired long ago, which
//!   removes its key: the conformance suite's `import_drops_entries_already_expired`) for
//!   every key now under the prefix, followed by the checkpoint's entries (a later entry
//!   for a key wins). Keys outside the prefix are kept; fencing marks are kept.
//!
//! Both are one `import`: all or nothing for readers where the target's
//! `atomic_restore` holds.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream;
use state_core::{
    BoxStream, Capabilities, Entry, ErrorKind, ImportMode, Result, StateBackend, StateError,
};

use crate::format::{SummaryHandle, decode_with_summary};
use crate::store::{CheckpointId, CheckpointStore, Listing, Manifest, data_name, manifest_name};

/// The manifest of checkpoint `id`: `Corrupt` (naming the manifest) if it is invalid,
/// `NotFound` if there is none.
pub(crate) fn find(listing: Listing, id: CheckpointId, store: &str) -> Result<Manifest> {
    if let Some(manifest) = listing.valid.into_iter().find(|m| m.id == id) {
        return Ok(manifest);
    }
    let name = manifest_name(id);
    if let Some((_, e)) = listing.invalid.into_iter().find(|(n, _)| *n == name) {
        return Err(e);
    }
    Err(StateError::new(
        ErrorKind::NotFound,
        format!("checkpoint {id} does not exist in {store}"),
    ))
}

/// The data file of `id`, as errors name it: `file:///var/ckpt/{id}.data`, `memory://{id}.data`.
pub(crate) fn file_name(store: &dyn CheckpointStore, id: CheckpointId) -> String {
    let place = store.describe();
    if place.ends_with('/') {
        format!("{place}{}", data_name(id))
    } else {
        format!("{place}/{}", data_name(id))
    }
}

/// Pass 1 alone: reads the whole data file of `manifest` and checks it (frames, footer,
/// the file against its manifest, every entry against `backend` and `prefix`) without
/// writing anything.
pub(crate) async fn verify_one(
    backend: &dyn StateBackend,
    store: &dyn CheckpointStore,
    manifest: &Manifest,
    prefix: &[u8],
) -> Result<()> {
    same_prefix(store, manifest, prefix)?;
    let rules = Rules::new(backend, store, manifest, prefix);
    let mut entries = checked(store, &rules).await?;
    while let Some(entry) = state_core::stream::next(&mut entries).await {
        entry?;
    }
    Ok(())
}

/// Imports the checkpoint of `manifest` into `backend`, restricted to `prefix`, verifying
/// it first unless the backend restores atomically; returns the live entries written.
pub(crate) async fn restore_one(
    backend: &dyn StateBackend,
    store: &dyn CheckpointStore,
    manifest: &Manifest,
    prefix: &[u8],
) -> Result<u64> {
    if backend.capabilities().atomic_restore {
        // The import's own stream carries every check, and its error undoes the import.
        same_prefix(store, manifest, prefix)?;
    } else {
        // Pass 1: the whole file, checked; nothing is written.
        verify_one(backend, store, manifest, prefix).await?;
    }
    let rules = Rules::new(backend, store, manifest, prefix);

    // The checks, into one import.
    let now = SystemTime::now();
    let live: BoxStream<'_, Result<Entry>> = Box::pin(stream::unfold(
        checked(store, &rules).await?,
        move |mut entries| async move {
            loop {
                match state_core::stream::next(&mut entries).await? {
                    Ok(entry) if entry.is_expired_at(now) => continue,
                    item => return Some((item, entries)),
                }
            }
        },
    ));
    if prefix.is_empty() {
        backend.import(live, ImportMode::Replace).await
    } else {
        let tombstones = Box::pin(stream::unfold(backend.scan(prefix), |mut keys| async {
            let item = state_core::stream::next(&mut keys).await?;
            Some((item.map(|entry| tombstone(entry.key)), keys))
        }));
        let both = Box::pin(futures_util::StreamExt::chain(tombstones, live));
        backend.import(both, ImportMode::Merge).await
    }
}

/// `InvalidInput` if the manifest records a key prefix other than `prefix`: restoring a
/// checkpoint of `orders:eu:` with the prefix `orders:` would remove every other
/// `orders:` key, and one of the whole namespace under a prefix would fail half-way
/// through the file. A manifest written before prefixes were recorded passes: its
/// entries are checked one by one against `prefix` instead.
fn same_prefix(store: &dyn CheckpointStore, manifest: &Manifest, prefix: &[u8]) -> Result<()> {
    match manifest.key_prefix.as_deref() {
        Some(taken) if taken != prefix => Err(StateError::invalid_input(format!(
            "checkpoint {} in {} was taken under the key prefix {}, and this coordinator              restores the key prefix {}: restore it with a coordinator whose key_prefix is {}",
            manifest.id,
            store.describe(),
            show(taken),
            show(prefix),
            show(taken)
        ))),
        _ => Ok(()),
    }
}

/// An entry that removes `key` when imported: expired at the epoch.
fn tombstone(key: Bytes) -> Entry {
    Entry::new(key, Bytes::new()).with_expiry(UNIX_EPOCH)
}

/// What every entry of a file to restore must satisfy.
struct Rules<'a> {
    name: String,
    prefix: &'a [u8],
    caps: Capabilities,
    manifest: &'a Manifest,
}

impl<'a> Rules<'a> {
    /// The rules for restoring `manifest`'s checkpoint from `store` into `backend`.
    fn new(
        backend: &dyn StateBackend,
        store: &dyn CheckpointStore,
        manifest: &'a Manifest,
        prefix: &'a [u8],
    ) -> Rules<'a> {
        Rules {
            name: file_name(store, manifest.id),
            prefix,
            caps: backend.capabilities(),
            manifest,
        }
    }

    fn check(&self, entry: &Entry) -> Result<()> {
        if !self.prefix.is_empty() && !entry.key.starts_with(self.prefix) {
            return Err(StateError::invalid_input(format!(
                "checkpoint file `{}` holds the key {} outside the key prefix {} this \
                 coordinator restores: it was taken with another prefix; restore it with \
                 that prefix",
                self.name,
                show(&entry.key),
                show(self.prefix)
            )));
        }
        if entry.metadata.is_some() && !self.caps.metadata {
            return Err(StateError::new(
                ErrorKind::Unsupported,
                format!(
                    "checkpoint file `{}` holds entries with metadata (key {}), which the {} \
                     backend does not store; restore it into a backend with metadata",
                    self.name,
                    show(&entry.key),
                    self.caps.backend
                ),
            ));
        }
        self.caps
            .limits()
            .check_entry(&entry.key, &entry.value)
            .map_err(|e| {
                StateError::invalid_input(format!(
                    "checkpoint file `{}`, key {}: the {} backend refuses it: {}",
                    self.name,
                    show(&entry.key),
                    self.caps.backend,
                    e.message()
                ))
            })
    }

    /// `Corrupt` unless the decoded file is the one the manifest describes.
    fn check_summary(&self, handle: &SummaryHandle) -> Result<()> {
        let id = self.manifest.id;
        match handle.get() {
            Some(summary) if self.manifest.matches(&summary) => Ok(()),
            Some(summary) => Err(StateError::corrupt(format!(
                "checkpoint file `{}` does not match its manifest `{}`: the file holds {} \
                 entries, {} bytes, sha256 {}; the manifest says {} entries, {} bytes, \
                 sha256 {}",
                self.name,
                manifest_name(id),
                summary.entries,
                summary.data_bytes,
                summary.sha256_hex(),
                self.manifest.entries,
                self.manifest.data_bytes,
                self.manifest.data_sha256
            ))),
            None => Err(StateError::corrupt(format!(
                "checkpoint file `{}` ended without its footer",
                self.name
            ))),
        }
    }
}

/// The entries of the checkpoint, each checked against `rules`, and an error at the end
/// if the file does not match its manifest. Any error ends the stream.
async fn checked<'a>(
    store: &dyn CheckpointStore,
    rules: &'a Rules<'a>,
) -> Result<BoxStream<'a, Result<Entry>>> {
    let chunks = store.read_data(rules.manifest.id).await?;
    let (entries, summary) = decode_with_summary(&rules.name, chunks);
    let state = Some((entries, summary));
    Ok(Box::pin(stream::unfold(state, move |state| async move {
        let (mut entries, summary) = state?;
        match state_core::stream::next(&mut entries).await {
            Some(Ok(entry)) => match rules.check(&entry) {
                Ok(()) => Some((Ok(entry), Some((entries, summary)))),
                Err(e) => Some((Err(e), None)),
            },
            Some(Err(e)) => Some((Err(e), None)),
            None => rules.check_summary(&summary).err().map(|e| (Err(e), None)),
        }
    })))
}

/// Bytes as an escaped byte string (`b"a\xff"`), short, for messages.
pub(crate) fn show(bytes: &[u8]) -> String {
    let shown: String = bytes
        .iter()
        .take(64)
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    let more = if bytes.len() > 64 { "…" } else { "" };
    format!("b\"{shown}{more}\"")
}
