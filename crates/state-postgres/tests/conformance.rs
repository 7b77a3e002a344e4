//! The shared conformance suite and model-based properties against a real PostgreSQL:
//! one schema for all of them, each test under its own key prefix, cleared afterwards.

mod common;

use std::sync::Arc;

use state_postgres::{PostgresStateBackend, StateBackend};
use tokio::sync::OnceCell;

/// Migrates the shared schema once per test process; backends then open without it.
async fn migrated() {
    static ONCE: OnceCell<()> = OnceCell::const_new();
    ONCE.get_or_init(|| async {
        let config = common::config(common::SHARED_SCHEMA).await;
        if let Err(e) = state_postgres::migrate(&config).await {
            panic!("migrating the test schema failed: {e}");
        }
    })
    .await;
}

async fn postgres(namespace: String) -> Arc<dyn StateBackend> {
    migrated().await;
    let config = common::config(common::SHARED_SCHEMA)
        .await
        .with_key_prefix(namespace)
        .with_pool_size(1, 8)
        .with_migrations(false);
    match PostgresStateBackend::new(config).await {
        Ok(backend) => Arc::new(backend),
        Err(e) => panic!("cannot open the PostgreSQL backend: {e}"),
    }
}

testing::conformance_suite!(postgres);
testing::property_suite!(postgres);
