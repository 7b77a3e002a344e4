//! `statectl checkpoint …`. With `--store URL`, checkpoints are portable files in a store,
//! on every backend ([`files`]), and `run` is the checkpoint coordinator as a process
//! ([`runner`]); without it, the PostgreSQL backend's server-side checkpoints ([`server`]).

mod files;
mod runner;
mod server;

use std::io::Write;
use std::time::SystemTime;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::CheckpointCommand;
use crate::error::CliError;

/// Runs one checkpoint subcommand against the backend `url` names (`--url`, else the
/// default store).
pub async fn run(
    url: Option<&str>,
    command: &CheckpointCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match store_of(command) {
        Some(store) => files::run(url, store, command, out).await,
        None => server::run(url, command, out).await,
    }
}

/// The `--store` URL the command names, if any.
fn store_of(command: &CheckpointCommand) -> Option<&str> {
    match command {
        CheckpointCommand::Create { store, .. }
        | CheckpointCommand::List { store }
        | CheckpointCommand::Latest { store }
        | CheckpointCommand::Restore { store, .. }
        | CheckpointCommand::Delete { store, .. }
        | CheckpointCommand::Verify { store, .. } => store.store.as_deref(),
        CheckpointCommand::Run { store, .. } => Some(store),
    }
}

/// The time in UTC as RFC 3339, with as many fractional digits as it has.
fn rfc3339(at: SystemTime) -> Result<String, CliError> {
    OffsetDateTime::from(at).format(&Rfc3339).map_err(|e| {
        CliError::Backend(format!(
            "a checkpoint's creation time cannot be written as RFC 3339 ({e})"
        ))
    })
}

/// A warning on stderr, in the shape of every statectl message; the command goes on.
fn warn(message: impl std::fmt::Display) {
    eprintln!("statectl: warning: {message}");
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
