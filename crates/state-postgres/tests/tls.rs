//! TLS against a server started with throwaway certificates (`testing::services::TestCerts`):
//! `verify-full` works, a wrong CA is refused, and a password never shows in Debug or errors.

use state_core::{ErrorKind, StateBackend};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use testing::services::{LocalPostgres, LocalPostgresOptions, TestCerts};

const SECRET: &str = "hunter2-not-the-password";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_works_a_wrong_ca_is_refused_and_secrets_stay_hidden() {
    let certs = TestCerts::generate().await.expect("test certificates");
    let wrong = TestCerts::generate().await.expect("a second, unrelated CA");
    let read = |path: std::path::PathBuf| certs.read(&path).expect("a certificate file");
    let (crt, key) = (read(certs.server_cert()), read(certs.server_key()));
    let (ca, wrong_ca) = (certs.ca_cert(), wrong.ca_cert());
    let options = LocalPostgresOptions {
        config: vec![
            "ssl = on".into(),
            "ssl_cert_file = 'server.crt'".into(),
            "ssl_key_file = 'server.key'".into(),
        ],
        files: vec![("server.crt".into(), crt), ("server.key".into(), key)],
        // TCP without TLS is refused; `app` must give its password.
        hba: vec![
            "hostnossl all all 127.0.0.1/32 reject".into(),
            "hostssl all app 127.0.0.1/32 scram-sha-256".into(),
        ],
        database: None,
    };
    let pg = match LocalPostgres::start(options).await {
        Ok(pg) => pg,
        Err(e) => panic!("cannot start a TLS PostgreSQL: {e}"),
    };
    if let Err(e) = pg
        .psql("CREATE ROLE app LOGIN PASSWORD 'the-right-password'")
        .await
    {
        panic!("cannot create the role: {e}");
    }
    let base = format!("postgres://postgres:{SECRET}@127.0.0.1:{}/test", pg.port());

    // verify-full with the right CA: works, and the session is encrypted.
    let config =
        PostgresConfig::new(&format!("{base}?sslmode=verify-full")).with_ssl_root_cert(&ca);
    assert!(!format!("{config:?}").contains(SECRET));
    let backend = match PostgresStateBackend::new(config).await {
        Ok(b) => b,
        Err(e) => panic!("verify-full with the right CA failed: {e}"),
    };
    assert!(!format!("{backend:?}").contains(SECRET));
    if let Err(e) = backend.put(b"k", b"v").await {
        panic!("put over TLS failed: {e}");
    }
    assert_eq!(
        backend.get(b"k").await.ok().flatten().as_deref(),
        Some(&b"v"[..])
    );
    let encrypted = pg
        .psql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'state-postgres' AND s.ssl",
        )
        .await;
    assert!(
        encrypted
            .as_deref()
            .is_ok_and(|n| n.trim().parse::<u32>().is_ok_and(|n| n >= 1)),
        "no encrypted session seen: {encrypted:?}"
    );

    // A CA that did not sign the server's certificate: refused, not retried.
    let config = PostgresConfig::new(&format!("{base}?sslmode=verify-full"))
        .with_ssl_root_cert(&wrong_ca)
        .with_pool_size(1, 2);
    let err = match PostgresStateBackend::new(config).await {
        Ok(_) => panic!("a server certificate from another CA was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(!err.to_string().contains(SECRET) && !format!("{err:?}").contains(SECRET));

    // Without TLS the server refuses the connection.
    let err = PostgresStateBackend::new(PostgresConfig::new(&format!("{base}?sslmode=disable")))
        .await
        .err()
        .map(|e| (e.kind(), e.to_string()));
    assert!(
        matches!(&err, Some((ErrorKind::Config, m)) if !m.contains(SECRET)),
        "{err:?}"
    );

    // A wrong password: a Config error that names neither the given nor the right one.
    let wrong = format!(
        "postgres://app:{SECRET}@127.0.0.1:{}/test?sslmode=verify-full",
        pg.port()
    );
    let err = match PostgresStateBackend::new(PostgresConfig::new(&wrong).with_ssl_root_cert(&ca))
        .await
    {
        Ok(_) => panic!("a wrong password was accepted"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    for shown in [err.to_string(), format!("{err:?}")] {
        assert!(
            !shown.contains(SECRET) && !shown.contains("the-right-password"),
            "{shown}"
        );
    }
}
