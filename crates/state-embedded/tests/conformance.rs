//! The conformance suite and the model-based properties on the redb backend.

use std::sync::{Arc, OnceLock};

use state_core::StateBackend;
use state_embedded::RedbBackend;

/// One database for the whole test process: redb opens a file once, and namespaces must
/// share storage as on a server. Its directory is removed at once: on Unix the open file
/// lives on unlinked and vanishes when the process exits, so no run leaves files behind.
fn database() -> &'static RedbBackend {
    static DB: OnceLock<RedbBackend> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = tempfile::tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let backend = RedbBackend::open(dir.path().join("conformance.redb"))
            .unwrap_or_else(|e| panic!("cannot open the redb file: {e}"));
        drop(dir);
        backend
    })
}

async fn redb(namespace: String) -> Arc<dyn StateBackend> {
    Arc::new(database().with_prefix(namespace))
}

testing::conformance_suite!(redb);
testing::property_suite!(redb);
