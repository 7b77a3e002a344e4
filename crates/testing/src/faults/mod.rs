//! Fault injection: a loopback TCP proxy that sits between a client library and its server
//! and breaks the connection on command, so tests can check how a backend behaves when the
//! network misbehaves, deterministically and without root or `tc`.
//!
//! [`FaultProxy::start`] binds 127.0.0.1 on a free port and forwards raw bytes to one
//! upstream address (Redis, PostgreSQL, anything over TCP). Point the library at
//! [`FaultProxy::url_host_port`] instead of the server, then inject:
//!
//! | fault | what the client sees | what the server sees |
//! |---|---|---|
//! | [`set_latency`](FaultProxy::set_latency) | every chunk late by `base + [0, jitter]`, each way | the same |
//! | [`reset_all`](FaultProxy::reset_all) | an RST (`ConnectionReset`) | the connection closed |
//! | [`set_black_hole`](FaultProxy::set_black_hole) | silence: writes succeed, reads never return | silence |
//! | [`half_open_all`](FaultProxy::half_open_all) | silence, the connection still open | the connection closed |
//! | [`drop_next_reply`](FaultProxy::drop_next_reply) | no reply, then an RST on release | the request, executed |
//!
//! [`upstream_local_addrs`](FaultProxy::upstream_local_addrs) names the proxy's sockets as
//! the server sees them, to kill exactly those connections server-side (`CLIENT KILL ADDR`,
//! `pg_terminate_backend`). Dropping the proxy closes everything it holds.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use testing::faults::FaultProxy;
//!
//! let proxy = FaultProxy::start("127.0.0.1:6379".parse().expect("an address")).await?;
//! let url = format!("redis://{}", proxy.url_host_port()); // give this to the backend
//! proxy.set_latency(Duration::from_millis(50), Duration::from_millis(10));
//! let lost = proxy.drop_next_reply();
//! // ... send a write through the backend; once `lost.dropped()` resolves, it was applied ...
//! lost.release(); // the backend now gets a connection error
//! # let _ = url; Ok(()) }
//! ```
//!
//! The proxy never panics on an I/O error: a connection that fails just ends. Every task
//! it starts ends with it.

mod connection;
mod control;
mod impatient;
mod lost_reply;
mod proxy;
mod reply;
mod url;

pub use impatient::Impatient;
pub use lost_reply::{LostReply, executed};
pub use proxy::FaultProxy;
pub use reply::ReplyDrop;
pub use url::proxy_in_front_of;

/// What a [`FaultProxy`] has done so far ([`FaultProxy::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client connections accepted.
    pub accepted: u64,
    /// Upstream connections that could not be opened (their clients were reset).
    pub connect_failures: u64,
    /// Client connections aborted with an RST.
    pub resets: u64,
    /// Connections half-opened by [`FaultProxy::half_open_all`].
    pub half_opened: u64,
    /// Replies discarded by [`FaultProxy::drop_next_reply`].
    pub replies_dropped: u64,
    /// Bytes written to the upstream.
    pub bytes_to_upstream: u64,
    /// Bytes written to clients.
    pub bytes_to_client: u64,
    /// Bytes read and discarded (black hole, half-open connections, dropped replies).
    pub bytes_swallowed: u64,
}
