//! The service fixtures start every topology and the result answers real clients
//! (`redis-cli`, `psql`). Every wait is bounded; every launcher cleans up on drop.

use std::process::Command;
use std::time::Duration;

use testing::services::{
    self, LocalPostgres, LocalPostgresOptions, LocalRedis, LocalRedisOptions, RedisCluster,
    RedisSentinel, RedisTls, ServiceError, ServiceOrigin, TestCerts,
};

type Result<T = ()> = std::result::Result<T, ServiceError>;

/// Set by `env_url_is_preferred` for the child run of the shared-service tests.
const EXPECT_REDIS: &str = "STATE_TEST_EXPECT_REDIS_URL";
const EXPECT_POSTGRES: &str = "STATE_TEST_EXPECT_POSTGRES_URL";
const PROBE_KEY: &str = "STATE_TEST_PROBE_KEY";

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("svc-test:{tag}:{}:{nanos}", std::process::id())
}

/// Runs a command and returns its trimmed stdout; fails with its stderr.
async fn output(cmd: &mut tokio::process::Command) -> Result<String> {
    let shown = format!("{:?}", cmd.as_std());
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| ServiceError::from_message(format!("{shown} timed out")))?
        .map_err(|e| ServiceError::from_message(format!("cannot run {shown}: {e}")))?;
    if !out.status.success() {
        return Err(ServiceError::from_message(format!(
            "{shown} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

async fn redis_cli_url(url: &str, args: &[&str]) -> Result<String> {
    output(
        tokio::process::Command::new("redis-cli")
            .args(["-u", url])
            .args(args),
    )
    .await
}

async fn psql_url(url: &str, sql: &str) -> Result<String> {
    output(tokio::process::Command::new("psql").args([
        "-X",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        url,
        "-c",
        sql,
    ]))
    .await
}

#[tokio::test]
async fn shared_redis_answers() -> Result {
    let redis = services::redis().await?;
    let url = redis.url();
    assert_eq!(
        services::parse_url(&url).map(|u| u.scheme().as_str()).ok(),
        Some("redis")
    );
    assert_eq!(redis_cli_url(&url, &["PING"]).await?, "PONG");
    if let Ok(expected) = std::env::var(EXPECT_REDIS) {
        assert_eq!(redis.origin(), ServiceOrigin::Env);
        assert_eq!(url, expected);
    }
    if let Ok(key) = std::env::var(PROBE_KEY) {
        assert_eq!(redis_cli_url(&url, &["SET", &key, "child"]).await?, "OK");
    }
    Ok(())
}

#[tokio::test]
async fn shared_postgres_answers() -> Result {
    let pg = services::postgres().await?;
    let url = pg.url();
    assert_eq!(
        services::parse_url(&url).map(|u| u.scheme().as_str()).ok(),
        Some("postgres")
    );
    // Tests work in schemas of their own: create one, use it, drop it.
    let schema = unique("pg").replace([':', '-'], "_");
    psql_url(&url, &format!("CREATE SCHEMA \"{schema}\"")).await?;
    let one = psql_url(&url, "select 1").await;
    psql_url(&url, &format!("DROP SCHEMA \"{schema}\" CASCADE")).await?;
    assert_eq!(one?, "1");
    if let Ok(expected) = std::env::var(EXPECT_POSTGRES) {
        assert_eq!(pg.origin(), ServiceOrigin::Env);
        assert_eq!(url, expected);
    }
    Ok(())
}

/// The environment's URL wins over starting a server: a child run of the shared-service
/// tests, pointed at servers this test started, must use exactly those.
#[tokio::test]
async fn env_url_is_preferred() -> Result {
    let redis = LocalRedis::start(LocalRedisOptions::default()).await?;
    let pg = LocalPostgres::start(LocalPostgresOptions::default()).await?;
    let key = unique("probe");
    let exe = std::env::current_exe()
        .map_err(|e| ServiceError::from_message(format!("no test binary path: {e}")))?;
    for test in ["shared_redis_answers", "shared_postgres_answers"] {
        let out = Command::new(&exe)
            .args([test, "--exact", "--test-threads", "1"])
            .env(services::REDIS_URL_ENV, redis.url())
            .env(services::POSTGRES_URL_ENV, pg.url())
            .env(EXPECT_REDIS, redis.url())
            .env(EXPECT_POSTGRES, pg.url())
            .env(PROBE_KEY, &key)
            .output()
            .map_err(|e| ServiceError::from_message(format!("cannot rerun {test}: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child run of {test} failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The child's write landed on our server, not on one it started itself.
    assert_eq!(redis.cli(&["GET", &key]).await?.trim(), "child");
    Ok(())
}

#[tokio::test]
async fn local_redis_kill_pause_restart() -> Result {
    let mut redis = LocalRedis::start(LocalRedisOptions::default()).await?;
    assert!(services::parse_url(&redis.url()).is_ok());
    assert_eq!(redis.cli(&["PING"]).await?.trim(), "PONG");
    assert!(redis.pid().is_some());

    redis.pause()?;
    let paused = tokio::time::timeout(Duration::from_millis(500), redis.cli(&["PING"])).await;
    assert!(paused.is_err(), "a paused server answered: {paused:?}");
    redis.resume()?;
    assert_eq!(redis.cli(&["PING"]).await?.trim(), "PONG");

    redis.kill();
    assert!(redis.pid().is_none());
    assert!(redis.cli(&["PING"]).await.is_err());
    redis.restart().await?;
    assert_eq!(redis.cli(&["PING"]).await?.trim(), "PONG");
    Ok(())
}

#[tokio::test]
async fn local_redis_with_password_and_acl_user() -> Result {
    let redis = LocalRedis::start(LocalRedisOptions {
        password: Some(r#"s3cret:/@"\x"#.to_owned()),
        ..LocalRedisOptions::default()
    })
    .await?;
    assert_eq!(redis.cli(&["PING"]).await?.trim(), "PONG");
    assert!(!format!("{:?}", services::parse_url(&redis.url())).contains("s3cret"));
    let anonymous = output(tokio::process::Command::new("redis-cli").args([
        "-p",
        &redis.port().to_string(),
        "PING",
    ]))
    .await?;
    assert!(
        anonymous.contains("NOAUTH"),
        "unauthenticated PING got {anonymous}"
    );

    let acl = LocalRedis::start(LocalRedisOptions {
        username: Some("alice".to_owned()),
        password: Some("wonder".to_owned()),
        config: vec!["user alice on >wonder ~* &* +@all".to_owned()],
        ..LocalRedisOptions::default()
    })
    .await?;
    assert!(acl.url().starts_with("redis://alice:wonder@127.0.0.1:"));
    assert_eq!(acl.cli(&["ACL", "WHOAMI"]).await?.trim(), "alice");
    Ok(())
}

#[tokio::test]
async fn redis_cluster_forms_and_fails_over() -> Result {
    let mut cluster = RedisCluster::start().await?;
    let url = services::parse_url(&cluster.url())
        .map_err(|e| ServiceError::from_message(e.to_string()))?;
    assert_eq!(url.scheme().as_str(), "redis+cluster");
    assert_eq!(url.hosts().len(), 6);
    for port in cluster.ports() {
        let info = cluster.cli(port, &["CLUSTER", "INFO"]).await?;
        assert!(info.contains("cluster_state:ok"), "node {port}: {info}");
    }
    let masters = cluster.masters().await?;
    assert_eq!(masters.len(), 3);
    assert_eq!(cluster.replicas().await?.len(), 3);
    let key = unique("cluster");
    let first = cluster.ports()[0];
    assert_eq!(
        cluster.cli(first, &["-c", "SET", &key, "v"]).await?.trim(),
        "OK"
    );

    let victim = masters[0];
    cluster.kill_node(victim)?;
    let promoted = cluster
        .wait_for_promotion(victim, Duration::from_secs(60))
        .await?;
    assert!(!masters.contains(&promoted));
    assert!(cluster.masters().await?.contains(&promoted));
    let live = cluster
        .ports()
        .into_iter()
        .find(|p| *p != victim)
        .unwrap_or(first);
    assert_eq!(cluster.cli(live, &["-c", "GET", &key]).await?.trim(), "v");
    Ok(())
}

#[tokio::test]
async fn redis_sentinel_reports_primary_and_fails_over() -> Result {
    let mut sentinel = RedisSentinel::start().await?;
    let url = services::parse_url(&sentinel.url())
        .map_err(|e| ServiceError::from_message(e.to_string()))?;
    assert_eq!(url.scheme().as_str(), "redis+sentinel");
    assert_eq!(url.path(), Some(sentinel.master_name()));
    let primary = sentinel.primary_port().await?;
    let replica = sentinel.replica_port().await?;
    for s in sentinel.sentinel_ports() {
        let addr = sentinel
            .cli(s, &["SENTINEL", "get-master-addr-by-name", "mymaster"])
            .await?;
        assert_eq!(
            addr.split_whitespace().collect::<Vec<_>>(),
            ["127.0.0.1", &primary.to_string()]
        );
    }

    assert_eq!(sentinel.kill_primary().await?, primary);
    let promoted = sentinel
        .wait_for_new_primary(primary, Duration::from_secs(60))
        .await?;
    assert_eq!(promoted, replica);
    let key = unique("sentinel");
    assert_eq!(
        sentinel.cli(promoted, &["SET", &key, "v"]).await?.trim(),
        "OK"
    );
    Ok(())
}

#[tokio::test]
async fn local_postgres_restart_kill_and_replica() -> Result {
    let pg = LocalPostgres::start(LocalPostgresOptions {
        config: vec!["max_connections = 50".to_owned()],
        ..LocalPostgresOptions::default()
    })
    .await?;
    assert!(pg.url().ends_with("/test"));
    assert_eq!(psql_url(&pg.url(), "select 1").await?, "1");
    assert_eq!(psql_url(&pg.url(), "show max_connections").await?, "50");
    pg.psql("CREATE TABLE kept (v int); INSERT INTO kept VALUES (7)")
        .await?;

    pg.restart().await?;
    assert_eq!(pg.psql("select v from kept").await?.trim(), "7");
    pg.kill()?;
    pg.restart().await?;
    assert_eq!(pg.psql("select v from kept").await?.trim(), "7");

    let replica = pg.start_replica().await?;
    assert_eq!(
        replica.psql("select pg_is_in_recovery()").await?.trim(),
        "t"
    );
    pg.psql("INSERT INTO kept VALUES (8)").await?;
    let mut seen = String::new();
    for _ in 0..100 {
        seen = replica.psql("select count(*) from kept").await?;
        if seen.trim() == "2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.trim(), "2", "the replica did not catch up within 10 s");
    replica.promote().await?;
    assert_eq!(
        replica.psql("select pg_is_in_recovery()").await?.trim(),
        "f"
    );
    Ok(())
}

#[tokio::test]
async fn tls_redis_and_postgres() -> Result {
    let certs = TestCerts::generate().await?;
    let path = |p: std::path::PathBuf| p.display().to_string();
    let redis = LocalRedis::start(LocalRedisOptions {
        tls: Some(RedisTls {
            cert_file: path(certs.server_cert()),
            key_file: path(certs.server_key()),
            ca_file: path(certs.ca_cert()),
            auth_clients: false,
        }),
        ..LocalRedisOptions::default()
    })
    .await?;
    assert!(redis.url().starts_with("rediss://127.0.0.1:"));
    assert_eq!(redis.cli(&["PING"]).await?.trim(), "PONG");
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        output(tokio::process::Command::new("redis-cli").args([
            "-p",
            &redis.port().to_string(),
            "PING",
        ])),
    )
    .await;
    assert!(
        !matches!(&plain, Ok(Ok(reply)) if reply == "PONG"),
        "a plain client got an answer from the TLS port: {plain:?}"
    );

    let pg = LocalPostgres::start(LocalPostgresOptions {
        files: vec![
            ("server.crt".to_owned(), certs.read(&certs.server_cert())?),
            ("server.key".to_owned(), certs.read(&certs.server_key())?),
        ],
        config: vec![
            "ssl = on".to_owned(),
            "ssl_cert_file = 'server.crt'".to_owned(),
            "ssl_key_file = 'server.key'".to_owned(),
        ],
        hba: vec!["hostnossl all all 127.0.0.1/32 reject".to_owned()],
        ..LocalPostgresOptions::default()
    })
    .await?;
    let secure = format!(
        "{}?sslmode=verify-full&sslrootcert={}",
        pg.url().replace("127.0.0.1", "localhost"),
        certs.ca_cert().display()
    );
    let ssl = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    assert_eq!(psql_url(&secure, ssl).await?, "t");
    let insecure = format!("{}?sslmode=disable", pg.url());
    assert!(psql_url(&insecure, "select 1").await.is_err());
    Ok(())
}
