//! [`PostgresStateBackend`]: opening (migrations, connections, the coalescer's dispatcher,
//! the reaper), closing and the backend's own methods; [`migrate`] for tools.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use state_core::{Idempotency, Result, StateError, ttl_millis};

use crate::coalescer::Coalescer;
use crate::config::PostgresConfig;
use crate::config::deploy::{ReadFrom, TargetSessionAttrs};
use crate::conn::{ConnSet, ServerInfo};
use crate::driver::{Inner, PostgresStateBackend};
use crate::migrate::{self, AppliedMigration};
use crate::sql::{Names, Statements};
use crate::values::ValueSizes;

impl PostgresStateBackend {
    /// Opens the backend: checks the config, finds the server (the first host, or the
    /// first primary with `target_session_attrs=read-write`), detects a transaction pooler
    /// unless `pgbouncer=` says, applies pending migrations (unless disabled, or the server
    /// is a standby) under an advisory lock, opens `pool_min` connections and starts the
    /// reaper if one is configured.
    ///
    /// Opened on a standby (`pg_is_in_recovery()`), the backend is read-only: it checks that
    /// the primary's migrations have reached the standby instead of running them, reads
    /// and scans work, and every write fails with a [`ReadOnly`](state_core::ErrorKind::ReadOnly)
    /// error.
    pub async fn new(config: PostgresConfig) -> Result<Self> {
        config.validate()?;
        let names = Names::new(config.schema(), config.table());
        let max = config.pool_size().1 as usize;
        let conns = primary_set(&config, max);
        let (mut conn, info) = probe_with_retry(&conns, &config).await?;
        let outcome = if info.in_recovery {
            conns.set_standby(true);
            migrate::check_on_standby(&mut conn, &names, conns.endpoint()).await
        } else if config.run_migrations() {
            migrate::run(&mut conn, &names, conns.pooler())
                .await
                .map(drop)
        } else {
            Ok(())
        };
        match outcome {
            // A direct connection is kept as the first of the `pool_min` ones: its session
            // holds nothing of the migrations (the lock is released). Not with `pool_min`
            // 0 (no connection may stay bound to this runtime), nor behind a pooler, whose
            // server connection was lent for the probe only.
            Ok(()) if !conns.pooler() && config.pool_size().0 > 0 => conns.adopt(conn).await,
            // Closing is a courtesy; the lock is already released or dies with the session.
            _ => {
                let _ = sqlx::Connection::close(conn).await;
            }
        }
        outcome?;
        let replicas = match config.read_from() {
            ReadFrom::Primary => Vec::new(),
            ReadFrom::Replicas => config
                .replica_targets()
                .into_iter()
                .map(|target| {
                    let set = ConnSet::new(&config, vec![target], max, false);
                    // A write never goes there; if one did, it would be refused clearly.
                    set.set_standby(true);
                    set.set_pooler(conns.pooler());
                    set
                })
                .collect(),
        };
        conns.warm_up(config.pool_size().0 as usize).await?;
        let default_ttl_ms = config
            .default_ttl()
            .map(|ttl| ttl_millis(ttl).map(|ms| ms as f64))
            .transpose()?;
        let coalesce = config.coalescing();
        // The dispatcher gets a `Weak`: it must not keep the backend alive.
        let inner = Arc::new_cyclic(|weak| Inner {
            coalescer: Coalescer::start(weak, coalesce),
            sql: Statements::new(&names),
            names,
            conns,
            replicas,
            next_replica: std::sync::atomic::AtomicUsize::new(0),
            value_sizes: ValueSizes::default(),
            prefix: Bytes::copy_from_slice(config.key_prefix()),
            default_ttl_ms,
            limits: config.limits(),
            retry: config.retry(),
            attempt_timeout: config.statement_timeout() + Duration::from_secs(5),
            reaper: std::sync::Mutex::new(None),
            config,
        });
        if let Some(interval) = inner.config.reaper_interval() {
            start_reaper(&inner, interval)?;
        }
        Ok(PostgresStateBackend { inner })
    }

    /// Opens the backend named by a `postgres://` URL.
    pub async fn from_url(url: &str) -> Result<Self> {
        PostgresStateBackend::new(PostgresConfig::from_url(url)?).await
    }

    /// Whether it talks through a transaction pooler (declared with `pgbouncer=true`, or
    /// detected when it opened).
    pub fn behind_pooler(&self) -> bool {
        self.inner.conns.pooler()
    }

    /// Whether it was opened on a standby and so serves reads only.
    pub fn is_read_only(&self) -> bool {
        self.inner.conns.standby()
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &PostgresConfig {
        &self.inner.config
    }

    /// Closes the idle connections gracefully (dropping the backend closes them abruptly,
    /// which the server logs). Operations after this reopen connections as needed.
    pub async fn close(&self) {
        self.inner.conns.close_idle().await;
    }

    /// The versions in refinery's history table for this schema and table.
    pub async fn migration_history(&self) -> Result<Vec<(i64, String)>> {
        let mut conn = self.inner.conns.connect().await?;
        let history = migrate::history(&mut conn, &self.inner.names).await;
        let _ = sqlx::Connection::close(conn).await;
        history
    }
}

/// Applies pending migrations for `config` and returns what was applied (empty when the
/// schema is up to date). What `cargo xtask migrate --url URL` runs.
pub async fn migrate(config: &PostgresConfig) -> Result<Vec<AppliedMigration>> {
    config.validate()?;
    let names = Names::new(config.schema(), config.table());
    let conns = primary_set(config, 1);
    let (mut conn, info) = probe_with_retry(&conns, config).await?;
    let outcome = if info.in_recovery {
        Err(StateError::config(format!(
            "{} is a standby (in recovery), which cannot be migrated; run the migrations \
             against the primary, they reach the standby by replication",
            conns.endpoint()
        )))
    } else {
        migrate::run(&mut conn, &names, conns.pooler()).await
    };
    let _ = sqlx::Connection::close(conn).await;
    outcome
}

/// The connection set of the primary's hosts.
fn primary_set(config: &PostgresConfig, max: usize) -> ConnSet {
    let require_primary = config.target_session_attrs() == TargetSessionAttrs::ReadWrite;
    ConnSet::new(config, config.targets(), max, require_primary)
}

/// The first connection, with what it learnt (pooler, standby); retried while the server
/// is away.
async fn probe_with_retry(
    conns: &ConnSet,
    config: &PostgresConfig,
) -> Result<(sqlx::PgConnection, ServerInfo)> {
    let detect = config.pgbouncer().is_none();
    config
        .retry()
        .run(Idempotency::Idempotent, |_| {}, || conns.probe(detect))
        .await
}

fn start_reaper(inner: &Arc<Inner>, interval: Duration) -> Result<()> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        StateError::config("the reaper needs a tokio runtime; open the backend inside one")
    })?;
    let weak = Arc::downgrade(inner);
    let task = runtime.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let backend = PostgresStateBackend { inner };
            // A failed sweep is retried at the next tick; reads never depend on it.
            let _ = backend.cleanup_expired().await;
        }
    });
    let mut slot = inner
        .reaper
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    *slot = Some(task.abort_handle());
    Ok(())
}
