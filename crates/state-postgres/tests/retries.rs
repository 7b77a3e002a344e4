//! The retry rule, provoked deterministically through a fault-injecting proxy: a statement
//! reaches PostgreSQL and commits, its reply is dropped and the connection reset
//! (`testing::faults::LostReply`).
//!
//! - A blind write of unknown outcome is not sent again: a `put` (an upsert) whose row
//!   another client consumed in the meantime does not come back, and neither do a
//!   `batch_put`'s rows; a `delete` that deleted never reports `false`.
//! - A read is sent again and succeeds.

mod common;

use std::sync::Arc;

use state_core::StateBackend;
use state_postgres::{PostgresConfig, PostgresStateBackend};
use testing::faults::{LostReply, proxy_in_front_of};

/// The backend through a proxy (one connection, so the armed fault hits the statement
/// under test) and one straight to the server, both under one fresh key prefix.
async fn subject() -> Result<LostReply, Box<dyn std::error::Error + Send + Sync>> {
    let prefix = testing::conformance::unique_namespace();
    let url = common::url().await;
    let (proxy, proxied) = proxy_in_front_of(&url).await?;
    let config = |url: &str| {
        PostgresConfig::new(url)
            .with_schema(common::SHARED_SCHEMA)
            .with_ssl_mode("disable")
            .with_key_prefix(&prefix)
    };
    let through =
        PostgresStateBackend::new(config(&proxied).with_pool_size(1, 1).with_coalescing(0)).await?;
    // The connection is open, idle, and has prepared every statement under test: the next
    // reply is the one of the statement under test, not of its preparation.
    through.put(b"warm-up", b"x").await?;
    through.batch_put(&[(b"warm-up", b"x")]).await?;
    through.get(b"warm-up").await?;
    through.delete(b"warm-up").await?;
    Ok(LostReply {
        proxy,
        through: Arc::new(through),
        direct: Arc::new(PostgresStateBackend::new(config(&url)).await?),
    })
}

testing::lost_reply_suite!(subject);
