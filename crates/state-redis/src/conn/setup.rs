//! Building the driver's clients from a [`RedisConfig`]: addresses (TLS or not),
//! credentials, CA certificates, and the Sentinel clients for the primary and the replicas.

use redis::io::tcp::TcpSettings;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo, RedisError,
    TlsCertificates, TlsMode,
};
use state_core::{Result, StateError};

use super::single::Dial;
use crate::config::RedisConfig;

pub(super) fn open_client(
    info: ConnectionInfo,
    config: &RedisConfig,
) -> redis::RedisResult<Client> {
    match &config.tls_root_ca {
        Some(ca) => Client::build_with_tls(
            info,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            },
        ),
        None => Client::open(info),
    }
}

/// The Sentinel dialer: the driver's Sentinel client, and a plain client per Sentinel to
/// check the master name when no primary is found.
pub(super) fn sentinel_dial(config: &RedisConfig, master_name: &str, target: &str) -> Result<Dial> {
    let sentinels = config
        .hosts
        .iter()
        .map(|h| {
            let info = node_addr(config, &h.host, h.port).into_connection_info()?;
            open_client(info, config)
        })
        .collect::<redis::RedisResult<Vec<Client>>>()
        .map_err(|e| build_error(target, e))?;
    let client = sentinel_client(config, master_name, target, SentinelServerType::Master)?;
    Ok(Dial::Sentinel {
        client: tokio::sync::Mutex::new(client),
        sentinels,
        master_name: master_name.to_string(),
    })
}

/// The dialer of replica reads: the driver's Sentinel client for replicas, which picks one
/// of the healthy replicas the Sentinels list, at random, on every dial.
pub(super) fn sentinel_replica_dial(
    config: &RedisConfig,
    master_name: &str,
    target: &str,
) -> Result<Dial> {
    let client = sentinel_client(config, master_name, target, SentinelServerType::Replica)?;
    Ok(Dial::SentinelReplica {
        client: tokio::sync::Mutex::new(client),
    })
}

/// The driver's Sentinel client for `server_type`, with TLS (and the CA) both to the
/// Sentinels and to the data nodes they name.
fn sentinel_client(
    config: &RedisConfig,
    master_name: &str,
    target: &str,
    server_type: SentinelServerType,
) -> Result<SentinelClient> {
    let mut builder = SentinelClientBuilder::new(
        config
            .hosts
            .iter()
            .map(|h| node_addr(config, &h.host, h.port)),
        master_name,
        server_type,
    )
    .map_err(|e| build_error(target, e))?
    .set_client_to_redis_db(config.db)
    .set_client_to_redis_tcp_settings(tcp_settings(config));
    if let Some(user) = &config.username {
        builder = builder.set_client_to_redis_username(user);
    }
    if let Some(pass) = &config.password {
        builder = builder.set_client_to_redis_password(pass.expose());
    }
    if config.tls {
        builder = builder
            .set_client_to_redis_tls_mode(TlsMode::Secure)
            .set_client_to_sentinel_tls_mode(TlsMode::Secure);
        if let Some(ca) = &config.tls_root_ca {
            let certs = TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            };
            builder = builder
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs);
        }
    }
    builder.build().map_err(|e| build_error(target, e))
}

/// A server's address, over TLS if the config says so.
pub(super) fn node_addr(config: &RedisConfig, host: &str, port: u16) -> ConnectionAddr {
    if config.tls {
        ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host.to_string(), port)
    }
}

pub(super) fn node_info(
    config: &RedisConfig,
    host: &str,
    port: u16,
) -> std::result::Result<ConnectionInfo, RedisError> {
    let addr = node_addr(config, host, port);
    let mut redis_info = RedisConnectionInfo::default().set_db(config.db);
    if let Some(user) = &config.username {
        redis_info = redis_info.set_username(user);
    }
    if let Some(pass) = &config.password {
        redis_info = redis_info.set_password(pass.expose());
    }
    Ok(addr
        .into_connection_info()?
        .set_redis_settings(redis_info)
        .set_tcp_settings(tcp_settings(config)))
}

/// The socket options of the data-node connections the driver dials (Cluster, TLS, Unix
/// sockets): the driver's defaults with `TCP_NODELAY` as configured, on when unset (Nagle
/// without its stalls needs a stream of our own, see `nagle.rs`). Cluster and Sentinel
/// clients do not take them from a node's `ConnectionInfo`, so each builder is given them
/// too.
pub(super) fn tcp_settings(config: &RedisConfig) -> TcpSettings {
    TcpSettings::default().set_nodelay(config.tcp_nodelay.unwrap_or(true))
}

pub(super) fn build_error(target: &str, err: RedisError) -> StateError {
    StateError::config(format!(
        "cannot set up the Redis client for {target} ({}); check the URL and TLS settings",
        err.category()
    ))
    .with_source(err)
}
