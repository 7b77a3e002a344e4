//! redb errors converted to [`StateError`] kinds at the edge, keeping the source.

use std::path::Path;

use state_core::{ErrorKind, StateError};

/// Converts any redb error met while doing `what`.
pub(crate) fn redb(what: &str, err: impl Into<redb::Error>) -> StateError {
    let err: redb::Error = err.into();
    let (kind, advice) = match &err {
        redb::Error::Corrupted(_) => (
            ErrorKind::Corrupt,
            "the database file is damaged; restore it from a checkpoint",
        ),
        redb::Error::ValueTooLarge(_) => (
            ErrorKind::InvalidInput,
            "redb stores at most 3 GiB per key or value; lower the backend's limits",
        ),
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. } => (
            ErrorKind::Corrupt,
            "the file is a redb database written by another program; use another path",
        ),
        redb::Error::UpgradeRequired(_) => (
            ErrorKind::Config,
            "the file was written by an older redb file format; upgrade it with redb first",
        ),
        redb::Error::DatabaseAlreadyOpen => (
            ErrorKind::Unavailable,
            "the file is open in another process (or another handle in this one); \
             close it or use another path",
        ),
        redb::Error::Io(_) | redb::Error::PreviousIo => (
            ErrorKind::Backend,
            "an I/O error on the database file (disk full, permissions?); check the disk \
             and reopen the backend",
        ),
        _ => (ErrorKind::Backend, "the operation was not applied"),
    };
    StateError::new(kind, format!("redb failed to {what}: {err}; {advice}")).with_source(err)
}

/// The error for a file that another process holds.
pub(crate) fn already_open(path: &Path, err: redb::DatabaseError) -> StateError {
    StateError::new(
        ErrorKind::Unavailable,
        format!(
            "the redb file {} is already open in another process (or by another handle in \
             this process); redb allows one writer per file: stop that process, or share \
             one RedbBackend (clone it, or use with_prefix) instead of opening the file twice",
            path.display()
        ),
    )
    .with_source(err)
}
