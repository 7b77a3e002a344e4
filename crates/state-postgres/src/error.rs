//! Driver errors turned into [`StateError`]s at the edge, classified by SQLSTATE.

use state_core::{ErrorKind, StateError};

/// What a caller adds to the classification of a server error: for the SQLSTATE `code` and
/// the server's `message`, another kind and a hint (`"; do this"`) appended to the message,
/// or `None` to keep the general ones.
pub type ServerHint = fn(code: &str, message: &str) -> Option<(ErrorKind, &'static str)>;

/// Whether the connection that produced `err` must be thrown away: the byte stream is in an
/// unknown state or the server is closing the session.
pub fn breaks_connection(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Converts a driver error from doing `what` ("get", "open a connection to 127.0.0.1:5432"…).
///
/// `sent` says whether the request may have reached the server: a broken connection after
/// sending leaves the outcome unknown, and a retry loop must not re-send a non-idempotent
/// operation then.
pub(crate) fn convert(err: sqlx::Error, what: &str, sent: bool) -> StateError {
    convert_with(err, what, sent, backend_hint)
}

/// The backend's own hint: its tables are missing.
fn backend_hint(code: &str, _message: &str) -> Option<(ErrorKind, &'static str)> {
    matches!(code, "42P01" | "3F000" | "42883").then_some((
        kind_of_sqlstate(code),
        "; the tables are missing: let the backend migrate (the default) or run \
         `cargo xtask migrate --url URL`",
    ))
}

/// The backend's own error conversion, for crates that run sqlx connections of their own
/// beside it (such as state-lock): the same classification by SQLSTATE and the same
/// messages, with `hint` consulted first for server errors.
pub fn convert_with(err: sqlx::Error, what: &str, sent: bool, hint: ServerHint) -> StateError {
    let (kind, message) = match &err {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let general = match code.as_str() {
                "57014" => "; the statement ran past statement_timeout",
                c if c.starts_with("28") => "; check the user name and password",
                _ => "",
            };
            let (kind, hint) =
                hint(&code, db.message()).unwrap_or((kind_of_sqlstate(&code), general));
            (
                kind,
                format!(
                    "{what} failed: the server said \"{}\" (SQLSTATE {code}){hint}",
                    db.message()
                ),
            )
        }
        // rustls reports a refused certificate as InvalidData while connecting: retrying
        // cannot help, the configuration must change.
        sqlx::Error::Io(io) if !sent && io.kind() == std::io::ErrorKind::InvalidData => (
            ErrorKind::Config,
            format!(
                "{what} failed: the TLS handshake was refused ({io}); check sslmode, \
                 sslrootcert and the server's certificate"
            ),
        ),
        sqlx::Error::Io(io) => (
            ErrorKind::Connection,
            format!("{what} failed: the connection broke ({io}); it will be reopened"),
        ),
        sqlx::Error::Tls(tls) => (
            ErrorKind::Config,
            format!(
                "{what} failed: the TLS handshake was refused ({tls}); check sslmode, \
                 sslrootcert and the server's certificate"
            ),
        ),
        sqlx::Error::Protocol(p) => (
            ErrorKind::Connection,
            format!("{what} failed: the server sent something unexpected ({p})"),
        ),
        sqlx::Error::WorkerCrashed => (
            ErrorKind::Connection,
            format!("{what} failed: the connection's worker stopped"),
        ),
        sqlx::Error::PoolTimedOut => (
            ErrorKind::Timeout,
            format!("{what} failed: no connection was free in time"),
        ),
        sqlx::Error::PoolClosed => (
            ErrorKind::Unavailable,
            format!("{what} failed: the connection set is closed"),
        ),
        sqlx::Error::Configuration(c) => (
            ErrorKind::Config,
            format!("{what} failed: bad connection options ({c})"),
        ),
        sqlx::Error::Encode(e) => (
            ErrorKind::InvalidInput,
            format!("{what} failed: a value could not be encoded ({e})"),
        ),
        other => (ErrorKind::Backend, format!("{what} failed: {other}")),
    };
    let outcome_unknown = sent
        && matches!(
            err,
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
        );
    if outcome_unknown {
        let message = format!("{message}; the statement may have been applied");
        StateError::new(kind, message)
            .with_source(err)
            .with_outcome_unknown()
    } else {
        StateError::new(kind, message).with_source(err)
    }
}

/// The kind of a server error, by SQLSTATE class.
pub fn kind_of_sqlstate(code: &str) -> ErrorKind {
    match code {
        // Lost or refused connections; the server going down, starting up or out of slots.
        c if c.starts_with("08") => ErrorKind::Connection,
        "57P01" | "57P02" | "57P03" | "25006" => ErrorKind::Unavailable,
        c if c.starts_with("53") => ErrorKind::Unavailable,
        "57014" => ErrorKind::Timeout,
        "40001" | "40P01" | "55P03" => ErrorKind::Conflict,
        // Data exceptions, constraint violations and program limits: the input was wrong.
        c if c.starts_with("22") || c.starts_with("23") || c.starts_with("54") => {
            ErrorKind::InvalidInput
        }
        c if c.starts_with("28") || c == "3D000" => ErrorKind::Config,
        _ => ErrorKind::Backend,
    }
}

/// A client-side deadline passed; the request may or may not have been applied.
pub fn client_timeout(what: &str, after: std::time::Duration) -> StateError {
    StateError::new(
        ErrorKind::Timeout,
        format!(
            "{what} got no answer within {after:?}; the server or the network may be stuck, \
             and the connection was dropped; the statement may have been applied"
        ),
    )
    .with_outcome_unknown()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_actionable_kinds() {
        assert_eq!(kind_of_sqlstate("08006"), ErrorKind::Connection);
        assert_eq!(kind_of_sqlstate("57P01"), ErrorKind::Unavailable);
        assert_eq!(kind_of_sqlstate("53300"), ErrorKind::Unavailable);
        assert_eq!(kind_of_sqlstate("57014"), ErrorKind::Timeout);
        assert_eq!(kind_of_sqlstate("40001"), ErrorKind::Conflict);
        assert_eq!(kind_of_sqlstate("22P05"), ErrorKind::InvalidInput);
        assert_eq!(kind_of_sqlstate("23505"), ErrorKind::InvalidInput);
        assert_eq!(kind_of_sqlstate("28P01"), ErrorKind::Config);
        assert_eq!(kind_of_sqlstate("42601"), ErrorKind::Backend);
    }

    #[test]
    fn io_errors_after_sending_have_unknown_outcome() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = convert(sqlx::Error::Io(io), "put", true);
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(e.is_retryable() && e.outcome_unknown());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = convert(sqlx::Error::Io(io), "connect", false);
        assert!(!e.outcome_unknown());
    }
}
