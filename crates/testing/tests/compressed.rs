//! The conformance suite and the model-based properties through the compression layer,
//! with a 16-byte threshold so that most values the suites write are stored compressed:
//! on memory (one test per case), and on the shared Redis and PostgreSQL (one test each,
//! every case in it, as the matrix runs them). The layer is transparent, so every semantic
//! of the bare backend must hold, compare-and-swap and checkpoints included.

mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use state_core::{
    CompressionLayer, Limits, LimitsLayer, MemoryBackend, MemoryStore, Stack, StateBackend,
    StatsLayer, TimeoutLayer,
};
use testing::services;

/// Small enough that nearly every value of the suites is compressed (when that helps).
const THRESHOLD: usize = 16;

/// Conformance cases at a time on a server, as in the matrix.
const PARALLEL: usize = 8;

/// The layers of the matrix's stack, with `compression` innermost: the limits apply to the
/// values the application writes, and the stats count them.
fn stack(compression: CompressionLayer) -> Stack {
    Stack::new()
        .layer(StatsLayer::new())
        // Far above any case's own waits: the deadline must never decide an outcome here.
        .layer(TimeoutLayer::new(Duration::from_secs(60)))
        .layer(LimitsLayer::new(Limits {
            max_key_len: 256,
            max_value_len: 2 << 20,
        }))
        .layer(compression.threshold(THRESHOLD))
}

/// One store for the whole test process, so namespaces share storage as on a server.
fn store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::new)
}

async fn compressed(namespace: String) -> Arc<dyn StateBackend> {
    let backend = MemoryBackend::builder()
        .store(store().clone())
        .key_prefix(namespace)
        .build()
        .unwrap_or_else(|e| panic!("cannot build the memory backend: {e}"));
    stack(CompressionLayer::lz4()).apply(Arc::new(backend))
}

testing::conformance_suite!(compressed);
testing::property_suite!(compressed);

#[test]
fn redis_under_lz4_passes_the_suites() {
    let runtime = testing::conformance::runtime();
    let url = runtime
        .block_on(services::redis())
        .unwrap_or_else(|e| panic!("no Redis to test on: {e}"))
        .url();
    let factory = support::layered(stack(CompressionLayer::lz4()), move |namespace| {
        support::redis(url.clone(), namespace, None)
    });
    testing::conformance::run_all_in_one(factory, PARALLEL);
}

#[test]
fn postgres_under_zstd_passes_the_suites() {
    let runtime = testing::conformance::runtime();
    let url = runtime
        .block_on(services::postgres_url())
        .unwrap_or_else(|e| panic!("no PostgreSQL to test on: {e}"));
    runtime.block_on(support::migrate(&url));
    let factory = support::layered(stack(CompressionLayer::zstd(3)), move |namespace| {
        support::postgres(url.clone(), namespace)
    });
    testing::conformance::run_all_in_one(factory, PARALLEL);
}
