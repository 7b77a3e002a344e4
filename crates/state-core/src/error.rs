//! One error type for every backend, classified into kinds that callers can act on.

use std::fmt;

/// What went wrong, in terms a caller can act on.
///
/// Backends convert their driver errors into one of these at the edge and keep the driver
/// error as the [`std::error::Error::source`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The server could not be reached, or the connection broke. Retryable.
    Connection,
    /// The operation did not finish in time. Retryable, unless its outcome is unknown and it
    /// is not idempotent (see [`StateError::outcome_unknown`]).
    Timeout,
    /// The server is temporarily unable to serve (loading, failover, READONLY replica,
    /// too many connections). Retryable.
    Unavailable,
    /// A concurrent writer won: a compare-and-swap or transaction lost a race.
    Conflict,
    /// A write carried a fencing token lower than one that already wrote the key.
    Fenced,
    /// A lock was released or extended by someone who does not hold it.
    NotOwner,
    /// The caller passed something the backend cannot accept (empty key, key or value over
    /// the limit, zero TTL…). The message names the limit.
    InvalidInput,
    /// A URL or configuration is wrong. The message names the field.
    Config,
    /// Stored data (a checkpoint file, a record) failed its format or checksum check.
    Corrupt,
    /// The backend does not support this operation; see [`crate::Capabilities`].
    Unsupported,
    /// The thing asked for (a checkpoint id, a lock) does not exist.
    NotFound,
    /// A write was sent to a server that only serves reads (a PostgreSQL standby opened
    /// read-only). Not retryable: send writes to the primary.
    ReadOnly,
    /// Any other error the server reported. Not retryable.
    Backend,
}

impl ErrorKind {
    /// Whether an operation failing with this kind may succeed if tried again unchanged.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Connection | ErrorKind::Timeout | ErrorKind::Unavailable
        )
    }

    /// Every kind, in declaration order.
    pub const ALL: [ErrorKind; 13] = [
        ErrorKind::Connection,
        ErrorKind::Timeout,
        ErrorKind::Unavailable,
        ErrorKind::Conflict,
        ErrorKind::Fenced,
        ErrorKind::NotOwner,
        ErrorKind::InvalidInput,
        ErrorKind::Config,
        ErrorKind::Corrupt,
        ErrorKind::Unsupported,
        ErrorKind::NotFound,
        ErrorKind::ReadOnly,
        ErrorKind::Backend,
    ];

    /// The kind as one snake_case word, for metric labels and logs (`not_owner`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fenced => "fenced",
            ErrorKind::NotOwner => "not_owner",
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::Config => "config",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::NotFound => "not_found",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::Backend => "backend",
        }
    }

    fn label(self) -> &'static str {
        match self {
            ErrorKind::Connection => "connection error",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unavailable => "server unavailable",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Fenced => "fenced",
            ErrorKind::NotOwner => "not the lock owner",
            ErrorKind::InvalidInput => "invalid input",
            ErrorKind::Config => "configuration error",
            ErrorKind::Corrupt => "corrupt data",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::NotFound => "not found",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::Backend => "backend error",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every operation in this workspace.
///
/// Its `Display` is one sentence: the kind, then what was wrong and what to do. It never
/// contains a password: constructors take messages that the caller built from redacted
/// values, and driver errors are kept only as the source.
#[derive(thiserror::Error)]
#[error("{kind}: {message}")]
pub struct StateError {
    kind: ErrorKind,
    message: String,
    outcome_unknown: bool,
    #[source]
    source: Option<Source>,
}

impl fmt::Debug for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StateError");
        d.field("kind", &self.kind).field("message", &self.message);
        if self.outcome_unknown {
            d.field("outcome_unknown", &true);
        }
        if let Some(source) = &self.source {
            // Display, not Debug: driver Debug output may include connection parameters.
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

/// Shorthand used throughout the workspace.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

impl StateError {
    /// An error of `kind` with a message saying what was wrong and what to do.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        StateError {
            kind,
            message: message.into(),
            outcome_unknown: false,
            source: None,
        }
    }

    /// Attaches the underlying error (kept as `source()`).
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Marks that the request may have reached the server and been applied (a timeout or a
    /// connection lost after sending). A retry loop must not re-send a non-idempotent
    /// operation that failed this way.
    pub fn with_outcome_unknown(mut self) -> Self {
        self.outcome_unknown = true;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the request may have been applied although it failed.
    pub fn outcome_unknown(&self) -> bool {
        self.outcome_unknown
    }

    /// Whether trying again unchanged may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }

    /// Whether the server is away and executed nothing: it is failing over, loading or
    /// refusing connections (`Unavailable`), or no connection to it could be opened
    /// (`Connection` before anything was sent). A retry policy waits for such a server up
    /// to its failover timeout.
    pub fn server_away(&self) -> bool {
        !self.outcome_unknown && matches!(self.kind, ErrorKind::Unavailable | ErrorKind::Connection)
    }

    /// `InvalidInput` with the given message.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }

    /// `Config` with the given message.
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// `Unsupported`: the backend named cannot do `operation`.
    pub fn unsupported(backend: &str, operation: &str) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!("the {backend} backend does not support {operation}"),
        )
    }

    /// `Corrupt` with the given message.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// `Fenced`: a write with `token` lost to a write with `current`.
    pub fn fenced(token: u64, current: u64) -> Self {
        Self::new(
            ErrorKind::Fenced,
            format!(
                "fencing token {token} is older than token {current} that already wrote this key; \
                 the lock was lost, stop writing"
            ),
        )
    }

    /// `NotOwner`: `operation` (release, extend) on lock `name` by a holder that lost it.
    pub fn not_owner(name: &str, operation: &str) -> Self {
        Self::new(
            ErrorKind::NotOwner,
            format!(
                "{operation} of lock `{name}` refused: this guard no longer holds it (its lease \
                 ran out or another holder took it); stop the work it protected"
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_kind_then_message() {
        let e = StateError::invalid_input("key is empty; keys must be at least 1 byte");
        assert_eq!(
            e.to_string(),
            "invalid input: key is empty; keys must be at least 1 byte"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn only_transient_kinds_are_retryable() {
        for kind in [
            ErrorKind::Connection,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
        ] {
            assert!(kind.is_retryable(), "{kind:?}");
        }
        for kind in [
            ErrorKind::Conflict,
            ErrorKind::Fenced,
            ErrorKind::NotOwner,
            ErrorKind::InvalidInput,
            ErrorKind::Config,
            ErrorKind::Corrupt,
            ErrorKind::Unsupported,
            ErrorKind::NotFound,
            ErrorKind::Backend,
        ] {
            assert!(!kind.is_retryable(), "{kind:?}");
        }
    }

    #[test]
    fn source_is_kept() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let e = StateError::new(
            ErrorKind::Connection,
            "lost the connection to 127.0.0.1:6379",
        )
        .with_source(io)
        .with_outcome_unknown();
        assert!(e.outcome_unknown());
        let source = std::error::Error::source(&e).map(|s| s.to_string());
        assert_eq!(source.as_deref(), Some("reset by peer"));
    }
}
