//! Driver errors as [`StateError`]s, classified like state-postgres does, with the lock's
//! own hints.

use state_core::{ErrorKind, StateError};

/// A driver error from doing `what`, classified like state-postgres does, with the lock's
/// own hints. `sent`: the request may have reached the server, so its outcome is unknown
/// after a lost connection.
pub(super) fn convert(err: sqlx::Error, what: &str, sent: bool) -> StateError {
    state_postgres::errors::convert_with(err, what, sent, lock_hint)
}

/// What only the lock can say about a server error.
fn lock_hint(code: &str, message: &str) -> Option<(ErrorKind, &'static str)> {
    if message.contains("unsupported startup parameter") {
        // A pooler refusing our startup parameters will refuse them on every retry.
        return Some((
            ErrorKind::Config,
            "; a pooler (PgBouncer) refused the startup `options` parameter: add `options` \
             to its ignore_startup_parameters, and use lock_mode=lease behind it",
        ));
    }
    (code == "42501").then_some((
        ErrorKind::Config,
        "; the user needs CREATE on the database/schema, or create the lock objects \
         beforehand",
    ))
}
