//! `statectl checkpoint create|list|latest|restore ID|restore latest|delete ID` without
//! `--store`: the server-side checkpoints of the PostgreSQL backend.
//!
//! Only PostgreSQL keeps checkpoints inside the server, where a later process can find them
//! by id; every other backend's `checkpoint()` is an in-memory value that dies with the
//! process, so without `--store` the command refuses them instead of pretending.

use std::io::Write;

use state_core::ErrorKind;
use state_postgres::{CheckpointInfo, POSTGRES, PostgresStateBackend};

use super::rfc3339;
use crate::backends::{self, DEFAULT_URL};
use crate::cli::CheckpointCommand;
use crate::error::CliError;
use crate::escape::escape;

/// What a subcommand does with server-side checkpoints.
enum Action {
    Create,
    List,
    Latest,
    Restore(i64),
    RestoreLatest,
    Delete(i64),
}

/// Runs one checkpoint subcommand against the PostgreSQL backend that `url` names.
pub async fn run(
    url: Option<&str>,
    command: &CheckpointCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // The default store is embedded and refused here: no directory is created for it.
    let url = backends::registry().parse(url.unwrap_or(DEFAULT_URL))?;
    if url.scheme() != POSTGRES {
        return Err(CliError::Usage(format!(
            "checkpoints of a {} URL need --store URL (a file:///dir to keep them in): without \
             --store, checkpoints stored by statectl need a postgres:// URL (they live in the \
             server); the library's checkpoint() and export() work on every backend",
            url.scheme()
        )));
    }
    let action = match command {
        CheckpointCommand::Create { leader, .. } if leader.lock_url.is_some() => {
            return Err(CliError::Usage(
                "--lock-url elects the writer of a --store; server-side checkpoints need no \
                 lock: drop --lock-url or give --store URL"
                    .into(),
            ));
        }
        CheckpointCommand::Create { .. } => Action::Create,
        CheckpointCommand::List { .. } => Action::List,
        CheckpointCommand::Latest { .. } => Action::Latest,
        CheckpointCommand::Restore { id, .. } if id == "latest" => Action::RestoreLatest,
        CheckpointCommand::Restore { id, .. } => Action::Restore(parse_id(id)?),
        CheckpointCommand::Delete { id, .. } => Action::Delete(parse_id(id)?),
        CheckpointCommand::Verify { .. } => {
            return Err(CliError::Usage(
                "checkpoint verify checks a checkpoint's file, and PostgreSQL's server-side \
                 checkpoints have none: give the --store URL the checkpoint was taken into"
                    .into(),
            ));
        }
        // clap requires --store for `run`; this is never reached.
        CheckpointCommand::Run { .. } => {
            return Err(CliError::Usage("checkpoint run needs --store URL".into()));
        }
    };
    // Opened through the composition root like every other command; the server-side
    // checkpoints are extras of the PostgreSQL type, outside the shared trait.
    let opened = backends::registry().connect_url(url.clone()).await?;
    let Some(backend) = opened
        .as_any()
        .and_then(|b| b.downcast_ref::<PostgresStateBackend>())
    else {
        return Err(CliError::Backend(format!(
            "{} did not open a PostgreSQL backend",
            url.redacted()
        )));
    };
    let result = match action {
        Action::Create => match backend.create_checkpoint().await {
            Ok(id) => writeln!(out, "{id}").map_err(CliError::from),
            Err(e) => Err(e.into()),
        },
        Action::List => list(backend, out).await,
        Action::Latest => latest(backend, out).await,
        Action::Restore(id) => restore(backend, id).await,
        Action::RestoreLatest => restore_latest(backend, out).await,
        Action::Delete(id) => match backend.delete_checkpoint(id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(missing(id)),
            Err(e) => Err(e.into()),
        },
    };
    // Ends the sessions politely so the server does not log dropped connections.
    backend.close().await;
    result
}

async fn restore(backend: &PostgresStateBackend, id: i64) -> Result<(), CliError> {
    backend
        .restore_checkpoint(id)
        .await
        .map(drop)
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => missing(id),
            _ => e.into(),
        })
}

/// `restore latest`: the checkpoint with the highest id; prints it.
async fn restore_latest(
    backend: &PostgresStateBackend,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let newest = backend
        .list_checkpoints()
        .await?
        .iter()
        .map(|info| info.checkpoint_id)
        .max();
    let Some(id) = newest else {
        return Err(no_checkpoint());
    };
    restore(backend, id).await?;
    writeln!(out, "{id}")?;
    Ok(())
}

/// One line per checkpoint, oldest first: `id<TAB>created_at<TAB>rows<TAB>bytes`.
async fn list(backend: &PostgresStateBackend, out: &mut dyn Write) -> Result<(), CliError> {
    for info in backend.list_checkpoints().await? {
        print_row(&info, out)?;
    }
    Ok(())
}

/// `latest`: the `list` row of the checkpoint with the highest id (the one `restore
/// latest` restores); `Missing` if there is none.
async fn latest(backend: &PostgresStateBackend, out: &mut dyn Write) -> Result<(), CliError> {
    let listed = backend.list_checkpoints().await?;
    match listed.iter().max_by_key(|info| info.checkpoint_id) {
        Some(info) => print_row(info, out),
        None => Err(no_checkpoint()),
    }
}

fn print_row(info: &CheckpointInfo, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(
        out,
        "{}\t{}\t{}\t{}",
        info.checkpoint_id,
        rfc3339(info.created_at)?,
        info.row_count,
        info.data_size
    )?;
    Ok(())
}

fn no_checkpoint() -> CliError {
    CliError::Missing(
        "no checkpoint exists under this URL's key prefix; `statectl checkpoint create` \
         takes one"
            .into(),
    )
}

fn parse_id(text: &str) -> Result<i64, CliError> {
    text.parse().map_err(|_| {
        CliError::Usage(format!(
            "`{}` is not a checkpoint id: server-side checkpoints are numbered (`statectl \
             checkpoint list` shows the ids), and `restore latest` restores the newest",
            escape(text.as_bytes())
        ))
    })
}

fn missing(id: i64) -> CliError {
    CliError::Missing(format!(
        "checkpoint {id} does not exist under this URL's key prefix; \
         `statectl checkpoint list` shows the ids"
    ))
}
