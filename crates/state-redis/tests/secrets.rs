//! RELIABILITY.md case 28 for Redis, every URL form that carries a password (`:PW@` and
//! `user:PW@` on each of the four schemes, the builder's `.password()`), beside
//! `security.rs`'s wrong-password case: the password never shows in a config's or
//! builder's `Debug`, in `describe()`, or in the error of a refused URL or of a server that
//! cannot be reached (standalone, Sentinel, Cluster). `?password=` is not a parameter of
//! Redis URLs: the refusal names the parameter, never its value.

use std::net::TcpListener;
use std::time::Duration;

use state_core::{ErrorKind, StateBackend};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::harness::everything_shown;
use testing::services::{LocalRedis, LocalRedisOptions};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SECRET: &str = "Sup3rS3cretXYZ";

#[track_caller]
fn no_password(what: &str, shown: &[String]) {
    for text in shown {
        assert!(
            !text.contains(SECRET),
            "{what}: the password shows in: {text}"
        );
    }
}

fn closed_port() -> Result<u16, std::io::Error> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// URLs with the password, on `port`.
fn urls(port: u16) -> Vec<String> {
    vec![
        format!("redis://:{SECRET}@127.0.0.1:{port}"),
        format!("redis://app:{SECRET}@127.0.0.1:{port}/2?prefix=p:"),
        format!("rediss://app:{SECRET}@127.0.0.1:{port}"),
        format!("redis+sentinel://:{SECRET}@127.0.0.1:{port}/mymaster"),
        format!("redis+sentinel://app:{SECRET}@127.0.0.1:{port},127.0.0.1:1/mymaster"),
        format!("redis+cluster://:{SECRET}@127.0.0.1:{port},127.0.0.1:1"),
    ]
}

#[test]
fn configs_and_refused_urls_never_show_the_password() {
    for url in urls(6379) {
        let config = RedisConfig::from_url(&url).unwrap_or_else(|e| panic!("{url} is valid: {e}"));
        let builder = RedisConfig::builder().url(&url);
        no_password(
            &url,
            &[
                format!("{config:?}"),
                format!("{builder:?}"),
                config.describe(),
            ],
        );
    }
    let built = RedisConfig::builder()
        .url("redis://127.0.0.1:6379")
        .username("app")
        .password(SECRET);
    no_password("builder", &[format!("{built:?}")]);
    let built = built.build().unwrap_or_else(|e| panic!("{e}"));
    no_password("built", &[format!("{built:?}"), built.describe()]);

    for url in [
        format!("redis://127.0.0.1:6379/?password={SECRET}"),
        format!("redis://:{SECRET}@127.0.0.1:6379/?tls=maybe"),
        format!("redis://:{SECRET}@127.0.0.1:6379/?pool_max=lots"),
        format!("redis://:{SECRET}@127.0.0.1:6379/notadb"),
        format!("redis+sentinel://:{SECRET}@127.0.0.1:26379"),
        format!("redis+cluster://:{SECRET}@127.0.0.1:7000/3"),
        format!("redis://:{SECRET}@127.0.0.1:6379,127.0.0.1:6380"),
    ] {
        let err = RedisConfig::from_url(&url)
            .err()
            .unwrap_or_else(|| panic!("{url} was accepted"));
        assert_eq!(err.kind(), ErrorKind::Config, "{err}");
        no_password(&url, &everything_shown(&err));
        if url.contains("?password=") {
            assert!(err.message().contains("`password`"), "{err}");
        }
        let err = RedisConfig::builder()
            .url(&url)
            .build()
            .err()
            .unwrap_or_else(|| panic!("the builder took {url}"));
        no_password(&url, &everything_shown(&err));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_servers_never_show_the_password() -> TestResult {
    let closed = closed_port()?;
    for url in urls(closed) {
        if url.starts_with("rediss://") || url.contains(",127.0.0.1:1") {
            // Two unreachable seeds say nothing more than one.
            continue;
        }
        let config = RedisConfig::builder()
            .url(&url)
            .retries(0, Duration::ZERO, Duration::ZERO)
            .failover_timeout(Duration::ZERO)
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        let err = RedisStateBackend::new(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{url}: a closed port accepted the connection"));
        eprintln!("{}", err);
        assert!(
            matches!(err.kind(), ErrorKind::Connection | ErrorKind::Unavailable),
            "{url}: {err}"
        );
        no_password(&url, &everything_shown(&err));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_that_work_never_show() -> TestResult {
    let server = LocalRedis::start(LocalRedisOptions {
        config: vec![format!("user app on >{SECRET} ~sec:* +@all")],
        ..LocalRedisOptions::default()
    })
    .await?;
    let url = format!(
        "redis://app:{SECRET}@127.0.0.1:{}/?prefix=sec:",
        server.port()
    );
    let config = RedisConfig::from_url(&url)?;
    let backend = RedisStateBackend::new(config.clone()).await?;
    backend.put(b"k", b"v").await?;
    assert_eq!(backend.get(b"k").await?.as_deref(), Some(&b"v"[..]));
    let health = backend.health_check().await?;
    assert!(health.is_healthy(), "{health:?}");
    // A refused command on the authenticated connection: the ACL allows sec:* only.
    let outside = RedisStateBackend::new(
        RedisConfig::builder()
            .url(&url)
            .key_prefix("other:")
            .build()?,
    )
    .await?;
    let err = outside
        .put(b"k", b"v")
        .await
        .err()
        .unwrap_or_else(|| panic!("the ACL let other:k through"));
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    no_password(
        "a working backend",
        &[
            format!("{config:?}"),
            format!("{backend:?}"),
            format!("{health:?}"),
            format!("{:?}", backend.stats().await),
        ],
    );
    no_password("a refused command", &everything_shown(&err));
    Ok(())
}
