//! What the container suite and the matrix share: backends opened on a server's URL under
//! a namespace, and the full layer stack.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use state_core::{Limits, LimitsLayer, Stack, StateBackend, StatsLayer, TimeoutLayer};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::conformance::Factory;

/// The schema the suites use on a PostgreSQL server: each case works under its own key
/// prefix there and clears it afterwards, so runs share it and nothing is dropped.
pub const SCHEMA: &str = "testing_matrix";

/// Every layer of state-core and state-metrics, outermost first: what the matrix's `full`
/// cells run the suites under. Layers are transparent, so the suites must pass unchanged.
pub fn full_stack() -> Stack {
    Stack::new()
        .layer(StatsLayer::new())
        .layer(state_metrics::MetricsLayer::new())
        .layer(state_metrics::TracingLayer::new())
        // Far above any case's own waits: the deadline must never decide an outcome.
        .layer(TimeoutLayer::new(Duration::from_secs(60)))
        // Narrower than every backend's own, so the limit cases meet the layer.
        .layer(LimitsLayer::new(Limits {
            max_key_len: 256,
            max_value_len: 2 << 20,
        }))
}

/// A factory over `open`, each backend wrapped in `stack` (empty: bare).
pub fn layered<F, Fut>(stack: Stack, open: F) -> Factory
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Arc<dyn StateBackend>> + Send + 'static,
{
    let open = Arc::new(open);
    testing::conformance::factory(move |namespace: String| {
        let open = open.clone();
        let stack = stack.clone();
        async move { stack.apply(open(namespace).await) }
    })
}

/// A Redis backend on `url` (any topology the URL names) under `namespace`.
pub async fn redis(
    url: String,
    namespace: String,
    ca_pem: Option<Vec<u8>>,
) -> Arc<dyn StateBackend> {
    let mut builder = RedisConfig::builder()
        .url(url.clone())
        .key_prefix(namespace);
    if let Some(ca) = ca_pem {
        builder = builder.tls_root_ca_pem(ca);
    }
    let config = builder
        .build()
        .unwrap_or_else(|e| panic!("bad Redis config for {url}: {e}"));
    match RedisStateBackend::new(config).await {
        Ok(backend) => Arc::new(backend),
        Err(e) => panic!("cannot open the Redis backend on {url}: {e}"),
    }
}

/// The PostgreSQL config for `url` in [`SCHEMA`]: loopback, so no TLS.
pub fn postgres_config(url: &str) -> PostgresConfig {
    PostgresConfig::new(url)
        .with_schema(SCHEMA)
        .with_ssl_mode("disable")
}

/// Applies the migrations to [`SCHEMA`] on `url` (a direct connection).
pub async fn migrate(url: &str) {
    if let Err(e) = state_postgres::migrate(&postgres_config(url)).await {
        panic!("migrating {SCHEMA} on {url} failed: {e}");
    }
}

/// A PostgreSQL backend on `url` under `namespace`, without migrations ([`migrate`] first).
pub async fn postgres(url: String, namespace: String) -> Arc<dyn StateBackend> {
    let config = postgres_config(&url)
        .with_key_prefix(namespace)
        .with_pool_size(1, 8)
        .with_migrations(false);
    match PostgresStateBackend::new(config).await {
        Ok(backend) => Arc::new(backend),
        Err(e) => panic!("cannot open the PostgreSQL backend on {url}: {e}"),
    }
}
