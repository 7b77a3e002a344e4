//! Driver errors turned into [`StateError`]s with the right kind, at the edge.

use redis::{ErrorKind as RKind, RedisError, ServerErrorKind as SKind};
use state_core::{ErrorKind, StateError};

/// A driver error with what we know about whether the request reached the server.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) err: RedisError,
    /// The request may have been sent (and applied) before the failure.
    pub(crate) sent: bool,
}

impl Failure {
    pub(crate) fn before_send(err: RedisError) -> Self {
        Failure { err, sent: false }
    }

    /// A failure of a request handed to a connection: it may have been sent, unless the
    /// error says no connection carried it (refused, or no connection for its Cluster
    /// slot).
    pub(crate) fn after_send(err: RedisError) -> Self {
        let sent = !(err.is_connection_refusal() || err.kind() == RKind::ClusterConnectionNotFound);
        Failure { err, sent }
    }
}

/// Whether the error means the connection (or the node behind it) must be replaced: the
/// socket broke or stalled, or a Sentinel primary was demoted under us.
pub(crate) fn needs_reconnect(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_unrecoverable_error()
        || matches!(
            err.kind(),
            RKind::Server(SKind::ReadOnly) | RKind::Server(SKind::MasterDown)
        )
}

/// The kind a driver error maps to.
pub(crate) fn kind_of(err: &RedisError) -> ErrorKind {
    if is_tls_rejection(err) {
        // Not transient: retrying will not make the certificate trusted.
        return ErrorKind::Config;
    }
    if err.is_timeout() {
        return ErrorKind::Timeout;
    }
    match err.kind() {
        RKind::Io | RKind::ClusterConnectionNotFound | RKind::EmptySentinelList => {
            ErrorKind::Connection
        }
        RKind::Server(
            SKind::ReadOnly
            | SKind::BusyLoading
            | SKind::TryAgain
            | SKind::ClusterDown
            | SKind::MasterDown
            | SKind::Moved
            | SKind::Ask,
        ) => ErrorKind::Unavailable,
        RKind::NoValidReplicasFoundBySentinel => ErrorKind::Unavailable,
        RKind::AuthenticationFailed | RKind::InvalidClientConfig | RKind::Server(SKind::NoPerm) => {
            ErrorKind::Config
        }
        RKind::MasterNameNotFoundBySentinel => ErrorKind::Config,
        _ if err.is_connection_dropped() || err.is_connection_refusal() => ErrorKind::Connection,
        _ => ErrorKind::Backend,
    }
}

/// Whether the TLS handshake failed on the certificate (untrusted CA, wrong name).
fn is_tls_rejection(err: &RedisError) -> bool {
    let text = err.to_string();
    err.kind() == RKind::Io && (text.contains("certificate") || text.contains("Certificate"))
}

/// Converts a failure of `op` against `target` (a redacted address) into a `StateError`.
///
/// The message is built from the error's category and code only; the driver error is
/// kept as the source. Neither carries the password: the driver never puts connection
/// credentials into its errors, and `target` comes from the redacted configuration.
pub(crate) fn to_state(op: &str, target: &str, failure: Failure) -> StateError {
    let Failure { err, sent } = failure;
    let kind = kind_of(&err);
    let hint = match kind {
        ErrorKind::Connection => "check that the server is up and reachable; retry later",
        ErrorKind::Timeout => "the server is slow or unreachable; retry later",
        ErrorKind::Unavailable => "the server is failing over or loading; retry shortly",
        ErrorKind::Config if err.kind() == RKind::Server(SKind::NoPerm) => {
            "the ACL user lacks a command or key pattern the README lists as required"
        }
        ErrorKind::Config if is_tls_rejection(&err) => {
            "the server's TLS certificate is not trusted; give its CA with tls_root_ca_pem \
             or the tls_ca URL parameter"
        }
        ErrorKind::Config => "check the URL, user name, password and master name",
        _ => "see the server's message",
    };
    let code = err.code().map(|c| format!(" {c}")).unwrap_or_default();
    let mut message = format!("{op} on {target} failed ({}{code}): {hint}", err.category());
    let outcome_unknown = sent && matches!(kind, ErrorKind::Timeout | ErrorKind::Connection);
    if outcome_unknown {
        message.push_str("; the request may have been applied");
    }
    let mut out = StateError::new(kind, message).with_source(err);
    if outcome_unknown {
        out = out.with_outcome_unknown();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_states_of_failover_are_unavailable() {
        for code in [
            "READONLY",
            "LOADING",
            "TRYAGAIN",
            "CLUSTERDOWN",
            "MASTERDOWN",
        ] {
            let value = redis::parse_redis_value(format!("-{code} x\r\n").as_bytes());
            let err = match value {
                Ok(redis::Value::ServerError(e)) => RedisError::from(e),
                other => panic!("{code}: {other:?}"),
            };
            assert_eq!(kind_of(&err), ErrorKind::Unavailable, "{code}");
            let e = to_state("get", "127.0.0.1:6379", Failure::after_send(err));
            assert!(e.is_retryable());
            assert!(
                !e.outcome_unknown(),
                "the server refused: nothing was applied"
            );
        }
    }

    #[test]
    fn io_after_send_is_connection_with_unknown_outcome() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        let e = to_state("put", "h:1", Failure::after_send(RedisError::from(io)));
        assert_eq!(e.kind(), ErrorKind::Connection);
        assert!(e.outcome_unknown());
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "slow");
        let e = to_state("put", "h:1", Failure::after_send(RedisError::from(io)));
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert!(e.outcome_unknown());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no");
        let e = to_state("put", "h:1", Failure::before_send(RedisError::from(io)));
        assert!(!e.outcome_unknown());
    }

    #[test]
    fn other_server_errors_are_backend_errors() {
        let err = match redis::parse_redis_value(b"-ERR wrong number of arguments\r\n") {
            Ok(redis::Value::ServerError(e)) => RedisError::from(e),
            other => panic!("{other:?}"),
        };
        let e = to_state("get", "h:1", Failure::after_send(err));
        assert_eq!(e.kind(), ErrorKind::Backend);
        assert!(!e.is_retryable());
    }
}
