//! `statectl checkpoint create|list|restore ID|delete ID`: the server-side checkpoints of
//! the PostgreSQL backend.
//!
//! Only PostgreSQL keeps checkpoints inside the server, where a later process can find them
//! by id; every other backend's `checkpoint()` is an in-memory value that dies with the
//! process, so the command refuses them instead of pretending.

use std::io::Write;
use std::time::SystemTime;

use state_core::{ErrorKind, StateUrl};
use state_postgres::{POSTGRES, PostgresStateBackend};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::CheckpointCommand;
use crate::error::CliError;

/// Runs one checkpoint subcommand against the PostgreSQL backend that `url` names.
pub async fn run(
    url: &StateUrl,
    command: &CheckpointCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if url.scheme() != POSTGRES {
        return Err(CliError::Usage(format!(
            "checkpoints stored by statectl need a postgres:// URL (they live in the server), \
             not a {} URL; the library's checkpoint() and export() work on every backend",
            url.scheme()
        )));
    }
    // Opened through the composition root like every other command; the server-side
    // checkpoints are extras of the PostgreSQL type, outside the shared trait.
    let opened = crate::backends::registry().connect_url(url.clone()).await?;
    let Some(backend) = opened
        .as_any()
        .and_then(|b| b.downcast_ref::<PostgresStateBackend>())
    else {
        return Err(CliError::Backend(format!(
            "{} did not open a PostgreSQL backend",
            url.redacted()
        )));
    };
    let result = match *command {
        CheckpointCommand::Create => {
            let id = backend.create_checkpoint().await?;
            writeln!(out, "{id}").map_err(CliError::from)
        }
        CheckpointCommand::List => list(backend, out).await,
        CheckpointCommand::Restore { id } => backend
            .restore_checkpoint(id)
            .await
            .map(drop)
            .map_err(|e| match e.kind() {
                ErrorKind::NotFound => missing(id),
                _ => e.into(),
            }),
        CheckpointCommand::Delete { id } => match backend.delete_checkpoint(id).await? {
            true => Ok(()),
            false => Err(missing(id)),
        },
    };
    // Ends the sessions politely so the server does not log dropped connections.
    backend.close().await;
    result
}

/// One line per checkpoint, oldest first: `id<TAB>created_at<TAB>rows<TAB>bytes`.
async fn list(backend: &PostgresStateBackend, out: &mut dyn Write) -> Result<(), CliError> {
    for info in backend.list_checkpoints().await? {
        writeln!(
            out,
            "{}\t{}\t{}\t{}",
            info.checkpoint_id,
            rfc3339(info.created_at)?,
            info.row_count,
            info.data_size
        )?;
    }
    Ok(())
}

/// The time in UTC as RFC 3339, with as many fractional digits as it has.
fn rfc3339(at: SystemTime) -> Result<String, CliError> {
    OffsetDateTime::from(at).format(&Rfc3339).map_err(|e| {
        CliError::Backend(format!(
            "a checkpoint's creation time cannot be written as RFC 3339 ({e})"
        ))
    })
}

fn missing(id: i64) -> CliError {
    CliError::Missing(format!(
        "checkpoint {id} does not exist under this URL's key prefix; \
         `statectl checkpoint list` shows the ids"
    ))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::rfc3339;

    #[test]
    fn times_are_rfc3339_utc() {
        let at = UNIX_EPOCH + Duration::from_micros(1_764_322_245_123_456);
        assert_eq!(
            rfc3339(at).ok().as_deref(),
            Some("2025-11-28T09:30:45.123456Z")
        );
        let whole = UNIX_EPOCH + Duration::from_secs(86_400);
        assert_eq!(rfc3339(whole).ok().as_deref(), Some("1970-01-02T00:00:00Z"));
    }
}
