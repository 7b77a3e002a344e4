//! SQL built at run time, beside the fixed statements of [`statements`](super::statements):
//! the setup of what a mode needs, and text values as literals.

use super::key::{self, advisory_key};

/// A text value as an SQL expression that cannot break out of its quotes: its UTF-8 bytes
/// in hex, decoded by the server. Independent of `standard_conforming_strings`.
pub(super) fn text_literal(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(text.len() * 2 + 40);
    out.push_str("convert_from(decode('");
    for &byte in text.as_bytes() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    out.push_str("', 'hex'), 'UTF8')");
    out
}

/// What lock table a mode needs: none (Session), or Lease mode's, logged (`durable`) or
/// `UNLOGGED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LockTable {
    None,
    Lease { durable: bool },
}

/// The statements that create what a mode needs, in one implicit transaction (one simple
/// query message, so a transaction pooler keeps it on one server connection), serialised
/// across processes by a transaction-level advisory lock so `IF NOT EXISTS` and the
/// persistence switch cannot race.
pub(super) fn setup_sql(schema: &str, table: LockTable) -> String {
    let (high, low) = key::pg_locks_ids(advisory_key(&format!("state-lock setup {schema}")));
    let quoted = format!("\"{schema}\"");
    let mut sql = format!(
        "SELECT pg_advisory_xact_lock({}, {}); \
         CREATE SCHEMA IF NOT EXISTS {quoted}; \
         CREATE SEQUENCE IF NOT EXISTS {quoted}.state_lock_tokens;",
        i32::from_ne_bytes(high.to_ne_bytes()),
        i32::from_ne_bytes(low.to_ne_bytes()),
    );
    if let LockTable::Lease { durable } = table {
        // relpersistence: 'p' permanent (logged), 'u' unlogged.
        let (create, persistence, switch) = if durable {
            ("CREATE TABLE", 'p', "LOGGED")
        } else {
            ("CREATE UNLOGGED TABLE", 'u', "UNLOGGED")
        };
        sql.push_str(&format!(
            " {create} IF NOT EXISTS {quoted}.state_locks (\
               name TEXT PRIMARY KEY, \
               owner TEXT NOT NULL, \
               token BIGINT NOT NULL, \
               expires_at TIMESTAMPTZ NOT NULL); \
             DO $state_lock$ BEGIN \
               IF (SELECT relpersistence FROM pg_class \
                   WHERE oid = '{quoted}.state_locks'::regclass) <> '{persistence}' THEN \
                 ALTER TABLE {quoted}.state_locks SET {switch}; \
               END IF; \
             END $state_lock$;"
        ));
    }
    sql
}

/// Whether a setup error is a lost race on a concurrent `CREATE … IF NOT EXISTS` by
/// someone not taking our setup lock (state-postgres creating the same schema).
pub(super) fn is_creation_race(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| matches!(&*c, "23505" | "42P06" | "42P07" | "42710")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_table_is_unlogged_unless_durable() {
        let unlogged = setup_sql("locks", LockTable::Lease { durable: false });
        assert!(unlogged.contains("CREATE UNLOGGED TABLE IF NOT EXISTS \"locks\".state_locks"));
        assert!(unlogged.contains("<> 'u' THEN ALTER TABLE \"locks\".state_locks SET UNLOGGED;"));
        let durable = setup_sql("locks", LockTable::Lease { durable: true });
        assert!(durable.contains(" CREATE TABLE IF NOT EXISTS \"locks\".state_locks"));
        assert!(durable.contains("<> 'p' THEN ALTER TABLE \"locks\".state_locks SET LOGGED;"));
        assert!(!setup_sql("locks", LockTable::None).contains("state_locks"));
    }

    #[test]
    fn text_literals_are_hex() {
        assert_eq!(
            text_literal("a'b"),
            "convert_from(decode('612762', 'hex'), 'UTF8')"
        );
        assert_eq!(text_literal(""), "convert_from(decode('', 'hex'), 'UTF8')");
        assert_eq!(
            text_literal("é\u{1}\u{ff}"),
            "convert_from(decode('c3a901c3bf', 'hex'), 'UTF8')"
        );
    }
}
