//! The PostgreSQL groups, one per mode: our lock, the mode's own statements on a plain sqlx
//! connection (the floor), sqlx's `PgAdvisoryLock` (beside Session mode), against
//! `SELECT 1` on a plain connection; then the same statements through pgbench.

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::postgres::{PgAdvisoryLock, PgConnection};
use sqlx::{AssertSqlSafe, Connection as _, Either, Row as _};
use state_lock::{
    DistributedLock, LockMode, PostgresDistributedLock, PostgresLockConfig, advisory_key,
    postgres_statements,
};

use crate::measure::{Contender, Role, Row, Timed, measure_group};
use crate::pgbench::{key_halves, pgbench_floor};
use crate::{Options, OursCycle, Result, TTL, unique};

/// `SELECT 1` on a plain connection.
struct SelectOne {
    url: String,
    conn: PgConnection,
}

#[async_trait(?Send)]
impl Timed for SelectOne {
    async fn run(&mut self, _: usize) -> Result<()> {
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut self.conn)
            .await?;
        if one != 1 {
            return Err("SELECT 1 answered something else".into());
        }
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<()> {
        reconnect(&mut self.conn, &self.url).await
    }
}

/// Closes `conn` (telling the server) after opening its replacement on `url`.
async fn reconnect(conn: &mut PgConnection, url: &str) -> Result<()> {
    let fresh = PgConnection::connect(url).await?;
    std::mem::replace(conn, fresh).close().await?;
    Ok(())
}

/// Our lock, reopened (a new pool, so new connections) at each reconnect.
struct OursReopened {
    config: PostgresLockConfig,
    cycle: OursCycle,
}

#[async_trait(?Send)]
impl Timed for OursReopened {
    async fn run(&mut self, i: usize) -> Result<()> {
        self.cycle.run(i).await
    }

    async fn reconnect(&mut self) -> Result<()> {
        let lock = PostgresDistributedLock::with_config(self.config.clone()).await?;
        self.cycle.lock = Arc::new(lock);
        Ok(())
    }
}

/// Session mode's floor: its acquire and release statements, prepared (sqlx's default),
/// with the same parameters our lock binds.
struct SessionStatements {
    url: String,
    conn: PgConnection,
    acquire: String,
    pid: i32,
    key: i64,
}

#[async_trait(?Send)]
impl Timed for SessionStatements {
    async fn run(&mut self, _: usize) -> Result<()> {
        let row = sqlx::query(AssertSqlSafe(self.acquire.as_str()))
            .bind(self.pid)
            .bind(self.key)
            .fetch_one(&mut self.conn)
            .await?;
        let (token, pid): (Option<i64>, i32) = (row.try_get(0)?, row.try_get(1)?);
        if token.is_none() || pid != self.pid {
            return Err("the session floor did not take an uncontended lock".into());
        }
        let released: Option<bool> = sqlx::query_scalar(postgres_statements::SESSION_RELEASE)
            .bind(self.pid)
            .bind(self.key)
            .fetch_one(&mut self.conn)
            .await?;
        if released != Some(true) {
            return Err("the session floor's unlock returned false".into());
        }
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<()> {
        reconnect(&mut self.conn, &self.url).await?;
        self.pid = backend_pid(&mut self.conn).await?;
        Ok(())
    }
}

async fn backend_pid(conn: &mut PgConnection) -> Result<i32> {
    Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(conn)
        .await?)
}

/// Lease mode's floor: its acquire and release statements, prepared, with the same
/// parameter types our lock binds.
struct LeaseStatements {
    url: String,
    conn: PgConnection,
    acquire: String,
    release: String,
    name: String,
    owner: String,
    key_halves: (i64, i64),
}

#[async_trait(?Send)]
impl Timed for LeaseStatements {
    async fn run(&mut self, _: usize) -> Result<()> {
        let millis = i64::try_from(TTL.as_millis())?;
        let token: Option<i64> = sqlx::query_scalar(AssertSqlSafe(self.acquire.as_str()))
            .bind(self.name.as_str())
            .bind(self.owner.as_str())
            .bind(millis)
            .bind(self.key_halves.0)
            .bind(self.key_halves.1)
            .fetch_optional(&mut self.conn)
            .await?;
        let token = token.ok_or("the lease floor did not take an uncontended lock")?;
        let live: Option<bool> = sqlx::query_scalar(AssertSqlSafe(self.release.as_str()))
            .bind(self.name.as_str())
            .bind(self.owner.as_str())
            .bind(token)
            .fetch_optional(&mut self.conn)
            .await?;
        if live != Some(true) {
            return Err("the lease floor's release found no live lease".into());
        }
        Ok(())
    }

    async fn reconnect(&mut self) -> Result<()> {
        reconnect(&mut self.conn, &self.url).await
    }
}

/// sqlx's own session advisory lock: `try_acquire` on a connection, then `release_now`.
struct SqlxAdvisory {
    url: String,
    conn: PgConnection,
    lock: PgAdvisoryLock,
}

#[async_trait(?Send)]
impl Timed for SqlxAdvisory {
    async fn run(&mut self, _: usize) -> Result<()> {
        match self.lock.try_acquire(&mut self.conn).await? {
            Either::Left(guard) => {
                guard.release_now().await?;
                Ok(())
            }
            Either::Right(_) => Err("PgAdvisoryLock found an uncontended lock busy".into()),
        }
    }

    async fn reconnect(&mut self) -> Result<()> {
        reconnect(&mut self.conn, &self.url).await
    }
}

pub async fn postgres_rows(opts: &Options) -> Result<Vec<Row>> {
    let schema = unique("pg");
    let mut admin = PgConnection::connect(&opts.postgres).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&mut admin)
        .await?;
    let rows = postgres_in(opts, &schema).await;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(&mut admin)
        .await?;
    rows
}

async fn postgres_in(opts: &Options, schema: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for mode in [LockMode::Session, LockMode::Lease] {
        let group = match mode {
            LockMode::Session => "pg-session",
            LockMode::Lease => "pg-lease",
        };
        let config = PostgresLockConfig::from_url(&opts.postgres)?
            .with_schema(schema)
            .with_mode(mode);
        let ours: Arc<dyn DistributedLock> =
            Arc::new(PostgresDistributedLock::with_config(config.clone()).await?);
        let mode_name = mode.as_str();
        let mut contenders = vec![
            Contender::new(
                format!("PostgreSQL, {mode_name} mode"),
                Role::Ours,
                OursReopened {
                    config,
                    cycle: OursCycle::new(ours, "uncontended"),
                },
            ),
            Contender {
                label: format!(
                    "PostgreSQL, {mode_name} mode: the same two statements on sqlx (floor)"
                ),
                role: Role::DriverFloor,
                cycle: driver_floor(opts, schema, mode).await?,
            },
        ];
        if mode == LockMode::Session {
            contenders.push(Contender::new(
                "PostgreSQL: sqlx 0.9 `PgAdvisoryLock` (session lock; no fencing token)",
                Role::Peer,
                SqlxAdvisory {
                    url: opts.postgres.clone(),
                    conn: PgConnection::connect(&opts.postgres).await?,
                    lock: PgAdvisoryLock::new(unique("sqlx_advisory")),
                },
            ));
        }
        let mut select_one = SelectOne {
            url: opts.postgres.clone(),
            conn: PgConnection::connect(&opts.postgres).await?,
        };
        rows.extend(measure_group(group, opts, &mut select_one, contenders).await?);
        rows.push(pgbench_floor(opts, schema, mode, group)?);
    }
    Ok(rows)
}

/// The mode's acquire and release statements on a plain connection of their own.
async fn driver_floor(opts: &Options, schema: &str, mode: LockMode) -> Result<Box<dyn Timed>> {
    let mut conn = PgConnection::connect(&opts.postgres).await?;
    let name = unique("driver_floor");
    let key = advisory_key(&name);
    Ok(match mode {
        LockMode::Session => {
            let pid = backend_pid(&mut conn).await?;
            Box::new(SessionStatements {
                url: opts.postgres.clone(),
                conn,
                acquire: postgres_statements::session_acquire(schema),
                pid,
                key,
            })
        }
        LockMode::Lease => Box::new(LeaseStatements {
            url: opts.postgres.clone(),
            conn,
            acquire: postgres_statements::lease_acquire(schema),
            release: postgres_statements::lease_release(schema),
            name,
            owner: "bench-floor-owner".to_string(),
            key_halves: key_halves(key),
        }),
    })
}
