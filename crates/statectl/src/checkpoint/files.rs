//! `statectl checkpoint … --store URL`: checkpoints as portable files (state-checkpoint's
//! format and stores), taken from and restored into any backend through its coordinator.
//!
//! `list`, `latest` and `delete` read and change the store alone; `create`, `restore` and `verify`
//! open the `--url` backend too; `run` is [`runner`].

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use state_checkpoint::{
    CheckpointCoordinator, CheckpointId, CheckpointOptions, CheckpointStore, Manifest,
};
use state_core::{DistributedLock, ErrorKind, LockOptions, parse_duration};

use super::{rfc3339, runner, warn};
use crate::backends;
use crate::cli::{CheckpointCommand, LeaderArgs};
use crate::error::CliError;
use crate::escape::escape;

/// Runs one checkpoint subcommand with the store at `store_url`.
pub async fn run(
    url: Option<&str>,
    store_url: &str,
    command: &CheckpointCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let store = open_store(store_url)?;
    match command {
        CheckpointCommand::List { .. } => list(store.as_ref(), out).await,
        CheckpointCommand::Latest { .. } => latest(store.as_ref(), out).await,
        CheckpointCommand::Delete { id, .. } => delete(store.as_ref(), parse_id(id)?).await,
        CheckpointCommand::Create { leader, .. } => {
            // One-off checkpoints delete nothing: retention is `run --keep`'s.
            let options = leader
                .apply(CheckpointOptions::new().with_keep(usize::MAX))
                .await?;
            let leading = options.lock().is_some();
            with_coordinator(url, store, options, async |c| {
                let manifest = c
                    .checkpoint_now()
                    .await
                    .map_err(|e| create_error(e, leading))?;
                writeln!(out, "{}", manifest.id)?;
                Ok(())
            })
            .await
        }
        CheckpointCommand::Restore { id, .. } => {
            let latest = id == "latest";
            let id = if latest { None } else { Some(parse_id(id)?) };
            with_coordinator(url, store, CheckpointOptions::new(), async |c| match id {
                Some(id) => {
                    let restored = c.restore(id).await?;
                    warn_unrecorded(&restored.manifest);
                    Ok(())
                }
                None => {
                    let restored = c.restore_latest().await?;
                    warn_unrecorded(&restored.manifest);
                    for (skipped, why) in &restored.skipped {
                        warn(format_args!(
                            "checkpoint {skipped} was skipped, it cannot be restored ({why})"
                        ));
                    }
                    writeln!(out, "{}", restored.id)?;
                    Ok(())
                }
            })
            .await
        }
        CheckpointCommand::Verify { id, .. } => {
            let id = parse_id(id)?;
            with_coordinator(url, store, CheckpointOptions::new(), async |c| {
                let manifest = c.verify(id).await?;
                writeln!(out, "{}\tok\t{}", manifest.id, prefix_of(&manifest))?;
                Ok(())
            })
            .await
        }
        CheckpointCommand::Run {
            interval,
            keep,
            min_pause,
            leader,
            ..
        } => {
            let options = CheckpointOptions::new()
                .with_interval(duration("--interval", interval)?)
                .with_min_pause(duration("--min-pause", min_pause)?)
                .with_keep(*keep);
            let options = leader.apply(options).await?;
            runner::run(url, store, options, out).await
        }
    }
}

/// The store a `--store` URL names: `file:///absolute/dir`, a PostgreSQL table
/// (`postgres://…?schema=S&table=T`), or object storage
/// (`s3://bucket/dir`, `gs://…`, `az://…`) where state-checkpoint was built with its
/// `aws`, `gcp` or `azure` feature ([`state_checkpoint::open_url`]).
pub fn open_store(url: &str) -> Result<Arc<dyn CheckpointStore>, CliError> {
    if !url.contains("://") {
        return Err(CliError::Usage(format!(
            "--store `{}` is not a URL; keep checkpoints in a directory with \
             --store file:///absolute/dir, or in PostgreSQL with --store postgres://…",
            escape(url.as_bytes())
        )));
    }
    // Its messages repeat only the scheme of a URL that may carry a credential.
    state_checkpoint::open_url(url)
        .map_err(|e| CliError::Usage(format!("--store: {}", e.message())))
}

/// How `verify` and `restore` show the key prefix a manifest records: escaped, or
/// `unrecorded` for a manifest written before prefixes were recorded.
fn prefix_of(manifest: &Manifest) -> String {
    match &manifest.key_prefix {
        Some(prefix) => format!("key_prefix={}", escape(prefix)),
        None => "key_prefix=unrecorded".to_string(),
    }
}

/// A warning for a restored checkpoint whose manifest does not say what it covers.
fn warn_unrecorded(manifest: &Manifest) {
    if manifest.key_prefix.is_none() {
        warn(format_args!(
            "checkpoint {}'s manifest does not record its key prefix (it was written by an \
             older version); it was restored as the whole namespace",
            manifest.id
        ));
    }
}

impl LeaderArgs {
    /// `options` with the lock service, name and lease given; without `--lock-url`,
    /// unchanged (one writer per store).
    pub async fn apply(&self, options: CheckpointOptions) -> Result<CheckpointOptions, CliError> {
        let Some(url) = &self.lock_url else {
            return Ok(options);
        };
        let ttl = duration("--lock-ttl", &self.lock_ttl)?;
        let registry = backends::registry();
        let parsed = registry.parse(url)?;
        if parsed.scheme() == state_core::MEMORY {
            return Err(CliError::Usage(
                "--lock-url memory:// holds locks within one process, so it elects nobody; \
                 use a redis:// or postgres:// lock, or no --lock-url for one writer"
                    .into(),
            ));
        }
        let lock: Arc<dyn DistributedLock> = registry
            .connect_lock_url(parsed, LockOptions::default())
            .await?;
        Ok(options
            .with_lock(lock)
            .with_lock_name(self.lock_name.clone())
            .with_lock_ttl(ttl))
    }
}

/// Opens the `--url` backend, runs `work` with a coordinator of it into `store`, then
/// shuts the coordinator down (releasing any lock) and closes the backend, whatever
/// `work` returned.
async fn with_coordinator<F>(
    url: Option<&str>,
    store: Arc<dyn CheckpointStore>,
    options: CheckpointOptions,
    work: F,
) -> Result<(), CliError>
where
    F: AsyncFnOnce(&CheckpointCoordinator) -> Result<(), CliError>,
{
    let backend = backends::open(url).await?;
    let result = match CheckpointCoordinator::new(Arc::clone(&backend), store, options) {
        Ok(coordinator) => {
            let result = work(&coordinator).await;
            let shutdown = coordinator.shutdown().await;
            result.and(shutdown.map_err(CliError::from))
        }
        Err(e) => Err(e.into()),
    };
    backends::close(&backend).await;
    result
}

/// One line per checkpoint, oldest first: `id<TAB>created_at<TAB>rows<TAB>bytes`; a
/// damaged manifest is a warning (its checkpoint does not exist).
async fn list(store: &dyn CheckpointStore, out: &mut dyn Write) -> Result<(), CliError> {
    let listing = store.manifests().await?;
    for (_, why) in &listing.invalid {
        warn(format_args!("{why}; that checkpoint is not listed"));
    }
    let mut valid: Vec<&Manifest> = listing.valid.iter().collect();
    valid.sort_by_key(|m| m.id);
    for manifest in valid {
        print_row(manifest, out)?;
    }
    Ok(())
}

/// `latest`: the newest valid checkpoint's `list` row; `Missing` if the store has none.
async fn latest(store: &dyn CheckpointStore, out: &mut dyn Write) -> Result<(), CliError> {
    let listing = store.manifests().await?;
    for (_, why) in &listing.invalid {
        warn(format_args!("{why}; that checkpoint is passed over"));
    }
    match listing.latest() {
        Some(manifest) => print_row(manifest, out),
        None => Err(CliError::Missing(format!(
            "{} holds no valid checkpoint; `statectl checkpoint create --store …` takes one",
            store.describe()
        ))),
    }
}

/// One `list` row: `id<TAB>created_at<TAB>rows<TAB>bytes`.
fn print_row(manifest: &Manifest, out: &mut dyn Write) -> Result<(), CliError> {
    let created = UNIX_EPOCH + Duration::from_millis(manifest.created_at_ms);
    writeln!(
        out,
        "{}\t{}\t{}\t{}",
        manifest.id,
        rfc3339(created)?,
        manifest.entries,
        manifest.data_bytes
    )?;
    Ok(())
}

/// Deletes checkpoint `id`, a damaged one too; `Missing` if the store has no manifest of
/// it (data alone is not a checkpoint: the sweep of `run` removes it).
async fn delete(store: &dyn CheckpointStore, id: CheckpointId) -> Result<(), CliError> {
    let listing = store.manifests().await?;
    let manifest = format!("{id}.manifest.json");
    let exists = listing.valid.iter().any(|m| m.id == id)
        || listing.invalid.iter().any(|(name, _)| *name == manifest);
    if !exists {
        return Err(CliError::Missing(format!(
            "checkpoint {id} does not exist in {}; `statectl checkpoint list --store …` \
             shows the ids",
            store.describe()
        )));
    }
    store.delete(id).await?;
    Ok(())
}

/// A checkpoint id as `list` prints it (`00000000000000000007-0000000003`), or short
/// (`7-3`).
fn parse_id(text: &str) -> Result<CheckpointId, CliError> {
    let parsed = text.split_once('-').and_then(|(token, seq)| {
        let number = |part: &str| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
        };
        Some(CheckpointId {
            token: number(token)?,
            seq: number(seq)?,
        })
    });
    parsed.ok_or_else(|| {
        CliError::Usage(format!(
            "`{}` is not a checkpoint id: ids are TOKEN-SEQ as `checkpoint list` prints them \
             (00000000000000000007-0000000003, or 7-3), and `restore latest` restores the \
             newest",
            escape(text.as_bytes())
        ))
    })
}

/// A `--interval`, `--min-pause` or `--lock-ttl` value.
fn duration(flag: &str, text: &str) -> Result<Duration, CliError> {
    parse_duration(text).map_err(|e| CliError::Usage(format!("invalid {flag}: {}", e.message())))
}

/// `create`'s failures that mean "not now": another leader holds the lock (exit 75), or
/// the store is written under a lock this command was not given.
fn create_error(e: state_core::StateError, leading: bool) -> CliError {
    match e.kind() {
        ErrorKind::NotOwner if leading => CliError::LockBusy(e.to_string()),
        ErrorKind::Fenced if !leading => CliError::Backend(format!(
            "{e}; a coordinator with a lock writes to this store: give create its --lock-url \
             (and --lock-name)"
        )),
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use state_checkpoint::CheckpointId;

    use super::{open_store, parse_id};
    use crate::error::CliError;

    #[test]
    fn ids_are_read_long_or_short() {
        let id = CheckpointId { token: 7, seq: 3 };
        assert_eq!(parse_id("00000000000000000007-0000000003").ok(), Some(id));
        assert_eq!(parse_id("7-3").ok(), Some(id));
        for bad in [
            "", "7", "7-", "-3", "a-3", "7-3-1", "7 -3", "+7-3", "latest",
        ] {
            assert!(
                matches!(parse_id(bad), Err(CliError::Usage(_))),
                "`{bad}` parsed"
            );
        }
    }

    #[test]
    fn object_stores_are_refused_without_repeating_credentials() {
        for url in [
            "s3://key:secret@bucket/dir",
            "gs://secret@b",
            "https://secret@h/x",
        ] {
            match open_store(url) {
                Err(CliError::Usage(m)) => assert!(!m.contains("secret"), "{m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        // Without the feature, s3:// names it; with it, the URL opens a store.
        match open_store("s3://bucket/dir") {
            Err(CliError::Usage(m)) => assert!(m.contains("state-checkpoint/aws"), "{m}"),
            Ok(store) => assert_eq!(store.describe(), "s3://bucket/dir"),
            other => panic!("s3://bucket/dir: {other:?}"),
        }
        for url in ["/tmp/dir", "ftp://h/x", "memory://"] {
            assert!(matches!(open_store(url), Err(CliError::Usage(_))), "{url}");
        }
    }
}
