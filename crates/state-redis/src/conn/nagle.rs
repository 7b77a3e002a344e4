//! A plain TCP connection to a data node on which the kernel merges the small writes of
//! concurrent callers (Nagle's algorithm), with `TCP_NODELAY` only for the rest of a write
//! the kernel took in part.
//!
//! Why writes may wait: under load, concurrent callers each queue one small request, and
//! the multiplexed connection flushes after each. With `TCP_NODELAY` that is one packet and
//! one server `read` per request. With Nagle's algorithm the kernel sends a write at once
//! when nothing it sent is waiting for an acknowledgement, and otherwise holds it, merging
//! the writes made meanwhile: the first request after a quiet spell goes at once, and the
//! requests that arrive while the server works go out together. This module replaced
//! holding small writes in user space for a turn of the scheduler, which left both the
//! client and the server idle between batches: at 16 tasks it made two to three times the
//! context switches and about a third fewer gets per second (BENCHMARKS.md, notes on the
//! peer numbers).
//!
//! Why that never waits out a delayed ACK: Nagle's algorithm stalls when it holds the end
//! of a request while the server, holding only its start, has nothing to answer and delays
//! its acknowledgement (40 ms on Linux). Linux holds a packet shorter than a segment only
//! while an earlier such packet is unacknowledged (Minshall's variant). The multiplexed
//! connection writes whole requests, so when a write is taken whole, the last and only
//! short packet of what the kernel queued ends where a request ends: the server can answer
//! it, and its answer acknowledges the packet and releases the next. So a held write waits
//! at most for the server's answer to requests it already has whole. A write the kernel
//! takes only in part breaks that (its short packet may end inside a request): its rest
//! goes with `TCP_NODELAY`, which also sends whatever the kernel holds.
//!
//! Other systems hold a short packet while *any* packet is unacknowledged, the tail of a
//! request longer than a segment included, so there connections keep `TCP_NODELAY` on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream with Nagle's algorithm on, except for the rest of a partial write.
pub(super) struct NagleForSmallWrites {
    inner: TcpStream,
    /// `TCP_NODELAY` as configured, if it was: then it stays as it is.
    forced: Option<bool>,
    /// Whether `TCP_NODELAY` is on now.
    nodelay: bool,
    /// The last write was partial: its rest goes with `TCP_NODELAY`.
    unfinished: bool,
}

impl NagleForSmallWrites {
    /// Takes over `socket`. `nodelay` is the configured `tcp_nodelay`: `None` switches as
    /// above (on Linux; elsewhere it is `Some(true)`), `Some(on)` keeps `TCP_NODELAY` `on`.
    pub(super) fn new(socket: TcpStream, nodelay: Option<bool>) -> io::Result<Self> {
        let forced = if cfg!(target_os = "linux") {
            nodelay
        } else {
            Some(nodelay.unwrap_or(true))
        };
        let nodelay = forced.unwrap_or(false);
        socket.set_nodelay(nodelay)?;
        Ok(NagleForSmallWrites {
            inner: socket,
            forced,
            nodelay,
            unfinished: false,
        })
    }

    /// Whether the next write should go with `TCP_NODELAY`.
    fn wants_nodelay(&self) -> bool {
        self.forced.unwrap_or(self.unfinished)
    }
}

impl AsyncWrite for NagleForSmallWrites {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let nodelay = self.wants_nodelay();
        if nodelay != self.nodelay {
            self.inner.set_nodelay(nodelay)?;
            self.nodelay = nodelay;
        }
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.unfinished = written < buf.len();
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for NagleForSmallWrites {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair(listener: &TcpListener) -> io::Result<(TcpStream, TcpStream)> {
        let client = TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        Ok((client, server))
    }

    /// Nagle for whole writes, `TCP_NODELAY` for the rest of a partial one: a write larger
    /// than both socket buffers is taken in parts while nobody reads, and its bytes still
    /// arrive whole and in order.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn whole_writes_use_nagle_and_the_rest_of_a_partial_one_goes_at_once() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (client, mut server) = pair(&listener).await?;
        client.set_nodelay(true)?;
        let mut stream = NagleForSmallWrites::new(client, None)?;
        assert!(!stream.inner.nodelay()?, "opens with Nagle");

        stream.write_all(b"*1\r\n$4\r\nPING\r\n").await?;
        assert!(
            !stream.unfinished && !stream.inner.nodelay()?,
            "a whole write: Nagle"
        );

        let large = vec![b'x'; 32 << 20];
        let reader = tokio::spawn(async move {
            // Nothing is read until the writer has had to wait for buffer space.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let mut got = vec![0; 14 + (32 << 20)];
            server.read_exact(&mut got).await.map(|_| got)
        });
        let written =
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_write(cx, &large)).await?;
        assert!(
            written < large.len(),
            "32 MiB taken whole although nobody reads"
        );
        assert!(stream.unfinished);
        stream.write_all(&large[written..]).await?;
        assert!(
            stream.nodelay && stream.inner.nodelay()?,
            "the rest went at once"
        );

        stream.write_all(b"x").await?;
        assert!(
            !stream.inner.nodelay()?,
            "the next whole write: Nagle again"
        );
        let got = reader.await.map_err(io::Error::other)??;
        assert_eq!(&got[..14], b"*1\r\n$4\r\nPING\r\n");
        assert!(got[14..].iter().all(|&b| b == b'x'));
        Ok(())
    }

    #[tokio::test]
    async fn a_configured_tcp_nodelay_holds_for_every_write() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        for on in [true, false] {
            let (client, _server) = pair(&listener).await?;
            let mut stream = NagleForSmallWrites::new(client, Some(on))?;
            for len in [1, 1 << 20] {
                stream.write_all(&vec![b'x'; len]).await?;
                assert_eq!(stream.inner.nodelay()?, on, "tcp_nodelay={on}, {len} bytes");
            }
        }
        Ok(())
    }
}
