//! RELIABILITY.md case 28 for PostgreSQL: the password of a `postgres://` URL never shows
//! in a config's or backend's `Debug`, in the redacted URL, or in any error: a bad URL, a
//! closed port, a wrong password. `?password=` is not a parameter this backend takes: the
//! refusal names the parameter, never its value.
//!
//! The wrong password is tried on a private server whose test user logs in with SCRAM (the
//! shared server trusts every login, so no password could be wrong there).

use std::net::TcpListener;
use std::time::Duration;

use state_core::{ErrorKind, StateBackend};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use testing::harness::everything_shown;
use testing::services::{LocalPostgres, LocalPostgresOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SECRET: &str = "Sup3rS3cretXYZ";
const WRONG: &str = "Wr0ngS3cretQRS";

#[track_caller]
fn no_password(what: &str, shown: &[String]) {
    for text in shown {
        for secret in [SECRET, WRONG] {
            assert!(
                !text.contains(secret),
                "{what}: the password shows in: {text}"
            );
        }
    }
}

fn quick(config: PostgresConfig) -> PostgresConfig {
    config
        .with_ssl_mode("disable")
        .with_retries(0, Duration::ZERO, Duration::ZERO)
        .with_failover_timeout(Duration::ZERO)
        .with_connect_timeout(Duration::from_secs(2))
        .with_acquire_timeout(Duration::from_secs(3))
}

#[test]
fn configs_never_show_the_password() {
    for url in [
        format!("postgres://app:{SECRET}@db.example:5432/state"),
        format!("postgresql://app:{SECRET}@db1:5432,db2:5433/state?sslmode=require"),
        format!("postgres://:{SECRET}@db/state?schema=s&table=t"),
    ] {
        let config =
            PostgresConfig::from_url(&url).unwrap_or_else(|e| panic!("{url} is a valid URL: {e}"));
        assert!(config.redacted_url().contains(":***@"), "{config:?}");
        no_password(&url, &[format!("{config:?}"), config.redacted_url()]);
    }
    // Refused URLs: the error and the config that carries it (`new` never fails).
    for url in [
        format!("postgres://app@db/state?password={SECRET}"),
        format!("postgres://app:{SECRET}@db/state?sslmode=bogus"),
        format!("postgres://app:{SECRET}@db:99999/state"),
        format!("postgres://app:{SECRET}@db/state?pool_max=many"),
        format!("postgres://app:{SECRET}@db/state?colour=blue"),
    ] {
        let err = PostgresConfig::from_url(&url)
            .err()
            .unwrap_or_else(|| panic!("{url} was accepted"));
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        no_password(&url, &everything_shown(&err));
        no_password(&url, &[format!("{:?}", PostgresConfig::new(&url))]);
        if url.contains("?password=") {
            assert!(err.message().contains("`password`"), "{err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_never_show_the_password() -> TestResult {
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("postgres://app:{SECRET}@127.0.0.1:{closed}/state");
    let err = PostgresStateBackend::new(quick(PostgresConfig::from_url(&url)?))
        .await
        .err()
        .unwrap_or_else(|| panic!("a closed port accepted the connection"));
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(
        err.to_string().contains(&closed.to_string()),
        "names the server: {err}"
    );
    no_password("closed port", &everything_shown(&err));

    let server = LocalPostgres::start(LocalPostgresOptions {
        hba: vec!["host all secuser 127.0.0.1/32 scram-sha-256".into()],
        ..LocalPostgresOptions::default()
    })
    .await?;
    server
        .psql(&format!(
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE secuser LOGIN PASSWORD '{SECRET}'; \
             GRANT ALL ON SCHEMA public TO secuser; \
             GRANT CREATE ON DATABASE test TO secuser"
        ))
        .await?;
    let port = server.port();
    let wrong = format!("postgres://secuser:{WRONG}@127.0.0.1:{port}/test");
    let err = PostgresStateBackend::new(quick(PostgresConfig::from_url(&wrong)?))
        .await
        .err()
        .unwrap_or_else(|| panic!("a wrong password was accepted"));
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string().contains("28P01"),
        "the server's refusal: {err}"
    );
    no_password("wrong password", &everything_shown(&err));

    let right = format!("postgres://secuser:{SECRET}@127.0.0.1:{port}/test?prefix=sec:");
    let config = quick(PostgresConfig::from_url(&right)?);
    let backend = PostgresStateBackend::new(config.clone()).await?;
    backend.put(b"k", b"v").await?;
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v"[..]));
    let health = backend.health_check().await?;
    assert!(health.is_healthy(), "{health:?}");
    no_password(
        "a working backend",
        &[
            format!("{config:?}"),
            format!("{backend:?}"),
            format!("{health:?}"),
            format!("{:?}", backend.stats().await),
        ],
    );
    // A statement error on the authenticated connection: no password either.
    let err = backend
        .put_with_metadata(b"k", b"v", serde_json::json!("a\u{0}b"))
        .await
        .err()
        .unwrap_or_else(|| panic!("jsonb took a NUL"));
    no_password("a rejected statement", &everything_shown(&err));
    backend.close().await;
    Ok(())
}
