//! [`Registry`]: the composition root. URL schemes mapped to the constructors of backends
//! and lock services, and the layers to wrap them in, so that a binary linking some crates
//! opens any of them by URL and names the missing ones clearly.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::StateBackend;
use crate::error::{ErrorKind, Result, StateError};
use crate::layer::{CompressionLayer, Stack, StatsLayer, TimeoutLayer};
use crate::lock::DistributedLock;
use crate::memory::MEMORY;
use crate::url::{Scheme, StateUrl, parse_duration};

/// A future that opens a backend.
pub type ConnectFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn StateBackend>>> + Send>>;

/// A function that opens a backend from a parsed URL.
pub type Connector = Arc<dyn Fn(StateUrl) -> ConnectFuture + Send + Sync>;

/// A future that opens a lock service.
pub type LockConnectFuture = Pin<Box<dyn Future<Output = Result<Arc<dyn DistributedLock>>> + Send>>;

/// A function that opens a lock service from a parsed URL.
pub type LockConnector = Arc<dyn Fn(StateUrl, LockOptions) -> LockConnectFuture + Send + Sync>;

/// What a caller may set for a lock service besides its URL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// How long `acquire` waits for a busy lock; `None`: the URL's `wait_timeout=`, else
    /// the service's default.
    pub wait_timeout: Option<Duration>,
}

impl LockOptions {
    /// `acquire` waits up to `wait`.
    pub fn with_wait_timeout(mut self, wait: Duration) -> LockOptions {
        self.wait_timeout = Some(wait);
        self
    }
}

/// URL parameters every registry reads itself, for the layers they name:
///
/// - `stats=true`: a [`StatsLayer`] (the guide's `stats()` counters);
/// - `deadline=DURATION`: a [`TimeoutLayer`] bounding each call, on backends and locks,
///   below every other layer so that they see its timeouts;
/// - `compress=lz4|zstd`: a [`CompressionLayer`] (zstd at level 3), innermost, so that the
///   layers above see and count the values the application wrote;
/// - `compress_min=BYTES`: the values it compresses, at least this long (default 1024;
///   only with `compress`).
///
/// Crates add switches of their own with [`Registry::register_switch`] (state-metrics:
/// `metrics=true`, `tracing=true`).
pub const LAYER_PARAMS: [&str; 4] = ["stats", "deadline", "compress", "compress_min"];

/// Layers a URL switches on with `PARAM=true`.
#[derive(Debug, Clone)]
struct Switch {
    param: &'static str,
    stack: Stack,
}

/// The composition root: opens backends and lock services by URL, each wrapped in the
/// layers the URL names (see [`LAYER_PARAMS`]) under those set in code.
///
/// Each backend crate registers its schemes (`state_redis::register(&mut registry)`) and
/// reads its own URL parameters; the registry hands the layer parameters to the layers
/// and the lock parameters to the lock services, and a parameter nobody reads is a
/// [`Config`](ErrorKind::Config) error naming it.
///
/// ```
/// use state_core::{Registry, StatsLayer};
/// # tokio_test_block_on(async {
/// let registry = Registry::new().layer(StatsLayer::new()); // memory:// is always there
/// let backend = registry.connect("memory://?prefix=app:&deadline=2s").await?;
/// backend.put(b"k", b"v").await?;
/// assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v"[..]));
/// assert_eq!(backend.stats().await.total_operations(), 2);
/// # Ok::<(), state_core::StateError>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone)]
pub struct Registry {
    connectors: BTreeMap<Scheme, Connector>,
    locks: BTreeMap<Scheme, LockConnector>,
    /// Every scheme registered, backend or lock, in the order registered: what
    /// [`parse`](Self::parse) accepts and its messages list.
    known: Vec<Scheme>,
    stack: Stack,
    switches: Vec<Switch>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.connectors.keys().collect::<Vec<_>>())
            .field("lock_schemes", &self.locks.keys().collect::<Vec<_>>())
            .field("stack", &self.stack)
            .field("switches", &self.switches)
            .finish()
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

impl Registry {
    /// A registry that knows `memory://` backends and no lock service.
    pub fn new() -> Self {
        let mut registry = Registry {
            connectors: BTreeMap::new(),
            locks: BTreeMap::new(),
            known: Vec::new(),
            stack: Stack::new(),
            switches: Vec::new(),
        };
        registry.register_switch("stats", Stack::new().layer(StatsLayer::new()));
        registry.register(&[MEMORY], |url| {
            Box::pin(async move {
                let backend = crate::memory::MemoryBackend::from_url(&url)?;
                Ok(Arc::new(backend) as Arc<dyn StateBackend>)
            })
        });
        registry
    }

    /// Registers `connector` for the backends of `schemes`, replacing any earlier one.
    pub fn register<F>(&mut self, schemes: &[Scheme], connector: F)
    where
        F: Fn(StateUrl) -> ConnectFuture + Send + Sync + 'static,
    {
        let connector: Connector = Arc::new(connector);
        for scheme in schemes {
            self.know(*scheme);
            self.connectors.insert(*scheme, connector.clone());
        }
    }

    /// Registers `connector` for the lock services of `schemes`, replacing any earlier one.
    pub fn register_locks<F>(&mut self, schemes: &[Scheme], connector: F)
    where
        F: Fn(StateUrl, LockOptions) -> LockConnectFuture + Send + Sync + 'static,
    {
        let connector: LockConnector = Arc::new(connector);
        for scheme in schemes {
            self.know(*scheme);
            self.locks.insert(*scheme, connector.clone());
        }
    }

    /// Remembers `scheme` for [`parse`](Self::parse): a scheme registered again (with a
    /// new shape, say) replaces the earlier one in place.
    fn know(&mut self, scheme: Scheme) {
        match self.known.iter_mut().find(|known| **known == scheme) {
            Some(known) => *known = scheme,
            None => self.known.push(scheme),
        }
    }

    /// Lets URLs switch `stack` on with `param=true` (`param=false` or no parameter: off).
    /// Switched-on stacks apply in the order they were registered, below the layers set
    /// in code and above the URL's `deadline`; registering `param` again replaces it.
    pub fn register_switch(&mut self, param: &'static str, stack: Stack) {
        self.switches.retain(|s| s.param != param);
        self.switches.push(Switch { param, stack });
    }

    /// Adds `layer` to every backend this registry opens, below the layers added before
    /// and above those the URL names.
    pub fn layer(mut self, layer: impl crate::layer::Layer) -> Registry {
        self.stack = self.stack.layer(layer);
        self
    }

    /// Adds `layer` to every lock service this registry opens (as [`layer`](Self::layer)).
    pub fn lock_layer(mut self, layer: impl crate::layer::LockLayer) -> Registry {
        self.stack = self.stack.lock_layer(layer);
        self
    }

    /// The schemes whose backends this registry can open.
    pub fn schemes(&self) -> Vec<Scheme> {
        self.connectors.keys().copied().collect()
    }

    /// The schemes whose lock services this registry can open.
    pub fn lock_schemes(&self) -> Vec<Scheme> {
        self.locks.keys().copied().collect()
    }

    /// Parses `url` as a URL of a scheme registered here, for a backend or a lock service;
    /// an unknown scheme is a [`Config`](ErrorKind::Config) error listing the known ones.
    pub fn parse(&self, url: &str) -> Result<StateUrl> {
        StateUrl::parse(url, &self.known)
    }

    /// Parses `url` and opens the backend it names.
    pub async fn connect(&self, url: &str) -> Result<Arc<dyn StateBackend>> {
        self.connect_url(self.parse(url)?).await
    }

    /// Opens the backend a parsed URL names, in its layers.
    pub async fn connect_url(&self, mut url: StateUrl) -> Result<Arc<dyn StateBackend>> {
        let Some(connector) = self.connectors.get(&url.scheme()) else {
            let known: Vec<&str> = self.connectors.keys().map(|s| s.as_str()).collect();
            return Err(StateError::config(format!(
                "this program was built without the {} backend; it can open: {}",
                url.scheme(),
                known.join(", ")
            )));
        };
        let named = self.url_layers(&mut url)?;
        let backend = connector(url).await?;
        Ok(self.stack.apply(named.apply(backend)))
    }

    /// Parses `url` and opens the lock service it names.
    pub async fn connect_lock(&self, url: &str) -> Result<Arc<dyn DistributedLock>> {
        self.connect_lock_url(self.parse(url)?, LockOptions::default())
            .await
    }

    /// Opens the lock service a parsed URL names, with `options`, in its layers.
    pub async fn connect_lock_url(
        &self,
        mut url: StateUrl,
        options: LockOptions,
    ) -> Result<Arc<dyn DistributedLock>> {
        let Some(connector) = self.locks.get(&url.scheme()) else {
            return Err(self.no_lock_for(url.scheme()));
        };
        let named = self.url_layers(&mut url)?;
        let lock = connector(url, options).await?;
        Ok(self.stack.apply_lock(named.apply_lock(lock)))
    }

    fn no_lock_for(&self, scheme: Scheme) -> StateError {
        if self.locks.is_empty() {
            return StateError::config(
                "this program registered no lock service (state_lock::register does)",
            );
        }
        StateError::new(
            ErrorKind::Unsupported,
            format!(
                "a {scheme} URL cannot hold locks shared by processes: use a redis:// or \
                 postgres:// URL (memory:// holds locks within one process)"
            ),
        )
    }
}

impl Registry {
    /// The layers `url` names, outermost first; their parameters are handed over, so that
    /// the backend or lock service accepts them without reading them.
    fn url_layers(&self, url: &mut StateUrl) -> Result<Stack> {
        let mut stack = Stack::new();
        for switch in &self.switches {
            match url.param(switch.param) {
                None | Some("false") => {}
                Some("true") => stack.extend(&switch.stack),
                Some(other) => {
                    return Err(StateError::config(format!(
                        "parameter `{param}`: `{other}` is not valid; write {param}=true or \
                         {param}=false",
                        param = switch.param
                    )));
                }
            }
            url.hand_over(&[switch.param]);
        }
        if let Some(raw) = url.param("deadline") {
            let deadline = parse_duration(raw).map_err(|e| {
                StateError::config(format!("parameter `deadline`: {}", e.message()))
            })?;
            if deadline.is_zero() {
                return Err(StateError::config(
                    "parameter `deadline`: 0 would end every call at once; leave it out for none",
                ));
            }
            let timeout = TimeoutLayer::new(deadline);
            stack = stack.layer(timeout).lock_layer(timeout);
        }
        url.hand_over(&["deadline"]);
        if let Some(compression) = compression(url)? {
            stack = stack.layer(compression);
        }
        url.hand_over(&["compress", "compress_min"]);
        Ok(stack)
    }
}

/// The compression layer the URL's `compress` and `compress_min` name, if any.
fn compression(url: &StateUrl) -> Result<Option<CompressionLayer>> {
    let min = url.param("compress_min");
    let layer = match url.param("compress") {
        None if min.is_some() => {
            return Err(StateError::config(
                "parameter `compress_min` needs `compress=lz4` or `compress=zstd` too",
            ));
        }
        None => return Ok(None),
        Some("lz4") => CompressionLayer::lz4(),
        Some("zstd") if cfg!(feature = "zstd") => CompressionLayer::zstd(3),
        Some("zstd") => {
            return Err(StateError::config(
                "parameter `compress`: this program was built without zstd (the `zstd` \
                 feature of state-core); use compress=lz4 or enable the feature",
            ));
        }
        Some(other) => {
            return Err(StateError::config(format!(
                "parameter `compress`: `{other}` is not an algorithm; write compress=lz4 or \
                 compress=zstd"
            )));
        }
    };
    let Some(min) = min else {
        return Ok(Some(layer));
    };
    let bytes = min.parse::<usize>().map_err(|_| {
        StateError::config(format!(
            "parameter `compress_min`: `{min}` is not a number of bytes; write e.g. \
             compress_min=1024"
        ))
    })?;
    Ok(Some(layer.threshold(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::MemoryBackend;

    #[tokio::test]
    async fn registry_names_backends_it_lacks() {
        let registry = Registry::new();
        // Core knows no backend but memory: a scheme no crate registered is unknown here.
        let err = registry.connect("redis://127.0.0.1:1").await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            msg.contains("unknown URL scheme `redis`; use memory://"),
            "{msg}"
        );
        assert!(registry.connect("memory://").await.is_ok());
    }

    #[tokio::test]
    async fn url_layers_are_applied_and_their_parameters_checked() -> Result<()> {
        let registry = Registry::new();
        let counted = registry.connect("memory://?stats=true&deadline=1s").await?;
        counted.put(b"k", b"v").await?;
        assert_eq!(counted.stats().await.operations, 1);
        let bare = registry.connect("memory://?stats=false").await?;
        bare.put(b"k", b"v").await?;
        assert_eq!(bare.stats().await.operations, 0);
        for (url, named) in [
            ("memory://?stats=yes", "`stats`"),
            ("memory://?deadline=soon", "`deadline`"),
            ("memory://?deadline=0s", "`deadline`"),
            ("memory://?dedline=1s", "`dedline`"),
        ] {
            let err = registry.connect(url).await.err();
            assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Config));
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(named), "{url}: {msg}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn compress_parameters_name_a_compression_layer() -> Result<()> {
        let registry = Registry::new();
        let value = "{\"k\": 1} ".repeat(20);
        let zstd = cfg!(feature = "zstd").then_some("memory://?compress=zstd&compress_min=16");
        for url in ["memory://?compress=lz4&compress_min=16"]
            .into_iter()
            .chain(zstd)
        {
            let backend = registry.connect(url).await?;
            backend.put(b"k", value.as_bytes()).await?;
            assert_eq!(backend.get(b"k").await?.as_deref(), Some(value.as_bytes()));
            // Stored compressed: the store is read without the layer.
            let memory = backend
                .as_any()
                .and_then(|b| b.downcast_ref::<MemoryBackend>());
            let store = memory.map(|m| m.store().clone()).unwrap_or_default();
            let bare = MemoryBackend::builder().store(store).build()?;
            let stored = bare.get(b"k").await?.unwrap_or_default();
            assert!(stored.starts_with(&CompressionLayer::MAGIC), "{url}");
        }
        for (url, named) in [
            ("memory://?compress=gzip", "`compress`"),
            ("memory://?compress=lz4&compress_min=1k", "`compress_min`"),
            ("memory://?compress_min=10", "`compress_min`"),
        ] {
            let err = registry.connect(url).await.err();
            assert_eq!(err.as_ref().map(|e| e.kind()), Some(ErrorKind::Config));
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.contains(named), "{url}: {msg}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn a_registry_without_lock_services_says_so() {
        let registry = Registry::new();
        let err = registry.connect_lock("memory://").await.err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("no lock service"), "{msg}");
    }
}
