//! The fault proxy against the real services: every fault is checked from both ends, the
//! client through the proxy and the server through a direct connection. Talks raw RESP so
//! `testing` needs no Redis client. A missing service fails the test.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use state_core::StateUrl;
use testing::faults::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long an expected answer may take before the test fails.
const WAIT: Duration = Duration::from_secs(5);
/// How long a client listens to conclude that nothing is coming.
const SILENCE: Duration = Duration::from_millis(300);

/// Where the shared Redis listens and how to log in.
struct Redis {
    addr: SocketAddr,
    handshake: Vec<Vec<String>>,
}

async fn resolve(url: &str) -> (SocketAddr, StateUrl) {
    let parsed =
        testing::services::parse_url(url).unwrap_or_else(|e| panic!("bad service URL: {e}"));
    let host = parsed.hosts().first().expect("a host").to_string();
    let addr = tokio::net::lookup_host(&host)
        .await
        .unwrap_or_else(|e| panic!("cannot resolve {host}: {e}"))
        .next()
        .unwrap_or_else(|| panic!("{host} resolves to nothing"));
    (addr, parsed)
}

async fn redis() -> Redis {
    let service = testing::services::redis()
        .await
        .unwrap_or_else(|e| panic!("these tests need Redis: {e}"));
    let (addr, url) = resolve(&service.url()).await;
    let mut handshake = Vec::new();
    if let Some(password) = url.password() {
        let mut auth = vec!["AUTH".to_owned()];
        auth.extend(url.username().map(str::to_owned));
        auth.push(password.expose().to_owned());
        handshake.push(auth);
    }
    let db = url.path().map_or("", |p| p.trim_matches('/'));
    if !db.is_empty() {
        handshake.push(vec!["SELECT".to_owned(), db.to_owned()]);
    }
    Redis { addr, handshake }
}

impl Redis {
    /// A logged-in connection to `addr` (the server itself or a proxy in front of it).
    async fn connect(&self, addr: SocketAddr) -> Resp {
        let mut conn = Resp::connect_raw(addr).await;
        for command in &self.handshake {
            let args: Vec<&str> = command.iter().map(String::as_str).collect();
            let reply = conn.call(&args).await;
            assert!(reply.starts_with('+'), "{} failed: {reply}", command[0]);
        }
        conn
    }

    async fn direct(&self) -> Resp {
        self.connect(self.addr).await
    }
}

/// A raw RESP connection.
struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Resp {
    async fn connect_raw(addr: SocketAddr) -> Resp {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} timed out"))
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Resp {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, args: &[&str]) -> io::Result<()> {
        let mut out = format!("*{}\r\n", args.len());
        for arg in args {
            out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.stream.write_all(out.as_bytes()).await
    }

    /// One reply: the line of a simple reply (`+OK`, `-ERR ..`, `:1`), the content of a
    /// bulk string, or `(nil)`.
    async fn reply(&mut self) -> io::Result<String> {
        loop {
            if let Some((reply, used)) = parse(&self.buf) {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends a command and waits for its reply, failing the test on error or timeout.
    async fn call(&mut self, args: &[&str]) -> String {
        self.send(args).await.expect("sending a command");
        tokio::time::timeout(WAIT, self.reply())
            .await
            .unwrap_or_else(|_| panic!("{args:?} got no reply within {WAIT:?}"))
            .unwrap_or_else(|e| panic!("{args:?} failed: {e}"))
    }

    /// Listens for [`SILENCE`]: `None` if nothing came, else what the read returned.
    async fn listen(&mut self) -> Option<io::Result<String>> {
        tokio::time::timeout(SILENCE, self.reply()).await.ok()
    }

    /// Waits for the connection to fail: returns the error (EOF counts as one).
    async fn broken(&mut self) -> io::Error {
        match tokio::time::timeout(WAIT, self.reply()).await {
            Ok(Err(e)) => e,
            Ok(Ok(reply)) => panic!("expected a broken connection, got the reply {reply:?}"),
            Err(_) => panic!("the connection still looks alive after {WAIT:?}"),
        }
    }
}

/// Parses one complete reply at the start of `buf`: `(reply, bytes used)`.
fn parse(buf: &[u8]) -> Option<(String, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
    if let Some(len) = line.strip_prefix('$') {
        let len: i64 = len.parse().ok()?;
        if len < 0 {
            return Some(("(nil)".to_owned(), end + 2));
        }
        let start = end + 2;
        let stop = start + usize::try_from(len).ok()?;
        let body = buf.get(start..stop)?;
        buf.get(stop..stop + 2)?;
        return Some((String::from_utf8_lossy(body).into_owned(), stop + 2));
    }
    Some((line, end + 2))
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof
    )
}

/// Whether `e` is what an RST from the proxy looks like. On Linux a reset read fails with
/// `ConnectionReset` every time, so there the test tells an RST from a FIN; elsewhere any
/// connection error passes.
fn is_reset(e: &io::Error) -> bool {
    if cfg!(target_os = "linux") {
        e.kind() == io::ErrorKind::ConnectionReset
    } else {
        is_connection_error(e)
    }
}

/// A key prefix no other test or run uses.
fn prefix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("faults:{:016x}:", hasher.finish())
}

async fn proxy_to(upstream: SocketAddr) -> FaultProxy {
    FaultProxy::start(upstream)
        .await
        .unwrap_or_else(|e| panic!("the proxy did not start: {e}"))
}

/// Polls `check` every 50 ms for at most [`WAIT`].
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    let start = Instant::now();
    for _ in 0..200 {
        if check().await {
            return;
        }
        assert!(start.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen after 200 checks");
}

#[tokio::test]
async fn forwards_redis_commands_both_ways() {
    let redis = redis().await;
    let proxy = proxy_to(redis.addr).await;
    assert_eq!(proxy.url_host_port(), proxy.addr().to_string());
    let key = format!("{}k", prefix());
    let mut conn = redis.connect(proxy.addr()).await;
    assert_eq!(conn.call(&["PING"]).await, "+PONG");
    assert_eq!(conn.call(&["SET", &key, "v", "PX", "60000"]).await, "+OK");
    assert_eq!(conn.call(&["GET", &key]).await, "v");
    assert_eq!(redis.direct().await.call(&["GET", &key]).await, "v");
    assert_eq!(proxy.open_connections(), 1);
    let stats = proxy.stats();
    assert_eq!(stats.accepted, 1);
    assert!(stats.bytes_to_upstream > 0, "{stats:?}");
    assert!(stats.bytes_to_client > 0, "{stats:?}");
    assert_eq!(conn.call(&["DEL", &key]).await, ":1");
}

#[tokio::test]
async fn latency_delays_both_directions_and_keeps_order() {
    let redis = redis().await;
    let proxy = proxy_to(redis.addr).await;
    let mut conn = redis.connect(proxy.addr()).await;
    let base = Duration::from_millis(100);
    proxy.set_latency(base, Duration::from_millis(20));
    let start = Instant::now();
    assert_eq!(conn.call(&["PING"]).await, "+PONG");
    let elapsed = start.elapsed();
    assert!(elapsed >= base * 2, "a round trip took {elapsed:?}");

    // Separate writes become separate chunks with their own jitter; none may overtake.
    proxy.set_latency(Duration::from_millis(5), Duration::from_millis(30));
    for i in 0..20 {
        conn.send(&["ECHO", &format!("m{i}")]).await.expect("send");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for i in 0..20 {
        let reply = tokio::time::timeout(WAIT, conn.reply()).await;
        let reply = reply.expect("a reply in time").expect("a reply");
        assert_eq!(reply, format!("m{i}"));
    }

    proxy.set_latency(Duration::ZERO, Duration::ZERO);
    assert_eq!(conn.call(&["PING"]).await, "+PONG");
}

#[tokio::test]
async fn reset_all_aborts_the_client_connection() {
    let redis = redis().await;
    let proxy = proxy_to(redis.addr).await;
    let mut conn = redis.connect(proxy.addr()).await;
    assert_eq!(conn.call(&["PING"]).await, "+PONG");
    assert_eq!(proxy.reset_all(), 1);
    let error = conn.broken().await;
    assert!(is_reset(&error), "expected an RST, got: {error}");
    eventually("the reset connection to be closed", async || {
        proxy.open_connections() == 0
    })
    .await;
    assert_eq!(proxy.stats().resets, 1);
    // The proxy itself still works.
    let mut again = redis.connect(proxy.addr()).await;
    assert_eq!(again.call(&["PING"]).await, "+PONG");
}

#[tokio::test]
async fn black_hole_swallows_everything_until_new_connections_after_it() {
    let redis = redis().await;
    let proxy = proxy_to(redis.addr).await;
    let prefix = prefix();
    let (old_key, new_key) = (format!("{prefix}old"), format!("{prefix}new"));
    let mut old = redis.connect(proxy.addr()).await;
    assert_eq!(old.call(&["PING"]).await, "+PONG");

    proxy.set_black_hole(true);
    let mut new = Resp::connect_raw(proxy.addr()).await;
    for (conn, key) in [(&mut old, &old_key), (&mut new, &new_key)] {
        conn.send(&["SET", key, "v", "PX", "60000"])
            .await
            .expect("writes into the black hole succeed");
        assert!(conn.listen().await.is_none(), "the black hole answered");
    }
    let mut direct = redis.direct().await;
    for key in [&old_key, &new_key] {
        assert_eq!(direct.call(&["GET", key]).await, "(nil)", "{key} set");
    }
    assert_eq!(proxy.open_connections(), 2, "the black hole closed one");

    proxy.set_black_hole(false);
    let mut after = redis.connect(proxy.addr()).await;
    assert_eq!(after.call(&["PING"]).await, "+PONG");
    // Documented: a connection that was black-holed stays dead.
    old.send(&["PING"])
        .await
        .expect("the old connection is open");
    assert!(old.listen().await.is_none(), "a black-holed one came back");
    assert!(proxy.stats().bytes_swallowed > 0);
}

#[tokio::test]
async fn half_open_keeps_the_client_and_closes_the_server_side() {
    let redis = redis().await;
    let proxy = proxy_to(redis.addr).await;
    let key = format!("{}k", prefix());
    let mut conn = redis.connect(proxy.addr()).await;
    let id = conn.call(&["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').to_owned();
    let mut direct = redis.direct().await;
    assert_ne!(direct.call(&["CLIENT", "LIST", "ID", &id]).await, "");

    assert_eq!(proxy.half_open_all(), 1);
    assert!(proxy.upstream_local_addrs().is_empty());
    conn.send(&["SET", &key, "v", "PX", "60000"])
        .await
        .expect("the client can still write");
    match conn.listen().await {
        None => {}
        Some(got) => panic!("a half-open connection answered or closed: {got:?}"),
    }
    eventually("the server to drop the connection", async || {
        direct.call(&["CLIENT", "LIST", "ID", &id]).await.is_empty()
    })
    .await;
    assert_eq!(direct.call(&["GET", &key]).await, "(nil)");
    assert_eq!(proxy.open_connections(), 1, "the client side was closed");
    assert_eq!(proxy.stats().half_opened, 1);
}

#[tokio::test]
async fn dropped_reply_was_executed_and_the_client_gets_an_error() {
    let redis = redis().await;
    let proxy = proxy_to(redis.addr).await;
    let key = format!("{}k", prefix());
    let mut conn = redis.connect(proxy.addr()).await;
    assert_eq!(conn.call(&["PING"]).await, "+PONG");

    let lost = proxy.drop_next_reply();
    assert!(!lost.is_dropped());
    conn.send(&["SET", &key, "v", "PX", "60000"])
        .await
        .expect("send");
    tokio::time::timeout(WAIT, lost.dropped())
        .await
        .expect("the reply was dropped");
    let mut direct = redis.direct().await;
    assert_eq!(direct.call(&["GET", &key]).await, "v", "not executed");
    match conn.listen().await {
        None => {}
        Some(got) => panic!("a frozen connection delivered {got:?}"),
    }
    assert_eq!(proxy.stats().replies_dropped, 1);

    lost.release();
    let error = conn.broken().await;
    assert!(is_reset(&error), "expected an RST, got: {error}");
    // One-shot: a new connection is answered.
    let mut again = redis.connect(proxy.addr()).await;
    assert_eq!(again.call(&["PING"]).await, "+PONG");
    assert_eq!(direct.call(&["DEL", &key]).await, ":1");
}

#[tokio::test]
async fn upstream_local_addrs_match_client_list() {
    let redis = redis().await;
    let proxy = proxy_to(redis.addr).await;
    let mut conn = redis.connect(proxy.addr()).await;
    let id = conn.call(&["CLIENT", "ID"]).await;
    let id = id.trim_start_matches(':').to_owned();
    let addrs = proxy.upstream_local_addrs();
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    let mut direct = redis.direct().await;
    let listed = direct.call(&["CLIENT", "LIST", "ID", &id]).await;
    assert!(
        listed.contains(&format!(" addr={} ", addrs[0])),
        "CLIENT LIST shows {listed:?}, the proxy {addrs:?}"
    );
    // The use it is for: killing exactly this connection from the server side.
    let killed = direct
        .call(&["CLIENT", "KILL", "ADDR", &addrs[0].to_string()])
        .await;
    assert_eq!(killed, ":1", "CLIENT KILL ADDR counts what it killed");
    let error = conn.broken().await;
    assert!(is_connection_error(&error), "unexpected error: {error}");
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let redis = redis().await;
    let proxy = proxy_to(redis.addr).await;
    let mut conn = redis.connect(proxy.addr()).await;
    assert_eq!(conn.call(&["PING"]).await, "+PONG");
    assert!(format!("{proxy:?}").contains("FaultProxy"));
    drop(proxy);
    let error = conn.broken().await;
    assert!(is_connection_error(&error), "unexpected error: {error}");
}

#[tokio::test]
async fn postgres_bytes_flow_through_the_proxy() {
    let url = testing::services::postgres_url()
        .await
        .unwrap_or_else(|e| panic!("this test needs PostgreSQL: {e}"));
    let (addr, _) = resolve(&url).await;
    let proxy = proxy_to(addr).await;
    // Latency and a half-close on top: the client's FIN must not cut off the answer that
    // is still waiting out its delay.
    proxy.set_latency(Duration::from_millis(20), Duration::ZERO);
    let mut stream = TcpStream::connect(proxy.addr()).await.expect("connect");
    // SSLRequest: length 8, code 80877103. The server answers one byte: 'S' or 'N'.
    stream
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("send");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("PostgreSQL answered and closed in time")
        .expect("PostgreSQL answered");
    assert!(matches!(&answer[..], b"N" | b"S"), "answer {answer:?}");
    assert_eq!(proxy.stats().bytes_to_client, 1);
}
