//! Taking a checkpoint (export → encode → data → manifest), choosing its id, and the
//! cleanup after it (retention, orphan sweep).

use std::time::SystemTime;

use state_core::{ErrorKind, Result, StateBackend, StateError};

use super::leader::Mandate;
use super::options::CheckpointOptions;
use super::stats::Cleanup;
use crate::format::encode;
use crate::store::{CheckpointId, CheckpointStore, Listing, Manifest, Object, classify};

/// A committed checkpoint and the size of its data file.
#[derive(Debug)]
pub(crate) struct Taken {
    pub(crate) manifest: Manifest,
    pub(crate) bytes: u64,
}

/// Takes one checkpoint of `backend` into `store` under `mandate`: the export streams
/// through the encoder into the store (one frame in memory at a time), then the manifest
/// is committed, create-if-absent, if the lease is still held.
///
/// Any failure before the commit deletes the data written (only this leader writes
/// under its token); an abort (the future dropped) leaves it as an orphan for the sweep.
pub(crate) async fn take(
    backend: &dyn StateBackend,
    store: &dyn CheckpointStore,
    options: &CheckpointOptions,
    mandate: &Mandate,
) -> Result<Taken> {
    let id = next_id(store, mandate.token).await?;
    let caps = backend.capabilities();
    let (chunks, summary) = encode(backend.export(&options.key_prefix), options.compression);
    let written = store.write_data(id, chunks).await;
    let bytes = match written {
        Ok(bytes) => bytes,
        Err(e) => return Err(discard(store, id, e).await),
    };
    let Some(summary) = summary.get() else {
        let e = StateError::new(
            ErrorKind::Backend,
            format!("checkpoint {id}: the encoder ended without a summary"),
        );
        return Err(discard(store, id, e).await);
    };
    if !mandate.is_valid() {
        let e = StateError::new(
            ErrorKind::NotOwner,
            format!(
                "checkpoint {id} was not committed: the leader's lease (fencing token {}) \
                 was lost while it was taken; the new leader takes the next one",
                mandate.token
            ),
        );
        return Err(discard(store, id, e).await);
    }
    let manifest = Manifest::new(
        id,
        &summary,
        options.compression,
        caps.backend,
        caps.consistent_snapshot,
    )
    .with_key_prefix(&options.key_prefix);
    // A failed commit keeps the data: the manifest may have been written before the error
    // (then the data is the checkpoint's); if not, it is an orphan and swept later.
    if store.commit(&manifest).await? {
        Ok(Taken { manifest, bytes })
    } else {
        // Never overwrite, never delete what another writer may own now.
        Err(StateError::new(
            ErrorKind::Conflict,
            format!(
                "checkpoint {id} was committed by another writer under the same fencing \
                 token: two coordinators write to {} without a lock between them; give \
                 them one lock, or run one",
                store.describe()
            ),
        ))
    }
}

/// Deletes the data of an uncommitted checkpoint, best effort, and returns `cause`.
async fn discard(store: &dyn CheckpointStore, id: CheckpointId, cause: StateError) -> StateError {
    // If this fails too the data stays an orphan, and the sweep takes it.
    let _ = store.delete_data(id).await;
    cause
}

/// The id of the next checkpoint under `token`: 1 + the highest sequence the store holds
/// under it, counting valid and invalid manifests and orphans, so an id is never reused.
/// `Fenced` if the store holds anything under a higher token: this leader is stale.
pub(crate) async fn next_id(store: &dyn CheckpointStore, token: u64) -> Result<CheckpointId> {
    let listing = store.manifests().await?;
    let orphans = store.orphans().await?;
    let ids = known_ids(&listing).chain(orphans.iter().map(|(id, _)| *id));
    let mut seq = 0;
    for id in ids {
        if id.token > token {
            return Err(StateError::new(
                ErrorKind::Fenced,
                format!(
                    "{} holds checkpoint {id}, taken under fencing token {} > this \
                     coordinator's {token}: a newer leader took over, so this one is stale \
                     and takes no checkpoint",
                    store.describe(),
                    id.token
                ),
            ));
        }
        if id.token == token {
            seq = seq.max(id.seq);
        }
    }
    let seq = seq.checked_add(1).ok_or_else(|| {
        StateError::new(
            ErrorKind::Backend,
            format!("no checkpoint sequence is left under fencing token {token}"),
        )
    })?;
    Ok(CheckpointId { token, seq })
}

/// The ids of every manifest, valid or not (an invalid one's id comes from its name).
fn known_ids(listing: &Listing) -> impl Iterator<Item = CheckpointId> + '_ {
    let invalid = listing
        .invalid
        .iter()
        .filter_map(|(name, _)| match classify(name) {
            Object::Manifest(id) => Some(id),
            _ => None,
        });
    listing.valid.iter().map(|m| m.id).chain(invalid)
}

/// Retention, then the orphan sweep: keeps the newest `keep` valid checkpoints (at least
/// one, so never the newest) and deletes the others oldest first, each manifest before
/// its data (the store's `delete`); then deletes orphans older than the grace period.
/// What is already gone counts as deleted.
pub(crate) async fn clean(
    store: &dyn CheckpointStore,
    options: &CheckpointOptions,
) -> Result<Cleanup> {
    let mut cleanup = Cleanup::default();
    let mut valid = store.manifests().await?.valid;
    // Oldest first, so the newest stay (the trait promises this order; not relied on).
    valid.sort_by_key(|m| m.id);
    let excess = valid.len().saturating_sub(options.keep.max(1));
    for manifest in valid.iter().take(excess) {
        store.delete(manifest.id).await?;
        cleanup.deleted.push(manifest.id);
    }
    let now = SystemTime::now();
    for (id, written) in store.orphans().await? {
        // A clock stepped back makes an orphan look new: it waits, it is not swept early.
        let old = now
            .duration_since(written)
            .is_ok_and(|age| age >= options.orphan_grace);
        if old {
            store.delete_data(id).await?;
            cleanup.swept.push(id);
        }
    }
    Ok(cleanup)
}
