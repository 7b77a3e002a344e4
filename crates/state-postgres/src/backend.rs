//! [`PostgresStateBackend`]: opening (migrations, connections, the coalescer's dispatcher,
//! the reaper), closing and the backend's own methods; [`migrate`] for tools.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use state_core::{Idempotency, Result, RetryPolicy, StateError, ttl_millis};

use crate::coalescer::Coalescer;
use crate::config::PostgresConfig;
use crate::conn::ConnSet;
use crate::driver::{Inner, PostgresStateBackend};
use crate::migrate::{self, AppliedMigration};
use crate::sql::{Names, Statements};

impl PostgresStateBackend {
    /// Opens the backend: checks the config, applies pending migrations (unless disabled)
    /// under an advisory lock, opens `pool_min` connections and starts the reaper if one is
    /// configured.
    pub async fn new(config: PostgresConfig) -> Result<Self> {
        config.validate()?;
        let names = Names::new(config.schema(), config.table());
        let conns = ConnSet::new(
            config.connect_options(),
            config.endpoint(),
            config.pool_size().1 as usize,
            config.acquire_timeout(),
            config.connect_timeout(),
        );
        if config.run_migrations() {
            let mut conn = connect_with_retry(&conns, config.retry()).await?;
            let outcome = migrate::run(&mut conn, &names).await;
            // Closing is a courtesy; the lock is already released or dies with the session.
            let _ = sqlx::Connection::close(conn).await;
            outcome?;
        }
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
    let conns = ConnSet::new(
        config.connect_options(),
        config.endpoint(),
        1,
        config.acquire_timeout(),
        config.connect_timeout(),
    );
    let mut conn = connect_with_retry(&conns, config.retry()).await?;
    let outcome = migrate::run(&mut conn, &names).await;
    let _ = sqlx::Connection::close(conn).await;
    outcome
}

async fn connect_with_retry(conns: &ConnSet, retry: RetryPolicy) -> Result<sqlx::PgConnection> {
    retry
        .run(Idempotency::Idempotent, |_| {}, || conns.connect())
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
