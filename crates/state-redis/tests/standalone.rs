//! The conformance and property suites against a standalone Redis
//! (`STATE_TEST_REDIS_URL`, else a local redis-server; see `testing::services::redis`).

use std::sync::Arc;

use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};

async fn backend(namespace: String) -> Arc<dyn StateBackend> {
    let service = testing::services::redis()
        .await
        .unwrap_or_else(|e| panic!("no Redis for the tests: {e}"));
    let config = RedisConfig::builder()
        .url(service.url())
        .key_prefix(namespace)
        .build()
        .unwrap_or_else(|e| panic!("bad test config: {e}"));
    let backend = RedisStateBackend::new(config)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", service.url()));
    Arc::new(backend)
}

testing::conformance_suite!(backend);
testing::property_suite!(backend);
