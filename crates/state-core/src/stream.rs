//! Small stream helpers, so that core needs no `futures` dependency beyond `futures-core`.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_core::stream::BoxStream;

/// A stream over an iterator that never waits.
pub fn iter<'a, I>(items: I) -> BoxStream<'a, I::Item>
where
    I: IntoIterator + 'a,
    I::IntoIter: Send + 'a,
    I::Item: Send + 'a,
{
    Box::pin(Iter(items.into_iter()))
}

/// A stream that yields `err` once.
pub fn once_err<'a, T: Send + 'a, E: Send + 'a>(err: E) -> BoxStream<'a, Result<T, E>> {
    iter(std::iter::once(Err(err)))
}

/// The next item of a stream.
pub async fn next<S: Stream + Unpin + ?Sized>(stream: &mut S) -> Option<S::Item> {
    poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Collects a stream of results, stopping at the first error.
pub async fn try_collect<T, E, S>(mut stream: S) -> Result<Vec<T>, E>
where
    S: Stream<Item = Result<T, E>> + Unpin,
{
    let mut out = Vec::new();
    while let Some(item) = next(&mut stream).await {
        out.push(item?);
    }
    Ok(out)
}

/// `stream`, unchanged, with `on_item` called for each item and `on_end(ok)` called once:
/// when the stream ends, or when it is dropped before. `ok` is false once an item was an
/// error. For layers that count or time a whole scan.
pub fn observed<'a, T, E, F, G>(
    stream: BoxStream<'a, Result<T, E>>,
    on_item: F,
    on_end: G,
) -> BoxStream<'a, Result<T, E>>
where
    T: Send + 'a,
    E: Send + 'a,
    F: FnMut(&T) + Send + 'a,
    G: FnOnce(bool) + Send + 'a,
{
    Box::pin(Observed {
        stream,
        on_item,
        on_end: Some(on_end),
        ok: true,
    })
}

struct Observed<'a, T, E, F, G: FnOnce(bool)> {
    stream: BoxStream<'a, Result<T, E>>,
    on_item: F,
    on_end: Option<G>,
    ok: bool,
}

// Nothing is pinned in place: the inner stream is boxed, the callbacks are only called.
impl<T, E, F, G: FnOnce(bool)> Unpin for Observed<'_, T, E, F, G> {}

impl<T, E, F, G: FnOnce(bool)> Observed<'_, T, E, F, G> {
    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.ok);
        }
    }
}

impl<T, E, F: FnMut(&T), G: FnOnce(bool)> Stream for Observed<'_, T, E, F, G> {
    type Item = Result<T, E>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.stream.as_mut().poll_next(cx);
        match &item {
            Poll::Ready(Some(Ok(value))) => (self.on_item)(value),
            Poll::Ready(Some(Err(_))) => self.ok = false,
            Poll::Ready(None) => self.end(),
            Poll::Pending => {}
        }
        item
    }
}

impl<T, E, F, G: FnOnce(bool)> Drop for Observed<'_, T, E, F, G> {
    fn drop(&mut self) {
        self.end();
    }
}

/// `stream` with `f` applied to each item.
pub fn map<'a, T, U, F>(stream: BoxStream<'a, T>, f: F) -> BoxStream<'a, U>
where
    T: 'a,
    F: FnMut(T) -> U + Send + 'a,
{
    Box::pin(Map { stream, f })
}

struct Map<'a, T, F> {
    stream: BoxStream<'a, T>,
    f: F,
}

// Nothing is pinned in place: the inner stream is boxed, `f` is only called.
impl<T, F> Unpin for Map<'_, T, F> {}

impl<T, U, F: FnMut(T) -> U> Stream for Map<'_, T, F> {
    type Item = U;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<U>> {
        match self.stream.as_mut().poll_next(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some((self.f)(item))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct Iter<I>(I);

// The iterator is never pinned in place: polling only calls `next` through `&mut`.
impl<I> Unpin for Iter<I> {}

impl<I: Iterator> Stream for Iter<I> {
    type Item = I::Item;
    fn poll_next(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<I::Item>> {
        Poll::Ready(self.0.next())
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}
