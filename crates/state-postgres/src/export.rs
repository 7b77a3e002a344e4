//! `export`: one `COPY (SELECT … ORDER BY key) TO STDOUT (FORMAT binary)` inside a
//! `REPEATABLE READ READ ONLY` transaction, parsed as it arrives.
//!
//! Why COPY: reading the rows as 500-row keyset pages cost one query per page and an
//! entry built from each decoded row; a checkpoint took 3.1 x psql's COPY of the same
//! rows. The binary COPY stream is one statement, decoded by slicing the received
//! buffers (keys and values are views of them, not copies).
//!
//! The COPY borrows the connection for as long as rows flow, which a stream returned to
//! the caller cannot hold beside the connection it borrows from. So the export runs as one
//! future (the producer) that hands batches of entries through a small bounded channel to
//! the stream; the stream polls the producer itself, on the caller's task, whenever the
//! channel is empty. Memory stays at a few batches whatever the size of the export.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use sqlx::PgConnection;
use state_core::{BoxStream, Entry, Result, StateError};
use tokio::sync::mpsc;

use crate::copy::{CopyReader, Fields, bytes_field, jsonb_field, timestamptz_field};
use crate::driver::{PostgresStateBackend, micros_to_time};

/// Entries handed over at a time, and batches in flight: bounded memory, few wake-ups.
const BATCH: usize = 512;
const BATCHES_IN_FLIGHT: usize = 4;

impl PostgresStateBackend {
    /// The live entries under `prefix`, in key order, from one consistent snapshot.
    pub(crate) fn export_copy(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        let (lower, upper) = self.namespace_range(prefix);
        let sql = self.inner.sql.export_copy(&lower, upper.as_deref());
        // On a runtime the COPY is read on a task of its own, so that the socket keeps
        // being drained (and the server keeps producing) while the caller is busy with
        // what it received: compressing, writing a file.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let backend = self.clone();
                spawned(&runtime, move |sink| async move {
                    backend.export_into(&sql, sink).await
                })
            }
            Err(_) => generate(move |sink| async move { self.export_into(&sql, sink).await }),
        }
    }

    async fn export_into(&self, sql: &str, sink: Sink<Entry>) -> Result<()> {
        let what = "export";
        let mut c = self.checkout().await?;
        c.begin(what, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        self.allow_long_statement(&mut c, what).await?;
        let mut failed = None;
        let copied = {
            let conn = c.begin_query()?;
            self.copy_out(conn, sql, &sink, &mut failed).await
        };
        // A malformed stream or a gone consumer: the checkout stays marked in use and is
        // discarded on drop, so the rest of the COPY is never read and the server rolls
        // back.
        if let Some(err) = failed {
            return Err(err);
        }
        c.settle(what, copied)?;
        c.commit(what).await
    }

    /// Reads the COPY to its end, sending entries to `sink`; a decoding error is put in
    /// `failed` and ends the reading at once.
    async fn copy_out(
        &self,
        conn: &mut PgConnection,
        sql: &str,
        sink: &Sink<Entry>,
        failed: &mut Option<StateError>,
    ) -> std::result::Result<(), sqlx::Error> {
        let mut data = conn.copy_out_raw(sql).await?;
        let mut reader = CopyReader::<4>::new();
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(chunk) = data.next().await {
            let fed = reader.feed(chunk?, |fields| {
                batch.push(self.entry_from_copy(fields)?);
                Ok(())
            });
            let sent = match fed {
                Ok(()) if batch.len() >= BATCH => {
                    sink.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                        .await
                }
                other => other,
            };
            if let Err(err) = sent {
                *failed = Some(err);
                return Ok(());
            }
        }
        let mut finished = reader.finish();
        if finished.is_ok() && !batch.is_empty() {
            finished = sink.send(batch).await;
        }
        if let Err(err) = finished {
            *failed = Some(err);
        }
        Ok(())
    }

    /// An entry from a row of `key, value, metadata, expires_at`.
    fn entry_from_copy(&self, [key, value, metadata, expires]: Fields<4>) -> Result<Entry> {
        let mut key = bytes_field(key, "key")?;
        if !key.starts_with(&self.inner.prefix) {
            return Err(StateError::corrupt(
                "a row outside the key prefix came back from a prefix query",
            ));
        }
        bytes::Buf::advance(&mut key, self.inner.prefix.len());
        Ok(Entry {
            key,
            value: bytes_field(value, "value")?,
            expires_at: timestamptz_field(expires.as_deref())?
                .map(micros_to_time)
                .transpose()?,
            metadata: jsonb_field(metadata.as_deref())?,
        })
    }
}

/// Where the producer of [`generate`] puts its batches.
pub(crate) struct Sink<T>(mpsc::Sender<Vec<T>>);

impl<T> Sink<T> {
    /// Hands over a batch, waiting while the consumer is behind.
    pub async fn send(&self, batch: Vec<T>) -> Result<()> {
        self.0.send(batch).await.map_err(|_| {
            StateError::new(
                state_core::ErrorKind::Backend,
                "internal error: the export's consumer went away",
            )
        })
    }
}

type Producer<'a> = Pin<Box<dyn Future<Output = Result<()>> + Send + 'a>>;

/// Like [`generate`], with `produce` running as a task on `runtime`: it works ahead of
/// the consumer by up to the channel's few batches. Dropping the stream aborts the task.
pub(crate) fn spawned<T, F, Fut>(
    runtime: &tokio::runtime::Handle,
    produce: F,
) -> BoxStream<'static, Result<T>>
where
    T: Send + 'static,
    F: FnOnce(Sink<T>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    generate(|sink| {
        let task = AbortOnDrop(runtime.spawn(produce(sink)));
        async move {
            let mut task = task;
            match (&mut task.0).await {
                Ok(outcome) => outcome,
                Err(e) => Err(StateError::new(
                    state_core::ErrorKind::Backend,
                    format!("internal error: the export task ended abnormally ({e})"),
                )),
            }
        }
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A stream of what `produce` sends to its sink, then its error if it fails. `produce` runs
/// inside the stream's `poll_next` (no task is spawned), only while the stream has nothing
/// buffered, and is dropped with the stream.
pub(crate) fn generate<'a, T, F, Fut>(produce: F) -> BoxStream<'a, Result<T>>
where
    T: Send + 'a,
    F: FnOnce(Sink<T>) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'a,
{
    let (tx, rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    Box::pin(Generated {
        producer: Some(Box::pin(produce(Sink(tx)))),
        rx,
        current: Vec::new().into_iter(),
        error: None,
        done: false,
    })
}

struct Generated<'a, T> {
    producer: Option<Producer<'a>>,
    rx: mpsc::Receiver<Vec<T>>,
    current: std::vec::IntoIter<T>,
    /// The producer's error, reported after everything it sent before failing.
    error: Option<StateError>,
    done: bool,
}

// Nothing inside is pinned structurally: items are moved out, the producer is boxed.
impl<T> Unpin for Generated<'_, T> {}

impl<T> Stream for Generated<'_, T> {
    type Item = Result<T>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<T>>> {
        let this = self.get_mut();
        loop {
            if let Some(item) = this.current.next() {
                return Poll::Ready(Some(Ok(item)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => {
                    this.current = batch.into_iter();
                    continue;
                }
                // Every sender is gone: the end, once the producer's outcome is known (a
                // spawned producer's task drops its sink before its handle reports).
                Poll::Ready(None) if this.producer.is_none() => {
                    this.done = true;
                    return Poll::Ready(this.error.take().map(Err));
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
            let Some(producer) = this.producer.as_mut() else {
                // The producer is done but a sender lives (it kept a clone): nothing more
                // will come from it.
                this.done = true;
                return Poll::Ready(this.error.take().map(Err));
            };
            match producer.as_mut().poll(cx) {
                Poll::Ready(outcome) => {
                    // Dropping it drops its sink, so the channel ends after its last batch.
                    this.producer = None;
                    this.error = outcome.err();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    async fn collect<T>(stream: BoxStream<'_, Result<T>>) -> Vec<Result<T>> {
        stream.collect::<Vec<_>>().await
    }

    #[tokio::test]
    async fn generated_streams_yield_every_batch_then_the_error() {
        let items = collect(generate(|sink: Sink<u32>| async move {
            for start in 0..10 {
                sink.send((start * 3..start * 3 + 3).collect()).await?;
            }
            Err(StateError::corrupt("boom"))
        }))
        .await;
        let (ok, err): (Vec<_>, Vec<_>) = items.into_iter().partition(|r| r.is_ok());
        let ok: Vec<u32> = ok.into_iter().flatten().collect();
        assert_eq!(ok, (0..30).collect::<Vec<_>>());
        assert_eq!(err.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spawned_streams_report_the_error_after_every_batch() {
        let runtime = tokio::runtime::Handle::current();
        for _ in 0..50 {
            let items = collect(spawned(&runtime, |sink: Sink<u32>| async move {
                for start in 0..20 {
                    sink.send(vec![start]).await?;
                }
                Err(StateError::corrupt("boom"))
            }))
            .await;
            assert_eq!(items.len(), 21);
            assert!(items.last().is_some_and(|r| r.is_err()));
        }
        // Dropped early, the task is aborted and nothing hangs.
        let mut stream = spawned(&runtime, |sink: Sink<u32>| async move {
            loop {
                sink.send(vec![1]).await?;
            }
        });
        assert!(matches!(stream.next().await, Some(Ok(1))));
        drop(stream);
    }

    #[tokio::test]
    async fn generated_streams_end_after_success() {
        let items = collect(generate(|sink: Sink<Bytes>| async move {
            sink.send(vec![Bytes::from_static(b"a")]).await
        }))
        .await;
        assert_eq!(items.len(), 1);
        assert!(items.iter().all(|r| r.is_ok()));
    }
}
