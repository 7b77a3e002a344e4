//! [`LimitsLayer`]: an application's own, narrower key and value limits.

use std::future::Future;
use std::sync::Arc;

use crate::backend::{BoxStream, StateBackend};
use crate::error::Result;
use crate::types::{Capabilities, Entry, Limits};

use super::Layer;
use super::hook::{Hook, Op, OpKind, Outcome};
use super::layered::Layered;

/// Refuses keys and values over an application's limits with an
/// [`InvalidInput`](crate::ErrorKind::InvalidInput) error naming the limit, before the
/// backend sees the call; the wrapped backend's [`Capabilities`] show the narrower limits.
///
/// A limit wider than the backend's own changes nothing: the backend still refuses what
/// its store cannot hold. The checks borrow the input and allocate nothing unless they fail.
#[derive(Debug, Clone, Copy)]
pub struct LimitsLayer {
    limits: Limits,
    /// Whether the wrapped backend stores metadata: where it does not, its own
    /// `Unsupported` answers `put_with_metadata` whatever the input, as without the layer.
    metadata: bool,
}

impl LimitsLayer {
    /// Keys up to `limits.max_key_len` bytes, values up to `limits.max_value_len`.
    pub fn new(limits: Limits) -> LimitsLayer {
        LimitsLayer {
            limits,
            metadata: true,
        }
    }
}

impl Layer for LimitsLayer {
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        let caps = inner.capabilities();
        let own = caps.limits();
        let limits = Limits {
            max_key_len: self.limits.max_key_len.min(own.max_key_len),
            max_value_len: self.limits.max_value_len.min(own.max_value_len),
        };
        let metadata = caps.metadata;
        Arc::new(Layered::new(LimitsLayer { limits, metadata }, inner))
    }
}

impl Hook for LimitsLayer {
    fn around<T: Outcome>(
        &self,
        op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        // A layer answers what the bare backend would: an operation it does not support is
        // `Unsupported` before any input is looked at.
        let unsupported = op.kind == OpKind::PutWithMetadata && !self.metadata;
        let checked = if unsupported {
            Ok(())
        } else {
            op.input.check(&self.limits)
        };
        async move {
            checked?;
            call.await
        }
    }

    fn around_entries<'a>(
        &'a self,
        entries: BoxStream<'a, Result<Entry>>,
    ) -> BoxStream<'a, Result<Entry>> {
        // An entry over the limits becomes an error in the stream: the import stops there,
        // and backends with atomic restore keep the old state.
        crate::stream::map(entries, move |entry| {
            let entry = entry?;
            self.limits.check_entry(&entry.key, &entry.value)?;
            Ok(entry)
        })
    }

    fn check_entries(&self, entries: &[Entry]) -> Result<()> {
        entries
            .iter()
            .try_for_each(|e| self.limits.check_entry(&e.key, &e.value))
    }

    fn capabilities(&self, mut inner: Capabilities) -> Capabilities {
        inner.max_key_len = inner.max_key_len.min(self.limits.max_key_len);
        inner.max_value_len = inner.max_value_len.min(self.limits.max_value_len);
        inner
    }
}
