//! [`PostgresConfig::validate`]: every field checked, the error naming the first bad one.

use std::time::Duration;

use state_core::{Result, StateError};

use super::PostgresConfig;

/// The longest table name: PostgreSQL names stop at 63 bytes and the derived tables add up
/// to 16 (`_checkpoint_rows`).
pub const MAX_TABLE_NAME_LEN: usize = 47;

/// The longest stored key (prefix included): btree entries must stay under ~2.7 KB.
pub const MAX_FULL_KEY_LEN: usize = 2000;

impl PostgresConfig {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if let Some(problem) = &self.problem {
            return Err(StateError::config(problem.clone()));
        }
        check_identifier("schema", &self.schema, 63)?;
        check_identifier("table", &self.table, MAX_TABLE_NAME_LEN)?;
        if self.pool_max == 0 {
            return Err(StateError::config(
                "pool_max is 0; the backend needs at least one connection",
            ));
        }
        if self.pool_max > 1000 {
            return Err(StateError::config(format!(
                "pool_max is {}; use at most 1000 connections (PostgreSQL's max_connections is \
                 usually far lower)",
                self.pool_max
            )));
        }
        if self.pool_min > self.pool_max {
            return Err(StateError::config(format!(
                "pool_min ({}) is larger than pool_max ({})",
                self.pool_min, self.pool_max
            )));
        }
        if let Some(n) = self.coalesce
            && n > self.pool_max as usize
        {
            return Err(StateError::config(format!(
                "coalesce ({n}) is larger than pool_max ({}); each coalesced statement needs a \
                 connection of its own: lower coalesce or raise pool_max",
                self.pool_max
            )));
        }
        for (name, value) in [
            ("statement_timeout", self.statement_timeout),
            ("acquire_timeout", self.acquire_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value < Duration::from_millis(1) {
                return Err(StateError::config(format!(
                    "{name} is {value:?}; use at least 1ms"
                )));
            }
        }
        self.retry.validate()?;
        self.validate_deploy()?;
        if let Some(ttl) = self.default_ttl {
            state_core::ttl_millis(ttl)
                .map_err(|e| StateError::config(format!("default_ttl: {}", e.message())))?;
        }
        if self.limits.max_key_len == 0 {
            return Err(StateError::config("limits.max_key_len must be at least 1"));
        }
        if self.key_prefix.len() + self.limits.max_key_len > MAX_FULL_KEY_LEN {
            return Err(StateError::config(format!(
                "key prefix ({} bytes) plus max_key_len ({}) exceed {MAX_FULL_KEY_LEN} bytes, \
                 the longest key PostgreSQL's primary key index can hold safely",
                self.key_prefix.len(),
                self.limits.max_key_len
            )));
        }
        if self
            .reaper_interval
            .is_some_and(|i| i < Duration::from_millis(10))
        {
            return Err(StateError::config(
                "reaper interval is below 10ms; use a longer interval",
            ));
        }
        Ok(())
    }
}

/// Accepts lower-case SQL identifiers only (`[a-z_][a-z0-9_]*`), so that a quoted name means
/// the same as an unquoted one and no name can break out of its quotes.
pub(crate) fn check_identifier(field: &str, name: &str, max_len: usize) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok {
        return Err(StateError::config(format!(
            "{field} name `{}` is not a plain SQL identifier; use lower-case letters, digits \
             and `_`, starting with a letter or `_`",
            name.chars().take(80).collect::<String>()
        )));
    }
    if name.len() > max_len {
        return Err(StateError::config(format!(
            "{field} name `{name}` is {} bytes; the limit is {max_len}",
            name.len()
        )));
    }
    if name.starts_with("pg_") {
        return Err(StateError::config(format!(
            "{field} name `{name}` starts with pg_, which PostgreSQL reserves"
        )));
    }
    Ok(())
}
