//! The conformance suite and the model-based properties on a backend under every layer of
//! state-core: layers are transparent, so the stack must keep every semantic the bare
//! backend has (expiry, atomics, fencing, scans, snapshots), and the limit cases, which
//! read the limits from `capabilities()`, meet the limits layer's narrower ones.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use state_core::{
    Limits, LimitsLayer, MemoryBackend, MemoryStore, Stack, StateBackend, StatsLayer, TimeoutLayer,
};

/// One store for the whole test process, so namespaces share storage as on a server.
fn store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::new)
}

async fn layered(namespace: String) -> Arc<dyn StateBackend> {
    let backend = MemoryBackend::builder()
        .store(store().clone())
        .key_prefix(namespace)
        .build()
        .unwrap_or_else(|e| panic!("cannot build the memory backend: {e}"));
    Stack::new()
        .layer(StatsLayer::new())
        // Far above any case's own waits: the deadline must never decide an outcome here.
        .layer(TimeoutLayer::new(Duration::from_secs(60)))
        // Narrower than the backend's own, so the suite's limit cases meet the layer.
        .layer(LimitsLayer::new(Limits {
            max_key_len: 256,
            max_value_len: 2 << 20,
        }))
        .apply(Arc::new(backend))
}

testing::conformance_suite!(layered);
testing::property_suite!(layered);
