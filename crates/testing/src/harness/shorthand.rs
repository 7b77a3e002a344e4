//! Shorthands the cases and properties of every suite use: expected errors, compact values,
//! escaped bytes, expiries compared with slack.

use std::fmt::Debug;
use std::time::{Duration, SystemTime};

use state_core::{BoxStream, Bytes, Entry, ErrorKind, Result, StateBackend, StateError};

/// Asserts that `result` failed with `kind`; returns the error for further checks.
#[track_caller]
pub fn expect_kind<T: Debug>(what: &str, result: Result<T>, kind: ErrorKind) -> StateError {
    match result {
        Ok(value) => panic!("{what}: expected a {kind:?} error, got Ok({value:?})"),
        Err(e) => {
            assert_eq!(
                e.kind(),
                kind,
                "{what}: expected a {kind:?} error, got: {e}"
            );
            e
        }
    }
}

/// The value of `key` as a `Vec`, for compact comparisons.
pub async fn value(backend: &dyn StateBackend, key: &[u8]) -> Result<Option<Vec<u8>>> {
    Ok(backend.get(key).await?.map(|v| v.to_vec()))
}

/// The keys of `entries`, in order.
pub fn keys(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries.iter().map(|e| e.key.to_vec()).collect()
}

/// `Some(bytes)` as an owned vector, for comparing with [`value`].
pub fn some(bytes: &[u8]) -> Option<Vec<u8>> {
    Some(bytes.to_vec())
}

/// Renders bytes as an escaped byte string, such as `b"a\xff*"`.
pub fn show(bytes: &[u8]) -> String {
    let escaped: String = bytes
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    format!("b\"{escaped}\"")
}

/// Whether `a` and `b` are within `slack` of each other (absolute expiries after rounding).
pub fn close(a: SystemTime, b: SystemTime, slack: Duration) -> bool {
    let diff = a.duration_since(b).or_else(|_| b.duration_since(a));
    diff.is_ok_and(|d| d <= slack)
}

/// A stream of entries for `import`.
pub fn entries_stream(entries: Vec<Entry>) -> BoxStream<'static, Result<Entry>> {
    state_core::stream::iter(entries.into_iter().map(Ok))
}

/// `Bytes` from a slice (shorthand in cases).
pub fn bytes(b: &[u8]) -> Bytes {
    Bytes::copy_from_slice(b)
}

/// Everything an error shows: its Display and Debug, and those of every source under it
/// (what a test of secrets searches for a password).
pub fn everything_shown(err: &StateError) -> Vec<String> {
    let mut shown = vec![err.to_string(), format!("{err:?}")];
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        shown.push(s.to_string());
        shown.push(format!("{s:?}"));
        source = s.source();
    }
    shown
}
