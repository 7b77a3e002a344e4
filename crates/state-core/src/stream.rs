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
