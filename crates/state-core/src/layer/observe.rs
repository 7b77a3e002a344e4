//! [`Observer`]: a layer that only watches calls. Observers stacked next to each other share
//! one [`Layered`](super::Layered) and one pair of clock reads ([`Watched`]), so that
//! watching a call three ways costs little more than watching it once.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;

use crate::backend::{BoxStream, StateBackend};
use crate::error::{ErrorKind, Result};
use crate::stats::Stats;
use crate::types::Entry;

use super::hook::{Hook, Observed, Op, OpKind, Outcome};
use super::layered::Layered;

/// Watches the calls of a backend without changing them: told when each starts and how it
/// ended. [`StatsLayer`](super::StatsLayer) and state-metrics' layers are observers.
///
/// A [`Layer`](super::Layer) that is an observer says so with
/// [`Layer::observer`](super::Layer::observer); a [`Stack`](super::Stack) then gives
/// neighbouring observers one layer between them, with one clock read at the start of a
/// call and one at its end, and one look at the result.
pub trait Observer: Send + Sync + fmt::Debug + 'static {
    /// A point or batch call starts. A [`Scope`] returned here is entered around every poll
    /// of the call and told how it ended (a tracing span, say). Nothing by default.
    fn started(&self, op: &Op<'_>) -> Option<Box<dyn Scope>> {
        let _ = op;
        None
    }

    /// A scan or an export starts (its stream is handed out). Nothing by default.
    fn stream_started(&self, kind: OpKind) {
        let _ = kind;
    }

    /// A call ended: a point or batch call returned, or a stream ended or was dropped.
    fn finished(&self, call: &Finished);

    /// A point or batch call was dropped before it ended (its caller gave up waiting).
    /// Nothing by default.
    fn abandoned(&self, kind: OpKind) {
        let _ = kind;
    }

    /// The statistics the watched backend reports, given the inner one's.
    fn stats(&self, inner: Stats) -> Stats {
        inner
    }
}

/// What an [`Observer`] keeps from the start of one call to its end.
pub trait Scope: Send + Sync {
    /// Runs one poll of the call inside the scope.
    fn enter(&self, poll: &mut dyn FnMut());

    /// The call ended. Nothing by default.
    fn end(&self, call: &Finished) {
        let _ = call;
    }
}

/// How a call ended, as every observer of it sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Finished {
    /// Which operation.
    pub kind: OpKind,
    /// From the start of the call (or of the stream) to its end.
    pub elapsed: Duration,
    /// `None` if it succeeded, else the kind of its error.
    pub error: Option<ErrorKind>,
    /// Keys found and missed and value bytes read (a stream's bytes up to its end, even if
    /// it then failed); nothing for a failed point or batch call.
    pub observed: Observed,
    /// Key and value bytes the caller handed over, if the call succeeded; else 0.
    pub bytes_written: u64,
    /// How many keys or entries the call named (1 for a point call).
    pub entries: usize,
}

impl Finished {
    /// Whether the call succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// `inner` watched by `observer` alone: what an observer's [`Layer::layer`](super::Layer)
/// returns.
pub fn watch(observer: Arc<dyn Observer>, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
    Arc::new(Layered::new(Watched::new(vec![observer]), inner))
}

/// The [`Hook`] of neighbouring observers: the clock is read once at the start of a call
/// and once at its end, the result looked at once. Observers are told of a start
/// outermost first and of an end innermost first, as separate layers would tell them.
#[derive(Debug)]
pub struct Watched {
    observers: Vec<Arc<dyn Observer>>,
}

impl Watched {
    /// A hook for `observers`, innermost first.
    pub fn new(observers: Vec<Arc<dyn Observer>>) -> Watched {
        Watched { observers }
    }

    /// Tells every observer, innermost first, then ends the scopes.
    fn finished(&self, call: &Finished, scopes: &[Box<dyn Scope>]) {
        for observer in &self.observers {
            observer.finished(call);
        }
        for scope in scopes {
            scope.end(call);
        }
    }
}

/// The stripe this thread counts into, the same for the life of the thread: threads take
/// numbers in turn as they first ask (take it modulo the number of stripes). Observers
/// keep their counts per thread so that threads do not take turns owning one cache line.
pub fn thread_stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    STRIPE.with(|stripe| *stripe)
}

/// A clock read for timing calls: the CPU's counter where it is reliable (a few
/// nanoseconds), else the system's monotonic clock.
fn now() -> quanta::Instant {
    quanta::Instant::now()
}

/// Tells every observer that a call was abandoned, unless it ended first.
struct Pending<'a> {
    watched: &'a Watched,
    kind: OpKind,
    ended: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.ended {
            for observer in &self.watched.observers {
                observer.abandoned(self.kind);
            }
        }
    }
}

impl Hook for Watched {
    async fn around<T: Outcome>(
        &self,
        op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> Result<T> {
        let kind = op.kind;
        // Told before anything else: a call dropped from here on is abandoned.
        let mut pending = Pending {
            watched: self,
            kind,
            ended: false,
        };
        // Told outermost first, as separate layers would be; finished innermost first.
        let mut scopes: Vec<Box<dyn Scope>> = Vec::new();
        for observer in self.observers.iter().rev() {
            if let Some(scope) = observer.started(&op) {
                scopes.push(scope);
            }
        }
        let started = now();
        let out = if scopes.is_empty() {
            call.await
        } else {
            in_scopes(&scopes, call).await
        };
        pending.ended = true;
        let elapsed = now().saturating_duration_since(started);
        let (error, observed, bytes_written) = match &out {
            Ok(value) => (None, value.observed(), op.input.bytes_written()),
            Err(err) => (Some(err.kind()), Observed::default(), 0),
        };
        let finished = Finished {
            kind,
            elapsed,
            error,
            observed,
            bytes_written,
            entries: op.input.entries(),
        };
        self.finished(&finished, &scopes);
        out
    }

    fn around_stream<'a>(
        &'a self,
        kind: OpKind,
        stream: BoxStream<'a, Result<Entry>>,
    ) -> BoxStream<'a, Result<Entry>> {
        for observer in self.observers.iter().rev() {
            observer.stream_started(kind);
        }
        Box::pin(WatchedStream {
            watched: self,
            stream,
            kind,
            started: now(),
            read: 0,
            error: None,
            ended: false,
        })
    }

    fn stats(&self, inner: Stats) -> Stats {
        self.observers
            .iter()
            .fold(inner, |stats, observer| observer.stats(stats))
    }
}

/// `call`, each of its polls run inside every scope (the first outermost).
async fn in_scopes<T>(scopes: &[Box<dyn Scope>], call: impl Future<Output = T>) -> T {
    let mut call = pin!(call);
    poll_fn(|cx| {
        let mut polled = Poll::Pending;
        let mut poll = || polled = call.as_mut().poll(cx);
        enter_all(scopes, &mut poll);
        polled
    })
    .await
}

fn enter_all(scopes: &[Box<dyn Scope>], poll: &mut dyn FnMut()) {
    match scopes.split_first() {
        None => poll(),
        Some((first, rest)) => first.enter(&mut || enter_all(rest, poll)),
    }
}

/// A scan's or an export's stream: one call, from its start to its end or drop.
struct WatchedStream<'a> {
    watched: &'a Watched,
    stream: BoxStream<'a, Result<Entry>>,
    kind: OpKind,
    started: quanta::Instant,
    read: u64,
    error: Option<ErrorKind>,
    ended: bool,
}

impl WatchedStream<'_> {
    fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let finished = Finished {
            kind: self.kind,
            elapsed: now().saturating_duration_since(self.started),
            error: self.error,
            observed: Observed {
                bytes_read: self.read,
                ..Observed::default()
            },
            bytes_written: 0,
            entries: 0,
        };
        self.watched.finished(&finished, &[]);
    }
}

impl Stream for WatchedStream<'_> {
    type Item = Result<Entry>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.stream.as_mut().poll_next(cx);
        match &item {
            Poll::Ready(Some(Ok(entry))) => self.read += entry.value.len() as u64,
            Poll::Ready(Some(Err(err))) => {
                if self.error.is_none() {
                    self.error = Some(err.kind());
                }
            }
            Poll::Ready(None) => self.end(),
            Poll::Pending => {}
        }
        item
    }
}

impl Drop for WatchedStream<'_> {
    fn drop(&mut self) {
        self.end();
    }
}
