//! A plain TCP connection to a data node that gathers the small writes of many concurrent
//! callers into one, the way Nagle's algorithm does, but for one turn of the scheduler
//! instead of a round trip.
//!
//! With `TCP_NODELAY` every flush of the multiplexed connection goes out at once. Under
//! load that is one `write` (and one server `read`, one reply packet) per request: a
//! caller that queues a request wakes the connection's task, which the runtime runs next,
//! before the other callers that are ready to queue theirs. Nagle's algorithm would hold
//! those small writes until the server acknowledges the previous packet, which merges them
//! but can also stall a request for the peer's delayed ACK (40 ms).
//!
//! [`Corked`] holds a small write back only while the server still owes replies (so the
//! connection is busy anyway), and only once: it wakes its own task and yields, the other
//! ready callers queue their requests, and the next poll writes them all. A lone caller
//! never waits (nothing is owed when it writes); a write waits at most one turn of the
//! scheduler, never for a timer or the network.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes at least this large go out at once: the connection's own write buffer flushes
/// at 8 KiB, and a large value gains nothing from waiting for company.
const HOLD_BELOW: usize = 8 * 1024;

/// A stream whose small writes wait one scheduler turn while replies are owed.
pub(super) struct Corked<S> {
    inner: S,
    /// Bytes were written and no reply has been read since: the server is working for us.
    replies_owed: bool,
    /// The write now pending was already held back once; the next poll sends it.
    held: bool,
}

impl<S> Corked<S> {
    pub(super) fn new(inner: S) -> Corked<S> {
        Corked {
            inner,
            replies_owed: false,
            held: false,
        }
    }

    /// Whether a write of `len` bytes should wait one turn (and note that it did).
    fn hold(&mut self, len: usize) -> bool {
        let hold = self.replies_owed && !self.held && len < HOLD_BELOW;
        self.held = hold;
        hold
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hold(buf.len()) {
            // Runs again after the tasks already ready: those queue their requests first.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.replies_owed |= written > 0;
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.replies_owed = false;
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_small_write_once_and_only_while_replies_are_owed() {
        let mut corked = Corked::new(());
        assert!(!corked.hold(10), "nothing owed: a lone caller never waits");
        corked.replies_owed = true;
        assert!(corked.hold(10), "owed: the first poll holds");
        assert!(!corked.hold(10), "the second poll sends");
        assert!(corked.hold(10), "the next write may wait again");
        corked.held = false;
        assert!(!corked.hold(HOLD_BELOW), "a large write goes at once");
    }
}
