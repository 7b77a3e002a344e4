//! A caller that gives up: the fault an in-process backend (memory, redb) can meet, where
//! no connection can break.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;

use crate::history::FaultLog;
use bytes::Bytes;
use state_core::{
    BoxStream, Capabilities, Checkpoint, Entry, ErrorKind, FencingToken, Health, ImportMode,
    Result, StateBackend, StateError, Ttl,
};

/// Wraps a backend so that every `every`-th key-value call is abandoned part-way: its
/// future is polled 0, 1 or 2 times (so it may not have started, may be queued, or may be
/// done) and then dropped, and the call reports a `Timeout` error of unknown outcome, as a
/// caller's own timeout would.
///
/// A backend must then behave as if the call happened at most once, at some point after
/// it was made: a history checker sees exactly that. Scans, imports and the rest are passed
/// through untouched.
#[derive(Debug)]
pub struct Impatient {
    inner: Arc<dyn StateBackend>,
    every: u64,
    calls: AtomicU64,
    log: Arc<FaultLog>,
}

impl Impatient {
    /// Abandons every `every`-th call (at least every second one) of `inner`, noting each
    /// in `log` as "call abandoned".
    pub fn new(inner: Arc<dyn StateBackend>, every: u64, log: Arc<FaultLog>) -> Impatient {
        Impatient {
            inner,
            every: every.max(2),
            calls: AtomicU64::new(0),
            log,
        }
    }

    /// Calls abandoned so far.
    pub fn abandoned(&self) -> u64 {
        self.calls.load(Ordering::Relaxed) / self.every
    }

    async fn call<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        if !n.is_multiple_of(self.every) {
            return call.await;
        }
        self.log.note("call abandoned", 1);
        let mut call = pin!(call);
        for _ in 0..(n / self.every) % 3 {
            let polled = poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            if let Poll::Ready(result) = polled {
                // It finished before the caller gave up: the caller still walks away.
                drop(result);
                break;
            }
            tokio::task::yield_now().await;
        }
        Err(StateError::new(
            ErrorKind::Timeout,
            "the caller gave up on this call (testing::faults::Impatient); it may have been \
             applied",
        )
        .with_outcome_unknown())
    }
}

#[async_trait]
impl StateBackend for Impatient {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.call(self.inner.get(key)).await
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.call(self.inner.put(key, value)).await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        self.call(self.inner.put_with_ttl(key, value, ttl)).await
    }

    async fn put_with_metadata(
        &self,
        key: &[u8],
        value: &[u8],
        metadata: serde_json::Value,
    ) -> Result<()> {
        self.call(self.inner.put_with_metadata(key, value, metadata))
            .await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.call(self.inner.delete(key)).await
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        self.call(self.inner.batch_get(keys)).await
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        self.call(self.inner.batch_put(entries)).await
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        self.call(self.inner.batch_delete(keys)).await
    }

    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.call(self.inner.get_and_delete(key)).await
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.call(self.inner.set_if_not_exists(key, value, ttl))
            .await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        self.call(self.inner.compare_and_swap(key, expected, new))
            .await
    }

    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()> {
        self.call(self.inner.put_fenced(key, value, token)).await
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.call(self.inner.ttl(key)).await
    }

    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.inner.scan(prefix)
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        self.inner.count(prefix).await
    }

    async fn clear(&self, prefix: &[u8]) -> Result<u64> {
        self.inner.clear(prefix).await
    }

    async fn checkpoint(&self) -> Result<Checkpoint> {
        self.inner.checkpoint().await
    }

    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        self.inner.restore(checkpoint).await
    }

    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        self.inner.export(prefix)
    }

    async fn import(&self, entries: BoxStream<'_, Result<Entry>>, mode: ImportMode) -> Result<u64> {
        self.inner.import(entries, mode).await
    }

    async fn health_check(&self) -> Result<Health> {
        self.inner.health_check().await
    }
}
