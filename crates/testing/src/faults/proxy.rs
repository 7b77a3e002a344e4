//! [`FaultProxy`]: the listener, its accept loop and the fault switches.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::control::Control;
use super::{ProxyStats, ReplyDrop, connection};

/// How long the accept loop pauses after a failed accept (such as too many open files),
/// so a persistent error does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// A TCP proxy on 127.0.0.1 that forwards raw bytes to one upstream and injects faults on
/// command: latency, resets, a black hole, half-open connections and lost replies. See the
/// [module docs](super).
///
/// Dropping it stops accepting and closes every connection (normally, with a FIN): the
/// accept task and every connection task are aborted.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    ctl: Arc<Control>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// Binds 127.0.0.1 on a free port and starts forwarding every accepted connection to
    /// `upstream`. Each client gets its own upstream connection, opened when it is
    /// accepted; if that fails (within 5 s) the client is reset. Needs a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let ctl = Arc::new(Control::default());
        let accept = tokio::spawn(accept_loop(listener, ctl.clone(), upstream));
        Ok(FaultProxy {
            addr,
            upstream,
            ctl,
            accept,
        })
    }

    /// Where clients connect: 127.0.0.1 and the proxy's port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, to put in a URL in place of the server's host and port.
    pub fn url_host_port(&self) -> String {
        self.addr.to_string()
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Delays every chunk forwarded from now on, in both directions, by `base` plus a
    /// uniform random `[0, jitter]`, measured from when the proxy read it. Chunks of one
    /// direction keep their order (a chunk never overtakes an earlier one, so jitter only
    /// ever adds delay). `(0, 0)` turns latency off.
    pub fn set_latency(&self, base: Duration, jitter: Duration) {
        self.ctl.set_latency(base, jitter);
    }

    /// Aborts every open connection: the client gets a TCP RST (SO_LINGER 0), the upstream
    /// socket is closed. Nothing more is forwarded on them from this call on; the RSTs
    /// follow within moments, from the connection tasks. Returns how many connections it
    /// aborted, frozen ones included.
    pub fn reset_all(&self) -> usize {
        self.ctl.reset_all()
    }

    /// While on, bytes are swallowed in both directions on every connection: read and
    /// discarded, never forwarded, and nothing is closed, so both ends wait forever (a
    /// network partition). Connections accepted meanwhile are accepted but connected to
    /// nothing.
    ///
    /// Turning it off makes only *new* connections forward again. Every connection that was
    /// black-holed stays dead until it is closed: after a gap its byte stream is garbage
    /// to either protocol, so resuming it could only mislead.
    pub fn set_black_hole(&self, on: bool) {
        self.ctl.set_black_hole(on);
    }

    /// Half-opens every connection that forwards or is black-holed: the upstream socket is
    /// closed (the server sees its client leave) while the client's socket stays open and
    /// whatever the client sends is swallowed. The client receives neither FIN nor RST, so
    /// it believes the connection alive while its requests go nowhere. Returns how many
    /// connections it changed; frozen ones and ones being reset are left alone.
    pub fn half_open_all(&self) -> usize {
        self.ctl.half_open_all()
    }

    /// Arms a one-shot fault: the next chunk that arrives from the upstream on any
    /// forwarding connection is discarded instead of forwarded. Its connection is frozen
    /// (nothing more is forwarded either way) until the returned handle is released or
    /// dropped; then the client is reset and the upstream closed. The request reached the
    /// server and was executed, but the client never sees the reply and gets a connection
    /// error.
    ///
    /// Arm it after the connection is established and idle: the first chunk read after
    /// arming is the one dropped, whatever it answers. Arming several times drops that many
    /// replies, in arming order; a handle dropped before its reply came disarms itself.
    pub fn drop_next_reply(&self) -> ReplyDrop {
        ReplyDrop::new(self.ctl.arm_drop())
    }

    /// The local addresses of the proxy's open upstream sockets, sorted. They are what the
    /// server sees as its clients' addresses (Redis `CLIENT LIST` field `addr=`, PostgreSQL
    /// `pg_stat_activity.client_addr`/`client_port`), so a test can kill exactly the
    /// connections that pass through this proxy.
    pub fn upstream_local_addrs(&self) -> Vec<SocketAddr> {
        self.ctl.upstream_local_addrs()
    }

    /// How many client connections are open (accepted and not yet closed, whatever their
    /// fault).
    pub fn open_connections(&self) -> usize {
        self.ctl.open_connections()
    }

    /// The proxy's counters so far.
    pub fn stats(&self) -> ProxyStats {
        self.ctl.stats()
    }
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("open_connections", &self.open_connections())
            .finish_non_exhaustive()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connection tasks: aborting it drops the set,
        // which aborts them all, and each closes its sockets as it is dropped.
        self.accept.abort();
    }
}

/// Accepts clients and spawns one task per connection, reaping finished ones so the set
/// does not grow with the connections a long test opens and closes.
async fn accept_loop(listener: TcpListener, ctl: Arc<Control>, upstream: SocketAddr) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let (id, wake) = ctl.register();
                    conns.spawn(connection::serve(ctl.clone(), id, wake, client, upstream));
                }
                Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}
