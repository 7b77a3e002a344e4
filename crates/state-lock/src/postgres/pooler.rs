//! Telling a transaction pooler from PostgreSQL: the probe every lock connection sends in
//! its startup `options` and reads back, and the refusal of Session mode behind a pooler.

/// The custom setting that carries the pooler probe in the startup `options`: PostgreSQL
/// applies it to the backend it starts for the connection, a pooler cannot.
pub(super) const PROBE_SETTING: &str = "state_lock.session_probe";

/// The message of the refusal to run Session mode behind a pooler.
pub(super) const POOLER_REFUSAL: &str =
    "session advisory locks are unsafe behind a transaction pooler; use lock_mode=lease";
