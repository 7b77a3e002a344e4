//! The testcontainers path: the official `redis` and `postgres` images, used when the
//! `containers` feature is on and a Docker engine answers.
//!
//! testcontainers removes a container when its handle drops, but the shared services live in
//! statics that never drop; a reaper (`docker rm -f ID` when this process exits) covers that.

use std::sync::Arc;
use std::time::Duration;

use testcontainers::core::wait::LogWaitStrategy;
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use super::process::{self, Reaper};
use super::{KeepAlive, ServiceError};

/// A started container and the reaper that removes it if the process dies first.
struct Running {
    _container: ContainerAsync<GenericImage>,
    _reaper: Reaper,
}

/// True if a Docker engine accepts connections: `DOCKER_HOST` (unix:// or tcp://) or the
/// default socket.
async fn docker_reachable() -> bool {
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if let Some(addr) = host.strip_prefix("tcp://") {
        let addr = addr.trim_end_matches('/');
        return matches!(
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                .await,
            Ok(Ok(_))
        );
    }
    let path = host
        .strip_prefix("unix://")
        .map(str::to_owned)
        .unwrap_or_else(|| "/var/run/docker.sock".to_owned());
    matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::UnixStream::connect(path)
        )
        .await,
        Ok(Ok(_))
    )
}

async fn start(
    image: ContainerRequest<GenericImage>,
    port: u16,
) -> Result<(String, u16, KeepAlive), ServiceError> {
    let container = image
        .start()
        .await
        .map_err(|e| ServiceError::new(format!("testcontainers could not start it: {e}")))?;
    let reaper = Reaper::spawn(&format!(
        "docker rm -f {} >/dev/null 2>&1",
        process::sh_quote(container.id())
    ));
    let host = container
        .get_host()
        .await
        .map_err(|e| ServiceError::new(format!("no host for the container: {e}")))?
        .to_string();
    let mapped = container
        .get_host_port_ipv4(port.tcp())
        .await
        .map_err(|e| {
            ServiceError::new(format!("port {port} of the container is not mapped: {e}"))
        })?;
    Ok((
        host,
        mapped,
        Arc::new(Running {
            _container: container,
            _reaper: reaper,
        }),
    ))
}

/// `Ok(None)` when no Docker engine is reachable.
pub(crate) async fn redis() -> Result<Option<(String, KeepAlive)>, ServiceError> {
    if !docker_reachable().await {
        return Ok(None);
    }
    let image = GenericImage::new("redis", "7")
        .with_exposed_port(6379.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"));
    let (host, port, keep) = start(image.into(), 6379).await?;
    Ok(Some((format!("redis://{host}:{port}"), keep)))
}

/// `Ok(None)` when no Docker engine is reachable.
pub(crate) async fn postgres() -> Result<Option<(String, KeepAlive)>, ServiceError> {
    if !docker_reachable().await {
        return Ok(None);
    }
    let image = GenericImage::new("postgres", "15")
        .with_exposed_port(5432.tcp())
        // The image's init script runs a temporary server first: wait for the second start.
        .with_wait_for(WaitFor::log(
            LogWaitStrategy::stderr("database system is ready to accept connections").with_times(2),
        ))
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_env_var("POSTGRES_DB", "test");
    let (host, port, keep) = start(image, 5432).await?;
    Ok(Some((
        format!("postgres://postgres@{host}:{port}/test"),
        keep,
    )))
}
