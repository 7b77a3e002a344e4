//! The SQL each mode runs, with `$n` placeholders: one place for the texts, shared by the
//! modes and exported (as `state_lock::postgres_statements`) for audits, grants, and for
//! timing the same statements with other clients (`cargo xtask bench locks` runs them
//! through `pgbench -M prepared`). `schema` is the lock schema's name, unquoted, as
//! [`PostgresLockConfig`](super::PostgresLockConfig) accepts it (it refuses `"`).

/// The schema's name as an identifier (the config refused names that hold a `"`).
fn quoted(schema: &str) -> String {
    format!("\"{schema}\"")
}

/// Session mode's acquire: `$1` the backend pid the connection was opened on (int4), `$2`
/// the advisory key (int8). Returns the new fencing token, or NULL if the lock is taken
/// (or the connection reaches another backend), and the backend pid.
///
/// CASE evaluates in order: the lock is only tried on the expected backend, and the token
/// is only drawn once the lock is ours.
pub fn session_acquire(schema: &str) -> String {
    format!(
        "SELECT CASE WHEN pg_backend_pid() <> $1 THEN NULL \
         WHEN pg_try_advisory_lock($2) THEN nextval('{}.state_lock_tokens') END, \
         pg_backend_pid()",
        quoted(schema)
    )
}

/// Session mode's release: unlocks advisory key `$2` (int8) if the connection still
/// reaches backend `$1` (int4); true, false (it did not hold it), or NULL (another backend).
pub const SESSION_RELEASE: &str = "SELECT CASE WHEN pg_backend_pid() <> $1 THEN NULL \
     ELSE pg_advisory_unlock($2) END";

/// Session mode's extend: the backend pid, and whether it holds the bigint advisory lock
/// whose `pg_locks` ids are `$1` (classid, oid) and `$2` (objid, oid).
pub const SESSION_HELD: &str = "SELECT pg_backend_pid(), EXISTS (SELECT 1 FROM pg_locks \
     WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
     AND classid = $1 AND objid = $2 AND objsubid = 1 AND granted)";

/// Session mode's `is_locked`: whether any session of this database holds the bigint
/// advisory lock whose `pg_locks` ids are `$1`/`$2` (oid).
pub const SESSION_IS_LOCKED: &str = "SELECT EXISTS (SELECT 1 FROM pg_locks \
     WHERE locktype = 'advisory' \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND classid = $1 AND objid = $2 AND objsubid = 1 AND granted)";

/// Lease mode's acquire: `$1` name, `$2` owner (text), `$3` the lease in ms, `$4`/`$5` the
/// name's advisory key as two signed int4 halves (int8). Returns the fencing token, or no
/// row if another owner's lease is running.
///
/// The transaction-level lock (two-int form: a different lock space from Session mode's
/// bigint keys) serialises acquires of one name, so the token is drawn after any earlier
/// holder's: tokens increase in the order the lock changes hands. The same owner keeps its
/// token while its lease runs (a retried acquire whose reply was lost); a takeover of an
/// expired lease gets a new one.
pub fn lease_acquire(schema: &str) -> String {
    let schema = quoted(schema);
    format!(
        "WITH serial AS MATERIALIZED \
           (SELECT pg_advisory_xact_lock($4::int8::int4, $5::int8::int4)) \
         INSERT INTO {schema}.state_locks AS l (name, owner, token, expires_at) \
         SELECT $1::text, $2::text, nextval('{schema}.state_lock_tokens'), \
                now() + interval '1 millisecond' * $3::int8 FROM serial \
         ON CONFLICT (name) DO UPDATE SET \
           owner = EXCLUDED.owner, \
           token = CASE WHEN l.owner = EXCLUDED.owner AND l.expires_at > now() \
                        THEN l.token ELSE EXCLUDED.token END, \
           expires_at = EXCLUDED.expires_at \
         WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner \
         RETURNING l.token"
    )
}

/// Lease mode's extend: `$1` name, `$2` owner, `$3` token, `$4` the lease in ms. Returns a
/// row only if the lease was ours and unexpired (it is never re-created).
pub fn lease_extend(schema: &str) -> String {
    format!(
        "UPDATE {}.state_locks \
         SET expires_at = now() + interval '1 millisecond' * $4::int8 \
         WHERE name = $1::text AND owner = $2::text AND token = $3::int8 \
           AND expires_at > now() \
         RETURNING token",
        quoted(schema)
    )
}

/// Lease mode's release: `$1` name, `$2` owner, `$3` token. Returns whether the deleted
/// lease was still running, or no row if it was not ours.
pub fn lease_release(schema: &str) -> String {
    format!(
        "DELETE FROM {}.state_locks \
         WHERE name = $1::text AND owner = $2::text AND token = $3::int8 \
         RETURNING expires_at > now()",
        quoted(schema)
    )
}

/// Lease mode's `is_locked`: `$1` name.
pub fn lease_is_locked(schema: &str) -> String {
    format!(
        "SELECT EXISTS (SELECT 1 FROM {}.state_locks \
         WHERE name = $1::text AND expires_at > now())",
        quoted(schema)
    )
}
