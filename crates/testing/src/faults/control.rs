//! The state one proxy shares with its connection tasks: the connection table, the faults
//! in force and the counters. One mutex guards it all; a test proxy moves little data, so
//! one short lock per chunk costs nothing and rules out lock-ordering mistakes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::ProxyStats;

/// What one connection does with the bytes it reads.
#[derive(Debug, Clone)]
pub(super) enum Mode {
    /// Bytes are forwarded both ways (after the configured latency).
    Forward,
    /// Black hole: bytes both ways are read and discarded; both sockets stay open.
    Swallow,
    /// The upstream socket is (being) closed; the client's bytes are read and discarded.
    HalfOpen,
    /// A reply was dropped: nothing moves until the [`DropState`] is released.
    Frozen(Arc<DropState>),
    /// The connection is being reset; nothing moves any more.
    Closing,
}

/// One armed or fired [`super::ReplyDrop`].
#[derive(Debug)]
pub(super) struct DropState {
    /// Becomes `true` once a reply has been discarded.
    pub(super) dropped: watch::Sender<bool>,
    /// Becomes `true` when the handle is released or dropped.
    pub(super) released: watch::Sender<bool>,
}

impl DropState {
    pub(super) fn new() -> Self {
        DropState {
            dropped: watch::Sender::new(false),
            released: watch::Sender::new(false),
        }
    }

    fn is_released(&self) -> bool {
        *self.released.borrow()
    }
}

/// One open connection as the table sees it.
#[derive(Debug)]
struct Entry {
    mode: Mode,
    /// The local address of the upstream socket while it is open.
    upstream_local: Option<SocketAddr>,
    /// Wakes the connection task after a change of `mode` made from outside it.
    wake: Arc<Notify>,
}

/// The part of the state behind the mutex.
#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    conns: HashMap<u64, Entry>,
    black_hole: bool,
    base: Duration,
    jitter: Duration,
    /// Armed reply drops, fired in arming order.
    drops: VecDeque<Arc<DropState>>,
}

/// Counters kept outside the lock.
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    connect_failures: AtomicU64,
    resets: AtomicU64,
    half_opened: AtomicU64,
    replies_dropped: AtomicU64,
    bytes_to_upstream: AtomicU64,
    bytes_to_client: AtomicU64,
    bytes_swallowed: AtomicU64,
}

/// Which way a chunk travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dir {
    /// Client to upstream.
    ToUpstream,
    /// Upstream to client.
    ToClient,
}

/// What to do with a chunk just read.
#[derive(Debug)]
pub(super) enum Verdict {
    /// Forward it after this delay.
    Forward(Duration),
    /// Discard it and keep reading.
    Swallow,
    /// It was the reply to drop: the connection is now frozen.
    Dropped,
    /// Stop reading: the connection is frozen or closing.
    Stop,
}

/// The shared state of one proxy.
#[derive(Debug, Default)]
pub(super) struct Control {
    table: Mutex<Table>,
    counters: Counters,
}

impl Control {
    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock cannot leave the table half-updated in a way that
        // matters to a test proxy, so a poisoned lock is used as is.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a just-accepted connection; it starts black-holed while the black hole is on.
    pub(super) fn register(&self) -> (u64, Arc<Notify>) {
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let mut t = self.table();
        t.next_id += 1;
        let id = t.next_id;
        let wake = Arc::new(Notify::new());
        let mode = if t.black_hole {
            Mode::Swallow
        } else {
            Mode::Forward
        };
        let entry = Entry {
            mode,
            upstream_local: None,
            wake: wake.clone(),
        };
        t.conns.insert(id, entry);
        (id, wake)
    }

    pub(super) fn remove(&self, id: u64) {
        self.table().conns.remove(&id);
    }

    pub(super) fn mode(&self, id: u64) -> Mode {
        self.table()
            .conns
            .get(&id)
            .map_or(Mode::Closing, |e| e.mode.clone())
    }

    pub(super) fn set_upstream_local(&self, id: u64, addr: Option<SocketAddr>) {
        if let Some(e) = self.table().conns.get_mut(&id) {
            e.upstream_local = addr;
        }
    }

    /// Decides the fate of a chunk of `len` bytes just read on connection `id`.
    pub(super) fn verdict(&self, id: u64, dir: Dir, len: usize) -> Verdict {
        let mut t = self.table();
        let Some(mode) = t.conns.get(&id).map(|e| e.mode.clone()) else {
            return Verdict::Stop;
        };
        let verdict = match mode {
            Mode::Forward if dir == Dir::ToClient => match pop_armed(&mut t.drops) {
                Some(state) => {
                    if let Some(e) = t.conns.get_mut(&id) {
                        e.mode = Mode::Frozen(state.clone());
                    }
                    // Frozen first, announced second: a test woken by `dropped()` sees
                    // a connection that no longer forwards anything.
                    state.dropped.send_replace(true);
                    self.counters
                        .replies_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    Verdict::Dropped
                }
                None => Verdict::Forward(sample_delay(t.base, t.jitter)),
            },
            Mode::Forward => Verdict::Forward(sample_delay(t.base, t.jitter)),
            Mode::Swallow | Mode::HalfOpen => Verdict::Swallow,
            Mode::Frozen(_) | Mode::Closing => Verdict::Stop,
        };
        if matches!(verdict, Verdict::Swallow | Verdict::Dropped) {
            self.counters
                .bytes_swallowed
                .fetch_add(len as u64, Ordering::Relaxed);
        }
        verdict
    }

    /// Whether connection `id` still forwards (checked again just before each write, so a
    /// chunk delayed by latency is not delivered after a fault was injected).
    pub(super) fn forwarding(&self, id: u64) -> bool {
        matches!(
            self.table().conns.get(&id).map(|e| &e.mode),
            Some(Mode::Forward)
        )
    }

    pub(super) fn set_latency(&self, base: Duration, jitter: Duration) {
        let mut t = self.table();
        t.base = base;
        t.jitter = jitter;
    }

    /// Turns the black hole on or off; on, every forwarding connection starts swallowing.
    pub(super) fn set_black_hole(&self, on: bool) {
        let mut t = self.table();
        t.black_hole = on;
        if on {
            for e in t.conns.values_mut() {
                if matches!(e.mode, Mode::Forward) {
                    e.mode = Mode::Swallow;
                    e.wake.notify_one();
                }
            }
        }
    }

    /// Moves every connection accepted by `select` to `to` and wakes it; returns how many.
    fn transition(&self, select: impl Fn(&Mode) -> bool, to: &Mode) -> usize {
        let mut t = self.table();
        let mut n = 0;
        for e in t.conns.values_mut() {
            if select(&e.mode) {
                e.mode = to.clone();
                if matches!(to, Mode::HalfOpen) {
                    // The socket closes a moment later, in the connection task; callers
                    // already see it gone.
                    e.upstream_local = None;
                }
                e.wake.notify_one();
                n += 1;
            }
        }
        n
    }

    pub(super) fn reset_all(&self) -> usize {
        self.transition(|m| !matches!(m, Mode::Closing), &Mode::Closing)
    }

    pub(super) fn half_open_all(&self) -> usize {
        let n = self.transition(
            |m| matches!(m, Mode::Forward | Mode::Swallow),
            &Mode::HalfOpen,
        );
        self.counters
            .half_opened
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    pub(super) fn arm_drop(&self) -> Arc<DropState> {
        let state = Arc::new(DropState::new());
        self.table().drops.push_back(state.clone());
        state
    }

    pub(super) fn upstream_local_addrs(&self) -> Vec<SocketAddr> {
        let t = self.table();
        let mut addrs: Vec<SocketAddr> =
            t.conns.values().filter_map(|e| e.upstream_local).collect();
        addrs.sort();
        addrs
    }

    pub(super) fn open_connections(&self) -> usize {
        self.table().conns.len()
    }

    pub(super) fn count_forwarded(&self, dir: Dir, len: usize) {
        let counter = match dir {
            Dir::ToUpstream => &self.counters.bytes_to_upstream,
            Dir::ToClient => &self.counters.bytes_to_client,
        };
        counter.fetch_add(len as u64, Ordering::Relaxed);
    }

    pub(super) fn count_reset(&self) {
        self.counters.resets.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn count_connect_failure(&self) {
        self.counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyStats {
            accepted: get(&c.accepted),
            connect_failures: get(&c.connect_failures),
            resets: get(&c.resets),
            half_opened: get(&c.half_opened),
            replies_dropped: get(&c.replies_dropped),
            bytes_to_upstream: get(&c.bytes_to_upstream),
            bytes_to_client: get(&c.bytes_to_client),
            bytes_swallowed: get(&c.bytes_swallowed),
        }
    }
}

/// The first armed drop whose handle is still held (a released handle disarms itself).
fn pop_armed(drops: &mut VecDeque<Arc<DropState>>) -> Option<Arc<DropState>> {
    while let Some(state) = drops.pop_front() {
        if !state.is_released() {
            return Some(state);
        }
    }
    None
}

/// `base` plus a uniform sample of `[0, jitter]`.
pub(super) fn sample_delay(base: Duration, jitter: Duration) -> Duration {
    let span = jitter.as_nanos();
    if span == 0 {
        return base;
    }
    let extra = u128::from(random_u64()) % (span + 1);
    base + Duration::from_nanos(u64::try_from(extra).unwrap_or(u64::MAX))
}

/// A random number from std's randomly keyed hasher: jitter needs no more than that, and
/// it spares the crate a dependency on `rand`.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_stays_within_base_and_jitter() {
        let (base, jitter) = (Duration::from_millis(5), Duration::from_millis(3));
        for _ in 0..1000 {
            let d = sample_delay(base, jitter);
            assert!(d >= base && d <= base + jitter, "{d:?} out of range");
        }
        assert_eq!(sample_delay(base, Duration::ZERO), base);
    }

    #[test]
    fn released_drops_are_skipped() {
        let ctl = Control::default();
        let first = ctl.arm_drop();
        let second = ctl.arm_drop();
        first.released.send_replace(true);
        let (id, _) = ctl.register();
        assert!(matches!(
            ctl.verdict(id, Dir::ToClient, 4),
            Verdict::Dropped
        ));
        assert!(*second.dropped.borrow());
        assert!(!*first.dropped.borrow());
        assert!(matches!(ctl.verdict(id, Dir::ToUpstream, 4), Verdict::Stop));
    }
}
