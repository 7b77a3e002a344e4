//! A plain TCP connection to a data node on which, under load and where it pays on this
//! machine, the kernel merges the writes of concurrent callers (Nagle's algorithm), and
//! which otherwise sends each write at once (`TCP_NODELAY`).
//!
//! Why merge under load: concurrent callers each queue one small request, and the
//! multiplexed connection flushes after each. With `TCP_NODELAY` that is one packet and
//! one server `read` per request. With Nagle's algorithm the kernel sends a write at once
//! when nothing it sent is waiting for an acknowledgement, and otherwise holds it, merging
//! the writes made meanwhile: the first request after a quiet spell goes at once, and those
//! that arrive while the server works go out together. This module replaced holding small
//! writes in user space for a turn of the scheduler, which left both the client and the
//! server idle between batches: at 16 tasks it made two to three times the context
//! switches and about a third fewer gets per second (BENCHMARKS.md, notes on the peer
//! numbers).
//!
//! Why only under load: a held write waits for the server's answer to an earlier one. With
//! few requests in flight that wait is most of the round trip, and the merge saves little:
//! at 8 tasks Nagle did 80k gets/s against 124k without it, at 16 tasks 205k against 150k.
//! So the connection counts the requests waiting for replies ([`Load`]) and is loaded from
//! [`MERGE_FROM`] of them until they fall below [`MERGE_UNTIL_BELOW`] (two bounds, so that
//! it does not switch back and forth).
//!
//! Why by trial: whether merging pays under load depends on the machine. Where idle cores
//! halt and are slow to wake, the client and the server idling between merged batches
//! costs more than the merge saves (gets at 16 tasks on one VM: 136-142k/s merged,
//! 190-236k/s at once; on the same VM with polling idle cores, 400-407k/s merged and
//! 221-230k/s at once). So a loaded connection measures how long its requests wait each
//! way, in turns, and writes the way that waits less ([`Trial`]). Scripts count like any
//! request: whether merging them pays differs by machine too (`Open::query` in
//! `single.rs`).
//!
//! Why merging never waits out a delayed ACK: Nagle's algorithm stalls when it holds the
//! end of a request while the server, holding only its start, has nothing to answer and
//! delays its acknowledgement (40 ms on Linux). Linux holds a packet shorter than a segment
//! only while an earlier such packet is unacknowledged (Minshall's variant). The
//! multiplexed connection writes whole requests, so when a write is taken whole, the last
//! and only short packet of what the kernel queued ends where a request ends: the server
//! can answer it, and its answer acknowledges the packet and releases the next. So a held
//! write waits at most for the server's answer to requests it already has whole. A write
//! the kernel takes only in part breaks that (its short packet may end inside a request):
//! its rest goes with `TCP_NODELAY`, which also sends whatever the kernel holds.
//!
//! Other systems hold a short packet while *any* packet is unacknowledged, the tail of a
//! request longer than a segment included, so there connections keep `TCP_NODELAY` on.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Requests waiting for replies from which a connection merges writes.
const MERGE_FROM: usize = 12;

/// Requests waiting for replies below which a merging connection sends at once again.
const MERGE_UNTIL_BELOW: usize = 8;

/// Requests answered per epoch of a [`Trial`]: about 10-40 ms at the loads where merging
/// matters, several scheduler ticks, so one preempted thread does not decide an epoch.
const EPOCH: u64 = 4096;

/// How much less (in tenths) unmerged requests must wait on average than merged ones for a
/// trial to stop merging: merging is what saves the server work, so a tie keeps it.
const UNMERGED_WINS_BELOW_TENTHS: u64 = 9;

/// Epochs a loaded connection writes the way its last trial chose, before it tries both
/// ways again; doubled each time a trial confirms the way before, up to
/// [`MAX_CHOSEN_EPOCHS`], since trying the worse way costs most where the ways differ most
/// (gets at 64 tasks on one VM: 342-375k/s merged, 233-235k/s not).
const CHOSEN_EPOCHS: u32 = 16;

/// The most epochs between two trials: about a million requests, seconds under load, so a
/// connection still notices within seconds when the other way starts to pay.
const MAX_CHOSEN_EPOCHS: u32 = 256;

/// The requests of one connection that wait for their replies, counted by the callers,
/// and, while a [`Trial`] compares the two ways, how long the answered ones waited.
///
/// Why only then: timing a request reads the clock twice and adds to two more counters
/// that every core writes, on every request; the chosen way needs only the count.
#[derive(Debug, Default)]
pub(super) struct Load {
    waiting: AtomicUsize,
    answered: AtomicU64,
    /// Whether requests that start now are timed: set by the writer.
    timing: AtomicBool,
    timed: AtomicU64,
    waited_ns: AtomicU64,
}

impl Load {
    /// Counts one request as waiting until the returned guard is dropped.
    pub(super) fn waiting(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting {
            load: self,
            since: self.timing.load(Ordering::Relaxed).then(Instant::now),
        }
    }

    fn now(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Requests answered so far, and those of them timed with their summed wait in ns.
    /// Read without a lock, so they may be a request apart: they only steer a [`Trial`].
    fn totals(&self) -> Totals {
        Totals {
            answered: self.answered.load(Ordering::Relaxed),
            timed: self.timed.load(Ordering::Relaxed),
            waited_ns: self.waited_ns.load(Ordering::Relaxed),
        }
    }

    /// Times the requests that start from now on, or stops timing them.
    fn time(&self, on: bool) {
        self.timing.store(on, Ordering::Relaxed);
    }
}

/// One request counted in a [`Load`], for as long as it lives.
pub(super) struct Waiting<'a> {
    load: &'a Load,
    /// When it started, if it is timed.
    since: Option<Instant>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(since) = self.since {
            let waited = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.load.waited_ns.fetch_add(waited, Ordering::Relaxed);
            self.load.timed.fetch_add(1, Ordering::Relaxed);
        }
        self.load.answered.fetch_add(1, Ordering::Relaxed);
        self.load.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A [`Load`]'s counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    answered: u64,
    timed: u64,
    waited_ns: u64,
}

/// Which way a loaded connection writes: merged by Nagle's algorithm, or each at once.
///
/// Which is faster depends on the machine, not only on the load. Merging saves the
/// server reads and the client writes, but each merged batch waits for the answer to the
/// one before, and both sides may go idle meanwhile; where an idle core is slow to wake,
/// that costs more than the merge saves. Measured at 16 tasks on one private server: on
/// a VM whose idle cores halt (a round trip of 63 µs), merged gets ran at 136-142k/s and
/// unmerged at 190-236k/s; on the same VM with idle cores polling
/// (`/dev/cpu_dma_latency` at 0), merged 400-407k/s and unmerged 221-230k/s; an earlier
/// VM's halting cores favoured merging (205k against 150k). So the connection tries both:
/// an epoch of [`EPOCH`] answered requests merged, one unmerged, then the way whose
/// requests waited less on average (unmerged by a tenth at least) for [`CHOSEN_EPOCHS`]
/// epochs, and again. With a fixed number of callers, shorter waits are more requests per
/// second; with callers that come at their own pace, they are what those callers see. Trying the worse way costs one
/// epoch in eighteen after a change of way, and ever less while trials confirm it (one in
/// 258 at most).
#[derive(Debug)]
struct Trial {
    /// Whether loaded writes merge now.
    merge: bool,
    /// Where the current epoch began.
    start: Totals,
    /// The mean wait (ns) of this trial's merged epoch, once measured.
    merged_mean: Option<u64>,
    /// Epochs left in the chosen way; 0 while trying both.
    chosen_left: u32,
    /// The way the last trial chose, and for how many epochs.
    last_choice: Option<bool>,
    chosen_for: u32,
}

impl Trial {
    fn new() -> Trial {
        Trial {
            merge: true,
            start: Totals::default(),
            merged_mean: None,
            chosen_left: 0,
            last_choice: None,
            chosen_for: CHOSEN_EPOCHS,
        }
    }

    /// The connection became loaded: the epoch counts from here, as requests answered
    /// meanwhile were sent unloaded.
    fn restart(&mut self, now: Totals) {
        self.start = now;
    }

    /// Whether a loaded write merges, ending the epoch first if it is complete.
    fn merge(&mut self, now: Totals) -> bool {
        let answered = now.answered.saturating_sub(self.start.answered);
        if answered < EPOCH {
            return self.merge;
        }
        // The mean over the epoch's timed requests. None were timed only if the writer
        // had no turn to start timing: a mean of 0 then keeps or picks merging, the way
        // that saves the server work.
        let timed = now.timed.saturating_sub(self.start.timed).max(1);
        let mean = now.waited_ns.saturating_sub(self.start.waited_ns) / timed;
        self.start = now;
        if self.chosen_left > 0 {
            self.chosen_left -= 1;
            if self.chosen_left == 0 {
                self.merge = true;
                self.merged_mean = None;
            }
        } else if let Some(merged) = self.merged_mean {
            self.merge = mean * 10 >= merged * UNMERGED_WINS_BELOW_TENTHS;
            self.chosen_for = if self.last_choice == Some(self.merge) {
                (self.chosen_for * 2).min(MAX_CHOSEN_EPOCHS)
            } else {
                CHOSEN_EPOCHS
            };
            self.last_choice = Some(self.merge);
            self.chosen_left = self.chosen_for;
        } else {
            self.merged_mean = Some(mean);
            self.merge = false;
        }
        self.merge
    }

    /// Whether the current epoch's waits are measured: while trying both ways.
    fn measuring(&self) -> bool {
        self.chosen_left == 0
    }
}

/// A TCP stream with Nagle's algorithm on while its connection is loaded, except for the
/// rest of a partial write.
pub(super) struct NagleUnderLoad {
    inner: TcpStream,
    /// `TCP_NODELAY` as configured, if it was: then it stays as it is.
    forced: Option<bool>,
    load: Arc<Load>,
    /// Whether the connection is loaded: [`MERGE_FROM`] requests waited, and not yet fewer
    /// than [`MERGE_UNTIL_BELOW`].
    loaded: bool,
    /// Whether loaded writes merge.
    trial: Trial,
    /// Whether the requests' waits are timed now (as last told to the [`Load`]).
    timing: bool,
    /// Whether `TCP_NODELAY` is on now.
    nodelay: bool,
    /// The last write was partial: its rest goes with `TCP_NODELAY`.
    unfinished: bool,
}

impl NagleUnderLoad {
    /// Takes over `socket`, whose callers count their requests in `load`. `nodelay` is
    /// the configured `tcp_nodelay`: `None` switches as above (on Linux; elsewhere it is
    /// `Some(true)`), `Some(on)` keeps `TCP_NODELAY` `on`.
    pub(super) fn new(
        socket: TcpStream,
        nodelay: Option<bool>,
        load: Arc<Load>,
    ) -> io::Result<Self> {
        let forced = if cfg!(target_os = "linux") {
            nodelay
        } else {
            Some(nodelay.unwrap_or(true))
        };
        let nodelay = forced.unwrap_or(true);
        socket.set_nodelay(nodelay)?;
        Ok(NagleUnderLoad {
            inner: socket,
            forced,
            load,
            loaded: false,
            trial: Trial::new(),
            timing: false,
            nodelay,
            unfinished: false,
        })
    }

    /// Whether the next write should go with `TCP_NODELAY`.
    fn wants_nodelay(&mut self) -> bool {
        if let Some(forced) = self.forced {
            return forced;
        }
        let waiting = self.load.now();
        if waiting >= MERGE_FROM && !self.loaded {
            self.loaded = true;
            self.trial.restart(self.load.totals());
        } else if waiting < MERGE_UNTIL_BELOW {
            self.loaded = false;
        }
        let merge = self.loaded && self.trial.merge(self.load.totals());
        let timing = self.loaded && self.trial.measuring();
        if timing != self.timing {
            self.load.time(timing);
            self.timing = timing;
        }
        self.unfinished || !merge
    }
}

impl AsyncWrite for NagleUnderLoad {
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

impl AsyncRead for NagleUnderLoad {
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

    /// `TCP_NODELAY` until enough requests wait, Nagle until few do, and the rest of a
    /// partial write at once: a write larger than both socket buffers is taken in parts
    /// while nobody reads, and every byte still arrives in order.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn merges_under_load_and_sends_the_rest_of_a_partial_write_at_once() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (client, mut server) = pair(&listener).await?;
        let load = Arc::new(Load::default());
        let mut stream = NagleUnderLoad::new(client, None, load.clone())?;
        let nodelay = |s: &NagleUnderLoad| s.inner.nodelay();
        assert!(nodelay(&stream)?, "opens sending at once");

        let mut waiting: Vec<Waiting<'_>> = (0..MERGE_FROM - 1).map(|_| load.waiting()).collect();
        stream.write_all(b"a").await?;
        assert!(nodelay(&stream)?, "{} waiting: at once", MERGE_FROM - 1);
        waiting.push(load.waiting());
        stream.write_all(b"b").await?;
        assert!(!nodelay(&stream)?, "{MERGE_FROM} waiting: Nagle");
        waiting.truncate(MERGE_UNTIL_BELOW);
        stream.write_all(b"c").await?;
        assert!(
            !nodelay(&stream)?,
            "{MERGE_UNTIL_BELOW} waiting: still Nagle"
        );

        let large = vec![b'x'; 32 << 20];
        let reader = tokio::spawn(async move {
            // Nothing is read until the writer has had to wait for buffer space.
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            let mut got = vec![0; 5 + (32 << 20)];
            server.read_exact(&mut got).await.map(|_| got)
        });
        let written =
            std::future::poll_fn(|cx| Pin::new(&mut stream).poll_write(cx, &large)).await?;
        assert!(
            written < large.len(),
            "32 MiB taken whole although nobody reads"
        );
        stream.write_all(&large[written..]).await?;
        assert!(nodelay(&stream)?, "the rest of a partial write: at once");
        stream.write_all(b"d").await?;
        assert!(!nodelay(&stream)?, "the next whole write: Nagle again");

        waiting.truncate(MERGE_UNTIL_BELOW - 1);
        stream.write_all(b"e").await?;
        assert!(
            nodelay(&stream)?,
            "{} waiting: at once",
            MERGE_UNTIL_BELOW - 1
        );
        drop(waiting);
        assert_eq!(load.now(), 0, "every guard uncounted");

        let got = reader.await.map_err(io::Error::other)??;
        assert_eq!(&got[..3], b"abc");
        assert!(got[3..3 + (32 << 20)].iter().all(|&b| b == b'x'));
        assert_eq!(&got[3 + (32 << 20)..], b"de");
        Ok(())
    }

    #[tokio::test]
    async fn a_configured_tcp_nodelay_holds_for_every_write() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let load = Arc::new(Load::default());
        let _waiting: Vec<_> = (0..MERGE_FROM).map(|_| load.waiting()).collect();
        for on in [true, false] {
            let (client, _server) = pair(&listener).await?;
            let mut stream = NagleUnderLoad::new(client, Some(on), load.clone())?;
            for len in [1, 1 << 20] {
                stream.write_all(&vec![b'x'; len]).await?;
                assert_eq!(stream.inner.nodelay()?, on, "tcp_nodelay={on}, {len} bytes");
            }
        }
        Ok(())
    }

    /// A trial merges for an epoch, sends at once for one, keeps the way whose requests
    /// waited less for [`CHOSEN_EPOCHS`] epochs, then tries both again; a restart
    /// discards what was answered while unloaded.
    #[test]
    fn a_trial_keeps_the_way_whose_requests_waited_less() {
        let mut trial = Trial::new();
        let mut now = Totals::default();
        // Advances by one epoch of requests that waited `mean_ns` each.
        let mut epoch = |trial: &mut Trial, mean_ns: u64| {
            now.answered += EPOCH;
            now.timed += EPOCH;
            now.waited_ns += EPOCH * mean_ns;
            trial.merge(now)
        };
        assert!(trial.merge(Totals::default()), "starts merged");
        assert!(!epoch(&mut trial, 900), "then tries sending at once");
        assert!(!epoch(&mut trial, 600), "at once waited less: kept");
        for left in (1..CHOSEN_EPOCHS).rev() {
            assert!(
                !epoch(&mut trial, 5_000),
                "kept {left} more epochs, whatever they cost"
            );
        }
        assert!(epoch(&mut trial, 600), "then merged again, to try both");
        assert!(!epoch(&mut trial, 500));
        assert!(
            epoch(&mut trial, 480),
            "unmerged waited less, but not by a tenth: merged"
        );
        assert_eq!(
            trial.chosen_left, CHOSEN_EPOCHS,
            "a new way: the shortest stay"
        );
        // Each trial that confirms the way doubles its stay, up to the most.
        let mut stays = Vec::new();
        for _ in 0..6 {
            while trial.chosen_left > 0 {
                assert!(epoch(&mut trial, 600), "merged while chosen");
            }
            assert!(!epoch(&mut trial, 500), "trying unmerged");
            assert!(epoch(&mut trial, 900), "unmerged waited more: merged again");
            stays.push(trial.chosen_left);
        }
        assert_eq!(stays, [32, 64, 128, 256, 256, 256]);

        let mut trial = Trial::new();
        let unloaded = Totals {
            answered: 10 * EPOCH,
            timed: 10 * EPOCH,
            waited_ns: 10 * EPOCH * 1_000_000,
        };
        trial.restart(unloaded);
        assert!(
            trial.merge(unloaded),
            "requests answered before the restart do not count"
        );
        let half = Totals {
            answered: unloaded.answered + EPOCH / 2,
            ..unloaded
        };
        assert!(trial.merge(half), "half an epoch: still merged");
    }

    /// Requests are timed only while the connection is loaded and its trial tries both
    /// ways; the mean of an epoch is over its timed requests alone.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn requests_are_timed_only_while_a_trial_compares_the_ways() -> io::Result<()> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let (client, _server) = pair(&listener).await?;
        let load = Arc::new(Load::default());
        let mut stream = NagleUnderLoad::new(client, None, load.clone())?;
        assert!(load.waiting().since.is_none(), "unloaded: not timed");

        let held: Vec<Waiting<'_>> = (0..MERGE_FROM).map(|_| load.waiting()).collect();
        stream.write_all(b"a").await?;
        assert!(stream.trial.measuring(), "a new connection tries both ways");
        assert!(load.waiting().since.is_some(), "loaded and trying: timed");
        drop(held);
        assert_eq!(
            load.totals().timed,
            1,
            "the requests begun before the writer's turn are not timed"
        );

        // Two epochs (merged, then at once) end the trial and choose a way.
        for _ in 0..2 {
            for _ in 0..EPOCH {
                drop(load.waiting());
            }
            let held: Vec<Waiting<'_>> = (0..MERGE_FROM).map(|_| load.waiting()).collect();
            stream.write_all(b"b").await?;
            drop(held);
        }
        assert!(!stream.trial.measuring(), "a way is chosen");
        let before = load.totals();
        let held: Vec<Waiting<'_>> = (0..MERGE_FROM).map(|_| load.waiting()).collect();
        assert!(
            held.iter().all(|w| w.since.is_none()),
            "a way chosen: not timed"
        );
        drop(held);
        let after = load.totals();
        assert_eq!(
            after.answered - before.answered,
            MERGE_FROM as u64,
            "still counted"
        );
        assert_eq!(after.timed, before.timed, "but not timed");
        Ok(())
    }
}
