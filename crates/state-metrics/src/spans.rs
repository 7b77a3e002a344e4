//! [`TracingLayer`]: a `tracing` span around every call of a backend.

use std::future::Future;
use std::sync::Arc;

use state_core::{Hook, Layer, Layered, Op, Outcome, Result, StateBackend};
use tracing::Instrument;
use tracing::field::Empty;

/// Opens a `debug`-level span named `state` around every call, with the fields `backend`,
/// `operation`, `key_len` (point calls), `entries` (batch calls) and, when the call ends,
/// `outcome` (`ok` or the error kind). A user's subscriber (OpenTelemetry, fmt) then sees
/// the state calls inside their own spans.
///
/// Keys and values never appear in a span: their contents may be personal data or secrets,
/// and their cardinality is unbounded. Without a subscriber interested in `debug` spans
/// the layer costs one cached check per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingLayer {
    _private: (),
}

impl TracingLayer {
    /// A layer that opens spans on the current dispatcher.
    pub fn new() -> TracingLayer {
        TracingLayer::default()
    }
}

impl Layer for TracingLayer {
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        let backend = inner.capabilities().backend;
        Arc::new(Layered::new(Traced { backend }, inner))
    }
}

/// The hook of [`TracingLayer`].
#[derive(Debug)]
struct Traced {
    backend: &'static str,
}

impl Hook for Traced {
    fn around<T: Outcome>(
        &self,
        op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let span = tracing::debug_span!(
            "state",
            backend = self.backend,
            operation = op.kind.name(),
            key_len = op.input.key_len(),
            entries = Empty,
            outcome = Empty,
        );
        if !span.is_disabled() && op.input.key_len().is_none() && op.input.entries() > 0 {
            span.record("entries", op.input.entries());
        }
        let recorded = span.clone();
        async move {
            let out = call.instrument(span).await;
            if !recorded.is_disabled() {
                match &out {
                    Ok(_) => recorded.record("outcome", "ok"),
                    Err(e) => recorded.record("outcome", e.kind().name()),
                };
            }
            out
        }
    }
}
