//! [`TracingLayer`]: a `tracing` span around every call of a backend.

use std::sync::Arc;

use state_core::layer::{Finished, Observer, Scope, watch};
use state_core::{Layer, Op, StateBackend};
use tracing::Span;
use tracing::field::Empty;
use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};

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
        watch(Arc::new(Traced { backend }), inner)
    }

    fn observer(&self, inner: &Arc<dyn StateBackend>) -> Option<Arc<dyn Observer>> {
        let backend = inner.capabilities().backend;
        Some(Arc::new(Traced { backend }))
    }
}

/// The observer of [`TracingLayer`].
#[derive(Debug)]
struct Traced {
    backend: &'static str,
}

impl Observer for Traced {
    fn started(&self, op: &Op<'_>) -> Option<Box<dyn Scope>> {
        // No subscriber wants debug spans (one atomic load): no span at all. The macro alone
        // would also look for a `log` logger, which this layer does not feed.
        if LevelFilter::current() < LevelFilter::DEBUG || STATIC_MAX_LEVEL < LevelFilter::DEBUG {
            return None;
        }
        let span = tracing::debug_span!(
            "state",
            backend = self.backend,
            operation = op.kind.name(),
            key_len = op.input.key_len(),
            entries = Empty,
            outcome = Empty,
        );
        // Without a subscriber interested, no span: nothing to enter, nothing allocated.
        if span.is_disabled() {
            return None;
        }
        if op.input.key_len().is_none() && op.input.entries() > 0 {
            span.record("entries", op.input.entries());
        }
        Some(Box::new(InSpan(span)))
    }

    fn finished(&self, _call: &Finished) {}
}

/// A call's span, entered around each poll of the call.
struct InSpan(Span);

impl Scope for InSpan {
    fn enter(&self, poll: &mut dyn FnMut()) {
        self.0.in_scope(poll);
    }

    fn end(&self, call: &Finished) {
        match call.error {
            None => self.0.record("outcome", "ok"),
            Some(kind) => self.0.record("outcome", kind.name()),
        };
    }
}
