//! [`Registry`]: URL schemes mapped to backend constructors, so that a binary linking some
//! backends can open any of them by URL and name the missing ones clearly.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::backend::StateBackend;
use crate::error::{Result, StateError};
use crate::url::{Scheme, StateUrl};

/// A future that opens a backend.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn StateBackend>>> + Send>>;

/// A function that opens a backend from a parsed URL.
pub type Connector = Arc<dyn Fn(StateUrl) -> ConnectFuture + Send + Sync>;

/// Maps URL schemes to backend constructors, so that a binary linking some backends can open
/// any of them by URL and name the missing ones clearly.
///
/// ```
/// # tokio_test_block_on(async {
/// let registry = state_core::Registry::new(); // memory:// is always there
/// let backend = registry.connect("memory://?prefix=app:").await?;
/// backend.put(b"k", b"v").await?;
/// assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v"[..]));
/// # Ok::<(), state_core::StateError>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct Registry {
    connectors: BTreeMap<Scheme, Connector>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.connectors.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry that knows `memory://`.
    pub fn new() -> Self {
        let mut registry = Registry {
            connectors: BTreeMap::new(),
        };
        registry.register(&[Scheme::Memory], |url| {
            Box::pin(async move {
                let backend = crate::memory::MemoryBackend::from_url(&url)?;
                Ok(Arc::new(backend) as Arc<dyn StateBackend>)
            })
        });
        registry
    }

    /// Registers `connector` for `schemes`, replacing any earlier one.
    pub fn register<F>(&mut self, schemes: &[Scheme], connector: F)
    where
        F: Fn(StateUrl) -> ConnectFuture + Send + Sync + 'static,
    {
        let connector: Connector = Arc::new(connector);
        for scheme in schemes {
            self.connectors.insert(*scheme, connector.clone());
        }
    }

    /// The schemes this registry can open.
    pub fn schemes(&self) -> Vec<Scheme> {
        self.connectors.keys().copied().collect()
    }

    /// Parses `url` and opens the backend it names.
    pub async fn connect(&self, url: &str) -> Result<Arc<dyn StateBackend>> {
        self.connect_url(StateUrl::parse(url)?).await
    }

    /// Opens the backend a parsed URL names.
    pub async fn connect_url(&self, url: StateUrl) -> Result<Arc<dyn StateBackend>> {
        let Some(connector) = self.connectors.get(&url.scheme()) else {
            let known: Vec<&str> = self.connectors.keys().map(|s| s.as_str()).collect();
            return Err(StateError::config(format!(
                "this program was built without the {} backend; it can open: {}",
                url.scheme(),
                known.join(", ")
            )));
        };
        connector(url).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registry_names_backends_it_lacks() {
        let registry = Registry::new();
        let err = registry.connect("redis://127.0.0.1:1").await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("without the redis backend"), "{msg}");
        assert!(registry.connect("memory://").await.is_ok());
    }
}
