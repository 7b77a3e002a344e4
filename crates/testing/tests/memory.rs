//! The conformance suite and the model-based properties on the in-memory backend.

use std::sync::{Arc, OnceLock};

use state_core::{MemoryBackend, MemoryStore, StateBackend};

/// One store for the whole test process, so namespaces share storage as on a server.
fn store() -> &'static MemoryStore {
    static STORE: OnceLock<MemoryStore> = OnceLock::new();
    STORE.get_or_init(MemoryStore::new)
}

async fn memory(namespace: String) -> Arc<dyn StateBackend> {
    let backend = MemoryBackend::builder()
        .store(store().clone())
        .key_prefix(namespace)
        .build()
        .unwrap_or_else(|e| panic!("cannot build the memory backend: {e}"));
    Arc::new(backend)
}

testing::conformance_suite!(memory);
testing::property_suite!(memory);
