//! The conformance suite and the model-based properties against Redis and PostgreSQL in
//! containers started by the testcontainers fixtures (feature `containers`), on the host's
//! network. The images come from `STATE_TEST_REDIS_IMAGE` / `STATE_TEST_POSTGRES_IMAGE`
//! (`cargo xtask services up` builds local ones), else the official images.
//!
//! A missing engine fails these tests with the fixture's message: `cargo xtask ci` runs
//! them after starting one, and a run that asked for containers must not pass without.

mod support;

use state_core::Stack;
use testing::services::containers::{self, Container};

/// Starts a container on a runtime of its own (the suites' cases build theirs).
fn start(
    what: &str,
    start: impl std::future::Future<Output = Result<Container, testing::services::ServiceError>>,
) -> (tokio::runtime::Runtime, Container) {
    let runtime = testing::conformance::runtime();
    let reachable = runtime.block_on(containers::docker_reachable());
    assert!(
        reachable,
        "no Docker engine answers (DOCKER_HOST={:?}): run `cargo xtask services up` as root, \
         which installs and starts one and prints what to export",
        std::env::var("DOCKER_HOST").unwrap_or_default()
    );
    let container = runtime
        .block_on(start)
        .unwrap_or_else(|e| panic!("the {what} container did not start: {e}"));
    eprintln!("{what}: {} at {}", container.image(), container.url());
    (runtime, container)
}

/// Removes the container on the runtime that started it.
fn stop(runtime: tokio::runtime::Runtime, container: Container) {
    runtime.block_on(async move { drop(container) });
}

#[test]
fn redis_in_a_container_passes_the_suites() {
    let (runtime, container) = start("Redis", containers::start_redis());
    let url = container.url();
    let factory = support::layered(Stack::new(), move |namespace| {
        support::redis(url.clone(), namespace, None)
    });
    testing::conformance::run_all_in_one(factory, 4);
    stop(runtime, container);
}

#[test]
fn postgres_in_a_container_passes_the_suites() {
    let (runtime, container) = start("PostgreSQL", containers::start_postgres());
    let url = container.url();
    runtime.block_on(support::migrate(&url));
    let factory = support::layered(Stack::new(), move |namespace| {
        support::postgres(url.clone(), namespace)
    });
    testing::conformance::run_all_in_one(factory, 4);
    stop(runtime, container);
}
