//! The subject of a conformance case: a backend under a fresh namespace, with sibling
//! namespaces over the same storage, all cleared after the case.

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};

use state_core::{Capabilities, Entry, Result, StateBackend};

use crate::harness::{Factory, Opened, Subject, show, unique_namespace};

/// What one conformance case works with: a backend under a fresh namespace, its
/// capabilities, and the factory for sibling namespaces over the same storage.
pub struct Ctx {
    factory: Factory,
    namespace: String,
    backend: Arc<dyn StateBackend>,
    caps: Capabilities,
    siblings: Mutex<Vec<Arc<dyn StateBackend>>>,
}

impl Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("namespace", &self.namespace)
            .field("backend", &self.backend)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    /// A context with a backend under a fresh [`unique_namespace`].
    pub async fn new(factory: Factory) -> Ctx {
        let namespace = unique_namespace();
        let backend = factory(namespace.clone()).await;
        let caps = backend.capabilities();
        Ctx {
            factory,
            namespace,
            backend,
            caps,
            siblings: Mutex::new(Vec::new()),
        }
    }

    /// The backend under test.
    pub fn backend(&self) -> &Arc<dyn StateBackend> {
        &self.backend
    }

    /// Its capabilities, read once.
    pub fn caps(&self) -> &Capabilities {
        &self.caps
    }

    /// The namespace (key prefix) of [`backend`](Self::backend).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Another backend over the same storage, under the namespace `t:<hex>/<name>:` (for
    /// the main namespace `t:<hex>:`, so neither is a prefix of the other); cleared by
    /// [`cleanup`](Self::cleanup) too.
    pub async fn sibling(&self, name: &str) -> Arc<dyn StateBackend> {
        let base = self.namespace.strip_suffix(':').unwrap_or(&self.namespace);
        let backend = (self.factory)(format!("{base}/{name}:")).await;
        self.siblings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&backend));
        backend
    }

    /// Clears every namespace this context made (keys and fencing marks).
    pub async fn cleanup(&self) -> Result<()> {
        let siblings: Vec<_> = self
            .siblings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut first_error = None;
        for backend in siblings.iter().chain(std::iter::once(&self.backend)) {
            if let Err(e) = backend.clear(b"").await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Scans `prefix`: checks ascending order where the backend claims
    /// [`Capabilities::ordered_scan`] and that no key comes twice (even a fuzzy scan, such as
    /// Redis SCAN, must drop the repeats its server produces), and returns the entries sorted
    /// by key.
    pub async fn scan(&self, backend: &dyn StateBackend, prefix: &[u8]) -> Result<Vec<Entry>> {
        let entries = state_core::stream::try_collect(backend.scan(prefix)).await?;
        Ok(self.normalize("scan", prefix, entries))
    }

    /// Exports `prefix`, with the same checks as [`scan`](Self::scan).
    pub async fn export(&self, backend: &dyn StateBackend, prefix: &[u8]) -> Result<Vec<Entry>> {
        let entries = state_core::stream::try_collect(backend.export(prefix)).await?;
        Ok(self.normalize("export", prefix, entries))
    }

    fn normalize(&self, what: &str, prefix: &[u8], mut entries: Vec<Entry>) -> Vec<Entry> {
        for entry in &entries {
            assert!(
                entry.key.starts_with(prefix),
                "{what}({}) returned key {} outside the prefix",
                show(prefix),
                show(&entry.key)
            );
        }
        if self.caps.ordered_scan {
            for pair in entries.windows(2) {
                if let [a, b] = pair {
                    assert!(
                        a.key < b.key,
                        "{what}({}) claims ordered_scan but returned {} before {}",
                        show(prefix),
                        show(&a.key),
                        show(&b.key)
                    );
                }
            }
        }
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        for pair in entries.windows(2) {
            if let [a, b] = pair {
                assert!(
                    a.key != b.key,
                    "{what}({}) returned key {} twice",
                    show(prefix),
                    show(&a.key)
                );
            }
        }
        entries
    }
}

impl Subject for Ctx {
    type Factory = Factory;

    const SUITE: &'static str = "conformance";

    async fn open(factory: Factory) -> Opened<Ctx> {
        let ctx = Arc::new(Ctx::new(factory).await);
        let on = format!("`{}` ({})", ctx.caps.backend, ctx.namespace);
        let cleared = Arc::clone(&ctx);
        Opened {
            subject: ctx,
            on,
            teardown: Box::pin(async move {
                cleared
                    .cleanup()
                    .await
                    .map_err(|e| format!("clearing its namespace failed: {e}"))
            }),
        }
    }
}
