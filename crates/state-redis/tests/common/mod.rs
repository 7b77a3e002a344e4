//! Runs the shared suites inside ONE test against a topology started once per process.
//!
//! nextest runs every `#[test]` in its own process, so the one-test-per-case expansion of
//! `testing::conformance_suite!` would start a Cluster or Sentinel topology per case. Here
//! the cases run from a single test, four at a time, each still on its own runtime and
//! namespace, through `testing::conformance::run_all_in_one`.

#![allow(dead_code)]

use std::sync::Arc;

use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend};
use testing::conformance::Factory;

/// A factory over `url` (a redis+cluster or redis+sentinel URL) with the namespace as prefix.
pub fn factory(url: &'static str) -> Factory {
    testing::conformance::factory(move |namespace: String| async move {
        let config = RedisConfig::builder()
            .url(url)
            .key_prefix(namespace)
            .build()
            .unwrap_or_else(|e| panic!("bad test config: {e}"));
        let backend = RedisStateBackend::new(config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
        Arc::new(backend) as Arc<dyn StateBackend>
    })
}

/// Runs every conformance case (four at a time), then every property, in one test.
pub fn run_suites(factory: Factory) {
    testing::conformance::run_all_in_one(factory, 4);
}

/// A runtime for starting topologies and for the mode-specific checks.
pub fn runtime() -> tokio::runtime::Runtime {
    testing::conformance::runtime()
}
