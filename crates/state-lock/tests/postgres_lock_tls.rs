//! `PostgresDistributedLock` over TLS, configured exactly as state-postgres is
//! (`sslmode`, `sslrootcert`): a server of its own that refuses plain connections, both
//! modes working with `verify-full`, and a wrong CA or `sslmode=disable` refused as
//! `Config` errors.

use std::time::Duration;

use sqlx::Connection;
use state_lock::{
    DistributedLock, ErrorKind, LockMode, PostgresDistributedLock, PostgresLockConfig,
};
use testing::services::{LocalPostgres, LocalPostgresOptions, TestCerts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_modes_work_over_verified_tls_and_refuse_a_wrong_ca() {
    let certs = TestCerts::generate().await.expect("test certificates");
    let wrong = TestCerts::generate().await.expect("a second, unrelated CA");
    let read = |path: std::path::PathBuf| certs.read(&path).expect("a certificate file");
    let pg = LocalPostgres::start(LocalPostgresOptions {
        files: vec![
            ("server.crt".to_owned(), read(certs.server_cert())),
            ("server.key".to_owned(), read(certs.server_key())),
        ],
        config: vec![
            "ssl = on".to_owned(),
            "ssl_cert_file = 'server.crt'".to_owned(),
            "ssl_key_file = 'server.key'".to_owned(),
        ],
        hba: vec!["hostnossl all all 127.0.0.1/32 reject".to_owned()],
        ..LocalPostgresOptions::default()
    })
    .await
    .expect("a TLS-only PostgreSQL");
    let ca = certs.ca_cert().display().to_string();
    let mut admin = sqlx::PgConnection::connect(&format!(
        "{}?sslmode=verify-full&sslrootcert={ca}",
        pg.url()
    ))
    .await
    .expect("an admin connection over TLS");

    for mode in [LockMode::Session, LockMode::Lease] {
        let app = format!("lock-tls-{mode}");
        let config = PostgresLockConfig::new(&pg.url())
            .with_mode(mode)
            .with_ssl_mode("verify-full")
            .with_ssl_root_cert(&ca)
            .with_application_name(&app);
        let lock = PostgresDistributedLock::with_config(config)
            .await
            .unwrap_or_else(|e| panic!("{mode} over verify-full: {e}"));
        let guard = lock
            .try_acquire("tls", Duration::from_secs(30))
            .await
            .expect("try_acquire over TLS")
            .expect("a free lock");
        let all_tls: Option<bool> = sqlx::query_scalar(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
        )
        .bind(&app)
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_ssl");
        assert_eq!(
            all_tls,
            Some(true),
            "{mode}: every lock connection uses TLS"
        );
        lock.release(guard).await.expect("release over TLS");

        let refused = PostgresDistributedLock::with_config(
            PostgresLockConfig::new(&pg.url())
                .with_mode(mode)
                .with_ssl_mode("verify-full")
                .with_ssl_root_cert(wrong.ca_cert()),
        )
        .await
        .expect_err("a certificate from another CA");
        assert_eq!(refused.kind(), ErrorKind::Config, "{mode}: {refused}");

        let plain = PostgresDistributedLock::with_config(
            PostgresLockConfig::new(&pg.url())
                .with_mode(mode)
                .with_ssl_mode("disable"),
        )
        .await
        .expect_err("the server refuses plain connections");
        assert_eq!(plain.kind(), ErrorKind::Config, "{mode}: {plain}");
    }
    let _ = admin.close().await;
}
