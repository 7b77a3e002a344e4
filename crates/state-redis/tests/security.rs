//! TLS with certificates made for the test (and a wrong CA refused), an ACL user limited to
//! exactly what the README lists, and passwords kept out of Debug output and errors.

use std::path::Path;
use std::time::Duration;

use state_core::{ErrorKind, FencingToken, ImportMode, StateBackend, stream};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::{LocalRedis, LocalRedisOptions, RedisTls};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// PEM contents of a CA certificate, a server certificate and the server's key.
struct Pems {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), Box<dyn std::error::Error>> {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("the TLS test needs the `openssl` command ({e}); install openssl"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// A CA, and a server certificate for 127.0.0.1 and localhost signed by it; returns the
/// (CA, server cert, server key) PEM files' contents.
fn make_certs(dir: &Path, ca_name: &str) -> Result<Pems, Box<dyn std::error::Error>> {
    let ca_key = format!("{ca_name}-ca.key");
    let ca_crt = format!("{ca_name}-ca.crt");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &ca_key,
            "-out",
            &ca_crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca_name} test CA"),
        ],
    )?;
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    )?;
    Ok(Pems {
        ca: std::fs::read(dir.join(&ca_crt))?,
        cert: std::fs::read(dir.join("server.crt"))?,
        key: std::fs::read(dir.join("server.key"))?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_works_with_the_right_ca_and_refuses_a_wrong_one() -> TestResult {
    let dir = tempfile::tempdir()?;
    let Pems { ca, cert, key } = make_certs(dir.path(), "right")?;
    let wrong_ca = make_certs(dir.path(), "wrong")?.ca;
    let server = LocalRedis::start(LocalRedisOptions {
        files: vec![
            ("ca.crt".into(), ca.clone()),
            ("server.crt".into(), cert),
            ("server.key".into(), key),
        ],
        tls: Some(RedisTls {
            cert_file: "server.crt".into(),
            key_file: "server.key".into(),
            ca_file: "ca.crt".into(),
            auth_clients: false,
        }),
        ..LocalRedisOptions::default()
    })
    .await?;
    let url = server.url();
    assert!(url.starts_with("rediss://"), "{url}");

    let config = RedisConfig::builder()
        .url(&url)
        .tls(true)
        .tls_root_ca_pem(ca)
        .key_prefix("tls:")
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    backend
        .put_with_ttl(b"k", b"over tls", Duration::from_secs(60))
        .await?;
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"over tls"[..]));
    assert!(backend.health_check().await?.is_healthy());

    let quick = |ca: Option<Vec<u8>>| {
        let mut b = RedisConfig::builder()
            .url(&url)
            .retries(0, Duration::ZERO, Duration::ZERO)
            .connect_timeout(Duration::from_secs(2));
        if let Some(ca) = ca {
            b = b.tls_root_ca_pem(ca);
        }
        b.build()
    };
    for (what, config) in [
        ("a wrong CA", quick(Some(wrong_ca))?),
        ("the system roots", quick(None)?),
    ] {
        let err = RedisStateBackend::new(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("TLS with {what} was accepted"));
        let source = std::error::Error::source(&err).map(ToString::to_string);
        eprintln!("TLS with {what} refused: {err} (source: {source:?})");
        assert_eq!(err.kind(), ErrorKind::Config, "{what}: {err}");
        assert!(err.to_string().contains("certificate"), "{what}: {err}");
    }
    // And plain text to the TLS port gets nowhere.
    let plain = url.replacen("rediss://", "redis://", 1);
    let config = RedisConfig::builder()
        .url(plain)
        .retries(0, Duration::ZERO, Duration::ZERO)
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .build()?;
    assert!(RedisStateBackend::new(config).await.is_err());
    Ok(())
}

/// The ACL of the README, for prefix `app:` (standalone, without WAIT: no `+wait`,
/// `+cluster|nodes`).
const ACL: &str = "user app on >app-secret-pw ~app:* ~{*}* +get +set +del +mget +getdel \
    +pttl +pexpireat +persist +rename +scan +evalsha +eval +script|load +multi +exec +ping +info \
    +hset +hexists +hscan +unlink +mset +watch";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_with_only_the_documented_rights_can_do_everything() -> TestResult {
    let server = LocalRedis::start(LocalRedisOptions {
        config: vec![ACL.to_string()],
        username: Some("app".into()),
        password: Some("app-secret-pw".into()),
        ..LocalRedisOptions::default()
    })
    .await?;
    let url = server.url();
    let config = RedisConfig::builder()
        .url(&url)
        .key_prefix("app:")
        .build()?;
    let b = RedisStateBackend::new(config).await?;
    b.put(b"a", b"1").await?;
    b.put_with_ttl(b"b", b"2", Duration::from_secs(60)).await?;
    assert_eq!(b.get(b"a").await?.as_deref(), Some(&b"1"[..]));
    b.batch_put(&[(b"c", b"3"), (b"d", b"4")]).await?;
    assert_eq!(b.batch_get(&[b"c", b"d"]).await?.len(), 2);
    assert!(
        b.set_if_not_exists(b"e", b"5", Some(Duration::from_secs(9)))
            .await?
    );
    assert!(b.compare_and_swap(b"e", Some(b"5"), b"6").await?);
    b.put_fenced(b"f", b"7", FencingToken(3)).await?;
    let fenced = b.put_fenced(b"f", b"8", FencingToken(2)).await;
    assert_eq!(fenced.err().map(|e| e.kind()), Some(ErrorKind::Fenced));
    assert!(matches!(b.ttl(b"b").await?, state_core::Ttl::Remaining(_)));
    assert_eq!(b.get_and_delete(b"d").await?.as_deref(), Some(&b"4"[..]));
    assert_eq!(b.count(b"").await?, 5);
    let checkpoint = b.checkpoint().await?;
    b.delete(b"a").await?;
    b.batch_delete(&[b"c"]).await?;
    b.restore(checkpoint).await?;
    assert_eq!(b.count(b"").await?, 5);
    let exported = stream::try_collect(b.export(b"")).await?;
    assert_eq!(
        b.import(
            stream::iter(exported.into_iter().map(Ok)),
            ImportMode::Merge
        )
        .await?,
        5
    );
    assert!(b.health_check().await?.is_healthy());
    assert!(b.memory_usage().await? > 0);
    assert_eq!(b.clear(b"").await?, 5);

    // The ACL is real: another prefix is refused, as a configuration error.
    let config = RedisConfig::builder()
        .url(&url)
        .key_prefix("other:")
        .build()?;
    let outside = RedisStateBackend::new(config).await?;
    let err = outside.put(b"a", b"1").await.err();
    let err = err.unwrap_or_else(|| panic!("the ACL let a write outside app:* through"));
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(err.to_string().contains("ACL"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_debug_or_errors() -> TestResult {
    let server = LocalRedis::start(LocalRedisOptions {
        password: Some("correct-horse-battery".into()),
        ..LocalRedisOptions::default()
    })
    .await?;
    let good_url = server.url();
    assert!(good_url.contains("correct-horse-battery"));
    let bad_url = good_url.replace("correct-horse-battery", "wrong-staple-guess");

    let config = RedisConfig::from_url(&bad_url)?;
    let err = RedisStateBackend::new(config.clone())
        .await
        .err()
        .unwrap_or_else(|| panic!("a wrong password was accepted"));
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let mut shown = vec![
        err.to_string(),
        format!("{err:?}"),
        format!("{config:?}"),
        config.describe(),
    ];
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        shown.push(s.to_string());
        shown.push(format!("{s:?}"));
        source = s.source();
    }
    let backend = RedisStateBackend::new(RedisConfig::from_url(&good_url)?).await?;
    backend.put(b"k", b"v").await?;
    shown.push(format!("{backend:?}"));
    shown.push(format!("{:?}", backend.health_check().await?));
    shown.push(format!("{:?}", backend.stats().await));
    shown.push(format!("{:?}", RedisConfig::builder().url(&good_url)));
    for text in shown {
        assert!(!text.contains("correct-horse"), "password shown: {text}");
        assert!(!text.contains("wrong-staple"), "password shown: {text}");
    }
    backend.delete(b"k").await?;
    Ok(())
}
