//! Putting a proxy in front of the server a URL names.

use std::net::{SocketAddr, ToSocketAddrs};

use super::FaultProxy;

/// Starts a [`FaultProxy`] in front of the first server `url` names and returns it with the
/// same URL pointing at the proxy instead (user, password, path and parameters kept).
///
/// The URL must name its host and port explicitly (`redis://127.0.0.1:6379`,
/// `postgres://postgres@127.0.0.1:5432/test`), as every test URL does.
pub async fn proxy_in_front_of(url: &str) -> std::io::Result<(FaultProxy, String)> {
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, what);
    let parsed = crate::services::parse_url(url)
        .map_err(|e| invalid(format!("cannot parse the URL: {e}")))?;
    let Some(server) = parsed.hosts().first() else {
        return Err(invalid("the URL names no server".into()));
    };
    let written = format!("{}:{}", server.host, server.port);
    if !url.contains(&written) {
        return Err(invalid(format!(
            "the URL must name its server as `{written}` (host and port) to be proxied"
        )));
    }
    let upstream: SocketAddr = (server.host.as_str(), server.port)
        .to_socket_addrs()?
        .find(SocketAddr::is_ipv4)
        .ok_or_else(|| invalid(format!("`{written}` resolves to no IPv4 address")))?;
    let proxy = FaultProxy::start(upstream).await?;
    let proxied = url.replacen(&written, &proxy.url_host_port(), 1);
    Ok((proxy, proxied))
}
