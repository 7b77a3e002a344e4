//! Versioned migrations with refinery, run over a sqlx connection.
//!
//! refinery has no sqlx driver. Rather than pull in tokio-postgres (a second PostgreSQL
//! client, its protocol crates and TLS glue: minutes of build on a 2-core CI) just to run
//! three scripts, this module implements refinery-core's async traits
//! (`AsyncTransaction`, `AsyncQuery`, `AsyncMigrate`) over the sqlx connection the backend
//! already has. refinery still owns versioning: its history table, checksums, divergence
//! and missing-version checks.
//!
//! The scripts are embedded in the binary (`include_str!`) and rendered with the configured
//! schema and table, so the history table is per schema and table
//! (`"schema"."{table}_migrations"`). Migrations run under a session advisory lock on a
//! dedicated connection: processes starting together wait for one another, and each later
//! start finds every version applied and does nothing.

use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use state_core::{ErrorKind, Result, StateError};

use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use refinery_core::{Migration, Runner, SchemaVersion};

use crate::error::convert;
use crate::sql::Names;

/// The migration scripts, in order. Their placeholders (`{{entries}}`…) are filled with the
/// configured names.
const SCRIPTS: [(&str, &str); 3] = [
    (
        "V1__state_entries",
        include_str!("../migrations/V1__state_entries.sql"),
    ),
    ("V2__fences", include_str!("../migrations/V2__fences.sql")),
    (
        "V3__checkpoints",
        include_str!("../migrations/V3__checkpoints.sql"),
    ),
];

/// The advisory lock key taken while migrating: FNV-1a (64-bit) of
/// `"state-postgres/migrations"`, a stable value any tool can take too. One key for every
/// schema, so that concurrent `CREATE SCHEMA IF NOT EXISTS` never race.
pub const MIGRATION_LOCK_KEY: i64 = fnv1a(b"state-postgres/migrations") as i64;

const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// One migration that a run applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    /// Its version (`1`, `2`…).
    pub version: i64,
    /// Its name (`state_entries`…).
    pub name: String,
}

/// The rendered migrations for these names.
pub(crate) fn migrations(names: &Names) -> Result<Vec<Migration>> {
    SCRIPTS
        .iter()
        .map(|(name, template)| {
            Migration::unapplied(name, &names.render(template)).map_err(|e| {
                StateError::new(
                    ErrorKind::Backend,
                    format!("internal error: migration {name} is malformed ({e})"),
                )
            })
        })
        .collect()
}

/// Applies the pending migrations on `conn` under the advisory lock; returns what it
/// applied (nothing when the schema is up to date).
///
/// Behind a transaction pooler (`pooled`) a session lock would stay on whichever server
/// connection the pooler lent for that statement: everything, the lock included
/// (`pg_advisory_xact_lock`), runs in one transaction instead, which the pooler keeps on
/// one server connection and PostgreSQL applies all or nothing.
pub(crate) async fn run(
    conn: &mut PgConnection,
    names: &Names,
    pooled: bool,
) -> Result<Vec<AppliedMigration>> {
    let migrations = migrations(names)?;
    if pooled {
        return run_in_one_transaction(conn, names, &migrations).await;
    }
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(|e| convert(e, "taking the migration lock", true))?;
    let outcome = apply(conn, names, &migrations, false).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .execute(&mut *conn)
        .await
        .map_err(|e| convert(e, "releasing the migration lock", true));
    let applied = outcome?;
    unlocked?;
    Ok(applied)
}

async fn run_in_one_transaction(
    conn: &mut PgConnection,
    names: &Names,
    migrations: &[Migration],
) -> Result<Vec<AppliedMigration>> {
    sqlx::raw_sql("BEGIN")
        .execute(&mut *conn)
        .await
        .map_err(|e| convert(e, "starting the migration transaction", true))?;
    let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK_KEY)
        .persistent(false)
        .execute(&mut *conn)
        .await
        .map_err(|e| convert(e, "taking the migration lock", true));
    let outcome = match locked {
        Ok(_) => apply(conn, names, migrations, true).await,
        Err(e) => Err(e),
    };
    let end = if outcome.is_ok() {
        "COMMIT"
    } else {
        "ROLLBACK"
    };
    let ended = sqlx::raw_sql(end)
        .execute(&mut *conn)
        .await
        .map_err(|e| convert(e, "committing the migrations", true));
    let applied = outcome?;
    ended?;
    Ok(applied)
}

/// On a standby: checks that the primary's migrations are there (a standby cannot run
/// them), so that a missing schema fails at open rather than at the first read.
pub(crate) async fn check_on_standby(
    conn: &mut PgConnection,
    names: &Names,
    endpoint: &str,
) -> Result<()> {
    let what = "checking the schema on the standby";
    // Names are checked identifiers ([a-z0-9_]), so they sit safely in a literal.
    let sql = format!(
        "SELECT (to_regclass('{}') IS NOT NULL)::text",
        names.history.replace('\'', "")
    );
    let row = sqlx::raw_sql(AssertSqlSafe(sql))
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| convert(e, what, true))?;
    let exists: String = row.try_get(0).map_err(|e| convert(e, what, true))?;
    let applied = if exists == "true" {
        history(conn, names).await?.len()
    } else {
        0
    };
    if applied < SCRIPTS.len() {
        return Err(StateError::config(format!(
            "{endpoint} is a standby (read-only) and has {applied} of the {} migrations of {}; \
             migrate on the primary (open the backend there once, or `cargo xtask migrate \
             --url PRIMARY_URL`) and open this one again once the standby has replayed them",
            SCRIPTS.len(),
            names.entries
        )));
    }
    Ok(())
}

async fn apply(
    conn: &mut PgConnection,
    names: &Names,
    migrations: &[Migration],
    in_transaction: bool,
) -> Result<Vec<AppliedMigration>> {
    // The history table lives in the schema, so the schema comes first.
    sqlx::raw_sql(AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {}",
        names.schema
    )))
    .execute(&mut *conn)
    .await
    .map_err(|e| convert(e, "creating the schema", true))?;
    let mut runner = Runner::new(migrations).set_grouped(true);
    runner.set_migration_table_name(&names.history);
    let report = runner
        .run_async(&mut RefineryConn {
            conn,
            in_transaction,
        })
        .await
        .map_err(|e| {
            StateError::new(
                ErrorKind::Backend,
                format!(
                    "migrating {} failed: {e}; fix the cause and start again (nothing of the \
                     failed group was applied)",
                    names.entries
                ),
            )
            .with_source(e)
        })?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| AppliedMigration {
            version: i64::from(m.version()),
            name: m.name().to_string(),
        })
        .collect())
}

/// A sqlx connection seen through refinery's async traits.
struct RefineryConn<'a> {
    conn: &'a mut PgConnection,
    /// Already inside the caller's transaction: run the group in it (its failure aborts
    /// that transaction, which the caller rolls back).
    in_transaction: bool,
}

impl AsyncTransaction for RefineryConn<'_> {
    type Error = sqlx::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> std::result::Result<usize, Self::Error> {
        let mut count = 0;
        if self.in_transaction {
            for query in queries {
                sqlx::raw_sql(AssertSqlSafe(query))
                    .execute(&mut *self.conn)
                    .await?;
                count += 1;
            }
            return Ok(count);
        }
        let mut tx = self.conn.begin().await?;
        for query in queries {
            // Scripts hold several statements and `$$` bodies: the simple protocol runs them.
            sqlx::raw_sql(AssertSqlSafe(query))
                .execute(&mut *tx)
                .await?;
            count += 1;
        }
        tx.commit().await?;
        Ok(count)
    }
}

impl AsyncQuery<Vec<Migration>> for RefineryConn<'_> {
    async fn query<'a>(
        &'a mut self,
        query: &'a str,
    ) -> std::result::Result<Vec<Migration>, Self::Error> {
        let rows = sqlx::query(AssertSqlSafe(query))
            .persistent(false)
            .fetch_all(&mut *self.conn)
            .await?;
        rows.iter().map(applied_migration).collect()
    }
}

impl AsyncMigrate for RefineryConn<'_> {}

fn applied_migration(row: &sqlx::postgres::PgRow) -> std::result::Result<Migration, sqlx::Error> {
    let bad = |what: &str| sqlx::Error::Decode(format!("refinery history: bad {what}").into());
    let version: SchemaVersion = row.try_get(0)?;
    let name: String = row.try_get(1)?;
    let applied_on: String = row.try_get(2)?;
    let checksum: String = row.try_get(3)?;
    let applied_on =
        time::OffsetDateTime::parse(&applied_on, &time::format_description::well_known::Rfc3339)
            .map_err(|_| bad("applied_on"))?;
    let checksum = checksum.parse::<u64>().map_err(|_| bad("checksum"))?;
    Ok(Migration::applied(version, name, applied_on, checksum))
}

/// The versions recorded in the history table, in order (for tests and tools).
///
/// Unnamed and inside a transaction of its own (when not in one already), so that it works
/// behind a transaction pooler too.
pub(crate) async fn history(conn: &mut PgConnection, names: &Names) -> Result<Vec<(i64, String)>> {
    let what = "reading the migration history";
    let mut tx = conn.begin().await.map_err(|e| convert(e, what, true))?;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT version::int8, name FROM {} ORDER BY version",
        names.history
    )))
    .persistent(false)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| convert(e, what, true))?;
    tx.commit().await.map_err(|e| convert(e, what, true))?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<i64, _>(0)
                    .map_err(|e| convert(e, "reading the migration history", true))?,
                row.try_get::<String, _>(1)
                    .map_err(|e| convert(e, "reading the migration history", true))?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_render_without_leftover_placeholders() -> Result<()> {
        let names = Names::new("st", "ev");
        let migrations = migrations(&names)?;
        assert_eq!(migrations.len(), 3);
        for m in &migrations {
            let sql = m.sql().unwrap_or_default();
            assert!(!sql.contains("{{"), "{m}: {sql}");
            assert!(!sql.contains("now()") || !sql.contains("WHERE expires_at > now()"));
        }
        // The partial index has an immutable predicate.
        let v1 = migrations[0].sql().unwrap_or_default();
        assert!(v1.contains("WHERE expires_at IS NOT NULL;"));
        Ok(())
    }

    #[test]
    fn lock_key_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            MIGRATION_LOCK_KEY,
            fnv1a(b"state-postgres/migrations") as i64
        );
    }
}
