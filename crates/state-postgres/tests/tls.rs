//! TLS against a server started with certificates made here (openssl CLI): `verify-full`
//! works, a wrong CA is refused, and a password never shows in Debug or errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use state_core::{ErrorKind, StateBackend};
use state_postgres::{PostgresConfig, PostgresStateBackend};
use testing::services::{LocalPostgres, LocalPostgresOptions};

const SECRET: &str = "hunter2-not-the-password";

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (install the openssl package): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`{name}.crt`) and, if `server`, a server certificate for 127.0.0.1 signed by it.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    let key = format!("{name}.key");
    let crt = format!("{name}.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    dir.join(crt)
}

fn make_server_cert(dir: &Path, ca: &str) -> (Vec<u8>, Vec<u8>) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    if let Err(e) = std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    ) {
        panic!("cannot write san.ext: {e}");
    }
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let read = |name: &str| {
        std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("cannot read {name}: {e}"))
    };
    (read("server.crt"), read("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_works_a_wrong_ca_is_refused_and_secrets_stay_hidden() {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temp dir: {e}"),
    };
    let ca = make_ca(dir.path(), "ca");
    let wrong_ca = make_ca(dir.path(), "wrong");
    let (crt, key) = make_server_cert(dir.path(), "ca");
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
