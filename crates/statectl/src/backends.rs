//! Which backends this binary can open, and which URL a command uses.

use std::borrow::Cow;
use std::net::ToSocketAddrs;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use distributed_state::metrics::{GaugeCollector, LockMetricsLayer, MetricsLayer, prometheus};
use state_core::{Registry, StateBackend, StateUrl};
use state_postgres::PostgresStateBackend;

use crate::error::CliError;

/// The store used when neither `--url` nor `$STATE_URL` is given.
pub const DEFAULT_URL: &str = "redb:.statectl/state.redb";

/// Whether `--metrics-addr` installed the Prometheus recorder: then every backend and lock
/// service opened records into it. Process-wide, like the recorder itself.
static SERVING_METRICS: OnceLock<()> = OnceLock::new();

/// The composition root: every backend and lock service linked into statectl (the
/// facade's, with all its features), through which statectl opens everything.
pub fn registry() -> Registry {
    let registry = distributed_state::registry();
    match SERVING_METRICS.get() {
        Some(()) => registry
            .layer(MetricsLayer::new())
            .lock_layer(LockMetricsLayer::new()),
        None => registry,
    }
}

/// `--metrics-addr HOST:PORT`: serves `/metrics` there for the life of the process, and
/// makes [`registry`] record every operation.
pub fn serve_metrics(addr: &str) -> Result<(), CliError> {
    let bad = |why: String| CliError::Usage(format!("--metrics-addr {addr}: {why}"));
    let resolved = addr
        .to_socket_addrs()
        .map_err(|e| bad(format!("not a HOST:PORT address ({e})")))?
        .next()
        .ok_or_else(|| bad("the host name resolves to no address".into()))?;
    prometheus::install(resolved).map_err(|e| bad(e.message().to_string()))?;
    let _ = SERVING_METRICS.set(());
    Ok(())
}

/// With `--metrics-addr`, the backend's server gauges (`state_metrics::GaugeCollector`),
/// read now and every 15 s until the collector is stopped; without it, nothing.
pub async fn collect_gauges(
    backend: &Arc<dyn StateBackend>,
) -> Result<Option<GaugeCollector>, CliError> {
    if SERVING_METRICS.get().is_none() {
        return Ok(None);
    }
    let every = Duration::from_secs(15);
    Ok(Some(GaugeCollector::start(backend.clone(), every).await?))
}

/// The URL to open: `--url` (or `$STATE_URL`, which clap already folded in), else the
/// default embedded store, whose directory is created on first use.
pub fn resolve(url: Option<&str>) -> Result<StateUrl, CliError> {
    match url {
        Some(url) => Ok(registry().parse(url)?),
        None => {
            std::fs::create_dir_all(".statectl").map_err(|e| {
                CliError::Usage(format!(
                    "cannot create the default store directory .statectl ({e}); \
                     pass --url or set STATE_URL"
                ))
            })?;
            Ok(registry().parse(DEFAULT_URL)?)
        }
    }
}

/// The backend `--url` names (else the default embedded store, created if missing), for a
/// checkpoint command. These stream the whole state once, so a redb file gets a page cache
/// of `RedbConfig::STREAMING_CACHE_SIZE` unless the URL sets `cache_size`: a larger one
/// buys nothing there, and filling it made their memory grow with the state.
pub async fn open(url: Option<&str>) -> Result<Arc<dyn StateBackend>, CliError> {
    let resolved = resolve(url)?;
    let url = match state_embedded::streaming_url(url.unwrap_or(DEFAULT_URL)) {
        Cow::Owned(streaming) => registry().parse(&streaming)?,
        Cow::Borrowed(_) => resolved,
    };
    Ok(registry().connect_url(url).await?)
}

/// Ends a PostgreSQL backend's sessions politely, so the server logs no dropped
/// connections; other backends close when dropped.
pub async fn close(backend: &Arc<dyn StateBackend>) {
    if let Some(postgres) = backend
        .as_any()
        .and_then(|b| b.downcast_ref::<PostgresStateBackend>())
    {
        postgres.close().await;
    }
}
