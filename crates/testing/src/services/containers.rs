//! The testcontainers path (feature `containers`): Redis and PostgreSQL in containers, on
//! the host's network so that all traffic stays on loopback.
//!
//! The images come from the environment: [`REDIS_IMAGE_ENV`] and [`POSTGRES_IMAGE_ENV`]
//! (`NAME:TAG`), else the official `redis:7` and `postgres:15`. Where no registry is
//! reachable, `cargo xtask services up` builds local images from the machine's own
//! binaries and prints the two variables (and a `DOCKER_HOST` for an engine older than the
//! testcontainers client). Both kinds of image take the same command line: each container
//! runs its server on a free port picked here, passed as the server's port argument.
//!
//! testcontainers removes a container when its handle drops, but the shared services live in
//! statics that never drop; a reaper (`docker rm -f ID` when this process exits) covers that.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use testcontainers::core::WaitFor;
use testcontainers::core::wait::LogWaitStrategy;
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};

use super::process::{self, Reaper};
use super::{KeepAlive, ServiceError};

/// The variable naming the Redis image (`NAME:TAG`); `redis:7` when unset.
pub const REDIS_IMAGE_ENV: &str = "STATE_TEST_REDIS_IMAGE";
/// The variable naming the PostgreSQL image (`NAME:TAG`); `postgres:15` when unset.
pub const POSTGRES_IMAGE_ENV: &str = "STATE_TEST_POSTGRES_IMAGE";

/// How long a server in a container may take to be ready (a first start initialises a
/// PostgreSQL data directory).
const STARTUP: Duration = Duration::from_secs(120);

/// A started container and the reaper that removes it if the process dies first.
struct Running {
    _container: ContainerAsync<GenericImage>,
    _reaper: Reaper,
}

/// A server running in a container started by this process; the container is removed when
/// the last clone of this handle drops (or, failing that, when the process exits).
#[derive(Clone)]
pub struct Container {
    url: String,
    image: String,
    id: String,
    port: u16,
    keep: KeepAlive,
}

impl Container {
    /// The server's URL: `redis://127.0.0.1:PORT` or `postgres://postgres@127.0.0.1:PORT/test`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The image it runs, `NAME:TAG`.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The server's port on the host's loopback.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn into_parts(self) -> (String, KeepAlive) {
        (self.url, self.keep)
    }
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("url", &self.url)
            .field("image", &self.image)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// True if a Docker engine accepts connections: `DOCKER_HOST` (unix:// or tcp://) or the
/// default socket.
pub async fn docker_reachable() -> bool {
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

/// The image in `var` (`NAME:TAG`, `NAME` meaning `NAME:latest`), else `default`.
fn image_from_env(var: &str, default: (&str, &str)) -> Result<(String, String), ServiceError> {
    let Some(raw) = std::env::var(var).ok().filter(|v| !v.trim().is_empty()) else {
        return Ok((default.0.to_owned(), default.1.to_owned()));
    };
    split_image(raw.trim()).ok_or_else(|| {
        ServiceError::new(format!(
            "{var}={raw} is not an image name; write NAME:TAG, e.g. redis:7"
        ))
    })
}

/// `NAME:TAG` split at the tag's colon (`NAME` alone means `NAME:latest`): a colon after the
/// last slash starts the tag; one before it is a registry's port.
fn split_image(raw: &str) -> Option<(String, String)> {
    let slash = raw.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match raw.get(slash..)?.rfind(':') {
        Some(i) => (raw.get(..slash + i)?, raw.get(slash + i + 1..)?),
        None => (raw, "latest"),
    };
    (!name.is_empty() && !tag.is_empty() && !name.ends_with('/'))
        .then(|| (name.to_owned(), tag.to_owned()))
}

async fn start(
    request: ContainerRequest<GenericImage>,
    image: String,
    port: u16,
    url: String,
) -> Result<Container, ServiceError> {
    let container = request.start().await.map_err(|e| {
        ServiceError::new(format!(
            "testcontainers could not start {image}: {e} (is the image there? where no \
             registry is reachable, `cargo xtask services up` builds local images and prints \
             {REDIS_IMAGE_ENV}, {POSTGRES_IMAGE_ENV} and DOCKER_HOST to export)"
        ))
    })?;
    let id = container.id().to_owned();
    let reaper = Reaper::spawn(&format!(
        "docker rm -f {} >/dev/null 2>&1",
        process::sh_quote(&id)
    ));
    Ok(Container {
        url,
        image,
        id,
        port,
        keep: Arc::new(Running {
            _container: container,
            _reaper: reaper,
        }),
    })
}

/// Starts Redis in a container ([`REDIS_IMAGE_ENV`]) on a free loopback port of the host.
pub async fn start_redis() -> Result<Container, ServiceError> {
    let (name, tag) = image_from_env(REDIS_IMAGE_ENV, ("redis", "7"))?;
    let port = process::free_port()?;
    let request = GenericImage::new(&name, &tag)
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_network("host")
        .with_cmd([
            "redis-server".to_owned(),
            "--port".to_owned(),
            port.to_string(),
            "--bind".to_owned(),
            "127.0.0.1".to_owned(),
            "--save".to_owned(),
            String::new(),
            "--appendonly".to_owned(),
            "no".to_owned(),
        ])
        .with_startup_timeout(STARTUP);
    let url = format!("redis://127.0.0.1:{port}");
    start(request, format!("{name}:{tag}"), port, url).await
}

/// Starts PostgreSQL in a container ([`POSTGRES_IMAGE_ENV`]) on a free loopback port of the
/// host, trust auth, database `test`.
pub async fn start_postgres() -> Result<Container, ServiceError> {
    let (name, tag) = image_from_env(POSTGRES_IMAGE_ENV, ("postgres", "15"))?;
    let port = process::free_port()?;
    let request = GenericImage::new(&name, &tag)
        // The initialisation says "ready" once (the official image's temporary server, the
        // local image's entrypoint), the server a second time.
        .with_wait_for(WaitFor::log(
            LogWaitStrategy::stderr("database system is ready to accept connections").with_times(2),
        ))
        .with_network("host")
        .with_env_var("POSTGRES_HOST_AUTH_METHOD", "trust")
        .with_env_var("POSTGRES_DB", "test")
        // The official image's temporary server listens only on its socket, on PGPORT.
        .with_env_var("PGPORT", port.to_string())
        .with_cmd([
            "postgres".to_owned(),
            "-p".to_owned(),
            port.to_string(),
            "-c".to_owned(),
            "listen_addresses=127.0.0.1".to_owned(),
        ])
        .with_startup_timeout(STARTUP);
    let url = format!("postgres://postgres@127.0.0.1:{port}/test");
    start(request, format!("{name}:{tag}"), port, url).await
}

/// `Ok(None)` when no Docker engine is reachable.
pub(crate) async fn redis() -> Result<Option<(String, KeepAlive)>, ServiceError> {
    if !docker_reachable().await {
        return Ok(None);
    }
    Ok(Some(start_redis().await?.into_parts()))
}

/// `Ok(None)` when no Docker engine is reachable.
pub(crate) async fn postgres() -> Result<Option<(String, KeepAlive)>, ServiceError> {
    if !docker_reachable().await {
        return Ok(None);
    }
    Ok(Some(start_postgres().await?.into_parts()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_split_at_the_tag_not_the_registry_port() {
        let split = |raw: &str| split_image(raw);
        let owned = |n: &str, t: &str| Some((n.to_owned(), t.to_owned()));
        assert_eq!(split("redis:7"), owned("redis", "7"));
        assert_eq!(split("host:5000/pg"), owned("host:5000/pg", "latest"));
        assert_eq!(split("host:5000/pg:15"), owned("host:5000/pg", "15"));
        assert_eq!(
            split("state-test-postgres:15.20-r1"),
            owned("state-test-postgres", "15.20-r1")
        );
        assert_eq!(split("redis:"), None);
        assert_eq!(split(":7"), None);
    }
}
