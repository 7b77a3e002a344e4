//! How a failure reaches the shell: one sentence on stderr and an exit code a script can
//! branch on.

use std::io;

use state_core::{ErrorKind, StateError};

use crate::escape::escape;

/// A failed command.
#[derive(Debug)]
pub enum CliError {
    /// `get`/`ttl` of a key, or `checkpoint restore`/`delete` of an id, that does not exist
    /// (exit 1).
    Missing(String),
    /// A bad URL, option or input: fix the command line (exit 2).
    Usage(String),
    /// The backend failed: unreachable server, I/O error, locked or corrupt file (exit 3).
    Backend(String),
    /// Ctrl-C (exit 130, as shells report SIGINT).
    Interrupted(String),
    /// `lock run` could not get the lock within its wait (exit 75, EX_TEMPFAIL: try again
    /// later).
    LockBusy(String),
    /// `lock run`'s command ended with this status, passed through without a message.
    Child(u8),
    /// stdout was closed by the reader (`statectl scan | head`): stop quietly (exit 0).
    StdoutClosed,
}

impl CliError {
    /// The error for a key that does not exist.
    pub fn missing(key: &[u8]) -> Self {
        CliError::Missing(format!("key `{}` does not exist", escape(key)))
    }

    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::StdoutClosed => 0,
            CliError::Missing(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Backend(_) => 3,
            CliError::Interrupted(_) => 130,
            CliError::LockBusy(_) => 75,
            CliError::Child(code) => *code,
        }
    }

    /// The sentence for stderr, if any.
    pub fn message(&self) -> Option<&str> {
        match self {
            CliError::Missing(m)
            | CliError::Usage(m)
            | CliError::Backend(m)
            | CliError::Interrupted(m)
            | CliError::LockBusy(m) => Some(m),
            CliError::StdoutClosed | CliError::Child(_) => None,
        }
    }
}

impl From<StateError> for CliError {
    fn from(err: StateError) -> Self {
        let message = err.to_string();
        match err.kind() {
            ErrorKind::InvalidInput | ErrorKind::Config | ErrorKind::Unsupported => {
                CliError::Usage(message)
            }
            ErrorKind::NotFound => CliError::Missing(message),
            _ => CliError::Backend(message),
        }
    }
}

impl From<io::Error> for CliError {
    fn from(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::BrokenPipe {
            CliError::StdoutClosed
        } else {
            CliError::Backend(format!("could not write the output ({err})"))
        }
    }
}
