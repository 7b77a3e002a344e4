//! [`Layered`]: a backend wrapped in a [`Hook`]; the one place that lists every trait method
//! for layers, so that a layer only says what it does around a call.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{BoxStream, StateBackend};
use crate::error::Result;
use crate::stats::{Gauge, Stats};
use crate::types::{Capabilities, Checkpoint, Entry, FencingToken, Health, ImportMode, Ttl};

use super::hook::{Hook, Input, Op, OpKind};

/// A backend seen through a hook: every call goes through [`Hook::around`], and what
/// the hook does not touch passes through to the inner backend unchanged (its own batch,
/// checkpoint and restore included).
#[derive(Debug)]
pub struct Layered<H> {
    hook: H,
    inner: Arc<dyn StateBackend>,
}

impl<H: Hook> Layered<H> {
    /// `inner` seen through `hook`.
    pub fn new(hook: H, inner: Arc<dyn StateBackend>) -> Layered<H> {
        Layered { hook, inner }
    }

    /// The hook.
    pub fn hook(&self) -> &H {
        &self.hook
    }

    /// The backend underneath.
    pub fn inner(&self) -> &Arc<dyn StateBackend> {
        &self.inner
    }
}

fn op(kind: OpKind, input: Input<'_>) -> Op<'_> {
    Op { kind, input }
}

#[async_trait]
impl<H: Hook> StateBackend for Layered<H> {
    fn capabilities(&self) -> Capabilities {
        self.hook.capabilities(self.inner.capabilities())
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let op = op(OpKind::Get, Input::Key(key));
        self.hook.around(op, self.inner.get(key)).await
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let op = op(OpKind::Put, Input::Entry(key, value));
        self.hook.around(op, self.inner.put(key, value)).await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let op = op(OpKind::PutWithTtl, Input::Entry(key, value));
        let call = self.inner.put_with_ttl(key, value, ttl);
        self.hook.around(op, call).await
    }

    async fn put_with_metadata(
        &self,
        key: &[u8],
        value: &[u8],
        metadata: serde_json::Value,
    ) -> Result<()> {
        let op = op(OpKind::PutWithMetadata, Input::Entry(key, value));
        let call = self.inner.put_with_metadata(key, value, metadata);
        self.hook.around(op, call).await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        let op = op(OpKind::Delete, Input::Key(key));
        self.hook.around(op, self.inner.delete(key)).await
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        let op = op(OpKind::BatchGet, Input::Keys(keys));
        self.hook.around(op, self.inner.batch_get(keys)).await
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        let op = op(OpKind::BatchPut, Input::Entries(entries));
        self.hook.around(op, self.inner.batch_put(entries)).await
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        let op = op(OpKind::BatchDelete, Input::Keys(keys));
        self.hook.around(op, self.inner.batch_delete(keys)).await
    }

    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let op = op(OpKind::GetAndDelete, Input::Key(key));
        self.hook.around(op, self.inner.get_and_delete(key)).await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let op = op(OpKind::SetIfNotExists, Input::Entry(key, value));
        let call = self.inner.set_if_not_exists(key, value, ttl);
        self.hook.around(op, call).await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        let op = op(OpKind::CompareAndSwap, Input::Swap(key, expected, new));
        let call = self.inner.compare_and_swap(key, expected, new);
        self.hook.around(op, call).await
    }

    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()> {
        let op = op(OpKind::PutFenced, Input::Entry(key, value));
        let call = self.inner.put_fenced(key, value, token);
        self.hook.around(op, call).await
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        let op = op(OpKind::Ttl, Input::Key(key));
        self.hook.around(op, self.inner.ttl(key)).await
    }

    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.hook
            .around_stream(OpKind::Scan, self.inner.scan(prefix))
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        let op = op(OpKind::Count, Input::Prefix(prefix));
        self.hook.around(op, self.inner.count(prefix)).await
    }

    async fn clear(&self, prefix: &[u8]) -> Result<u64> {
        let op = op(OpKind::Clear, Input::Prefix(prefix));
        self.hook.around(op, self.inner.clear(prefix)).await
    }

    async fn checkpoint(&self) -> Result<Checkpoint> {
        let op = op(OpKind::Checkpoint, Input::None);
        self.hook.around(op, self.inner.checkpoint()).await
    }

    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        let op = op(OpKind::Restore, Input::None);
        let checked = self.hook.check_entries(checkpoint.entries());
        let call = async move {
            checked?;
            self.inner.restore(checkpoint).await
        };
        self.hook.around(op, call).await
    }

    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.hook
            .around_stream(OpKind::Export, self.inner.export(prefix))
    }

    async fn import(&self, entries: BoxStream<'_, Result<Entry>>, mode: ImportMode) -> Result<u64> {
        let op = op(OpKind::Import, Input::None);
        let entries = self.hook.around_entries(entries);
        self.hook.around(op, self.inner.import(entries, mode)).await
    }

    async fn health_check(&self) -> Result<Health> {
        let op = op(OpKind::HealthCheck, Input::None);
        self.hook.around(op, self.inner.health_check()).await
    }

    async fn stats(&self) -> Stats {
        self.hook.stats(self.inner.stats().await)
    }

    async fn gauges(&self) -> Result<Vec<Gauge>> {
        self.inner.gauges().await
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }
}
