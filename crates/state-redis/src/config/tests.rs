//! The builder's and the URL parser's checks, and the redacted `Debug`.

use std::time::Duration;

use state_core::{ErrorKind, Result, Secret};

use super::builder::RedisConfigBuilder;
use super::{RedisConfig, Topology};

fn err(builder: RedisConfigBuilder) -> String {
    match builder.build() {
        Ok(c) => panic!("built {c:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            e.to_string()
        }
    }
}

fn url_err(url: &str) -> String {
    match RedisConfig::from_url(url) {
        Ok(c) => panic!("{url} built {c:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn the_guides_builders_build() -> Result<()> {
    let c = RedisConfig::builder()
        .urls([
            "redis://s1:26379".to_string(),
            "redis://s2:26379".to_string(),
            "redis://s3:26379".to_string(),
        ])
        .sentinel_master("mymaster")
        .key_prefix("optimizer:")
        .default_ttl(Duration::from_secs(3600))
        .pool_size(10, 50)
        .retries(5, Duration::from_millis(100), Duration::from_secs(5))
        .build()?;
    assert_eq!(c.hosts().len(), 3);
    assert_eq!(c.retry.max_attempts, 6);
    assert_eq!((c.pool_min, c.pool_max), (10, 50));
    let c = RedisConfig::builder()
        .urls((0..6).map(|i| format!("redis://node{i}:700{i}")))
        .cluster_mode(true)
        .pool_size(20, 100)
        .build()?;
    assert_eq!(c.topology, Topology::Cluster);
    let c = RedisConfig::builder()
        .url("rediss://localhost:6380")
        .tls(true)
        .build()?;
    assert!(c.tls);
    Ok(())
}

#[test]
fn every_scheme_parses_with_its_parameters() -> Result<()> {
    let c = RedisConfig::from_url(
        "redis://u:p%40ss@h:6380/2?prefix=a:&ttl=1500ms&pool_max=4&pipeline_batch_size=7&timeout=2s&connect_timeout=1s&retries=0",
    )?;
    assert_eq!(c.db, 2);
    assert_eq!(c.username.as_deref(), Some("u"));
    assert_eq!(c.password.as_ref().map(Secret::expose), Some("p@ss"));
    assert_eq!(c.key_prefix, b"a:");
    assert_eq!(c.default_ttl, Some(Duration::from_millis(1500)));
    assert_eq!((c.pool_min, c.pool_max), (1, 4));
    assert_eq!(c.pipeline_batch_size, 7);
    assert_eq!(c.tcp_nodelay, None, "unset: switched by load");
    let nodelay = |url| RedisConfig::from_url(url).map(|c| c.tcp_nodelay);
    assert_eq!(nodelay("redis://h?tcp_nodelay=false")?, Some(false));
    assert_eq!(nodelay("redis://h?tcp_nodelay=true")?, Some(true));
    assert_eq!(c.response_timeout, Duration::from_secs(2));
    assert_eq!(c.retry.max_attempts, 1);
    let c = RedisConfig::from_url("rediss://h")?;
    assert!(c.tls);
    let c = RedisConfig::from_url("redis+sentinel://a,b:26380/mymaster?wait_replicas=1")?;
    assert_eq!(
        c.topology,
        Topology::Sentinel {
            master_name: "mymaster".into()
        }
    );
    assert_eq!(c.hosts[0].port, 26379);
    assert_eq!(c.wait.map(|w| w.replicas), Some(1));
    let c = RedisConfig::from_url("redis+cluster://n1:7000,n2:7001")?;
    assert_eq!(c.topology, Topology::Cluster);
    Ok(())
}

#[test]
fn contradictions_are_config_errors_naming_the_field() {
    assert!(url_err("redis://h?colour=blue").contains("`colour`"));
    assert!(url_err("redis+sentinel://h:26379").contains("sentinel_master"));
    assert!(url_err("redis+cluster://h:7000/3").contains("database 0"));
    assert!(url_err("redis://h?pipeline_batch_size=0").contains("pipeline_batch_size"));
    assert!(url_err("redis://h?tcp_nodelay=yes").contains("tcp_nodelay"));
    assert!(url_err("redis://h?pool_min=5&pool_max=2").contains("pool_size"));
    assert!(url_err("redis://h?ttl=0s").contains("default_ttl"));
    assert!(url_err("redis://h/x").contains("db"));
    assert!(url_err("redis://h?wait_timeout=1s").contains("wait_replicas"));
    let b = || RedisConfig::builder().url("redis://h:1");
    assert!(err(b().tls(true)).contains("tls"));
    assert!(err(b().cluster_mode(true).db(2)).contains("db"));
    assert!(err(b().pipeline_batch_size(0)).contains("pipeline_batch_size"));
    assert!(err(b().pool_size(0, 4)).contains("pool_size"));
    assert!(err(b().username("u")).contains("username"));
    assert!(err(b().tls_root_ca_pem(b"x".to_vec())).contains("tls_root_ca"));
    assert!(err(b().cluster_mode(true).sentinel_master("m")).contains("cluster_mode"));
    assert!(err(b().connect_timeout(Duration::ZERO)).contains("connect_timeout"));
    assert!(err(b().wait_replicas(0, Duration::from_secs(1))).contains("wait_replicas"));
    assert!(
        err(b().retries(1, Duration::from_secs(9), Duration::from_secs(1))).contains("retries")
    );
    assert!(err(RedisConfig::builder()).contains("urls"));
    assert!(err(RedisConfig::builder().urls(["redis://a", "redis://b"])).contains("urls"));
    assert!(err(RedisConfig::builder().urls(["redis://a", "rediss://b"])).contains("tls"));
    assert!(err(RedisConfig::builder().url("rediss://a").tls(false)).contains("tls"));
    assert!(err(RedisConfig::builder().url("postgres://a/b")).contains("urls"));
}

#[test]
fn debug_never_shows_the_password() -> Result<()> {
    let c = RedisConfig::from_url("redis://admin:hunter2@h:1/0")?;
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("***"), "{shown}");
    let b = RedisConfig::builder()
        .url("redis://admin:hunter2@h:1")
        .password("hunter3");
    let shown = format!("{b:?}");
    assert!(!shown.contains("hunter"), "{shown}");
    assert!(!c.describe().contains("hunter"));
    Ok(())
}

#[test]
fn tls_and_read_from_parameters_set_sentinel_and_cluster_options() -> Result<()> {
    let c = RedisConfig::from_url(
        "redis+sentinel://s1:26379,s2:26379/mymaster?tls=true&read_from=replicas",
    )?;
    assert!(c.tls());
    assert_eq!(c.read_from(), super::ReadFrom::Replicas);
    let c = RedisConfig::from_url("redis+cluster://n1:7000?read_from=primary&tls=false")?;
    assert!(!c.tls());
    assert_eq!(c.read_from(), super::ReadFrom::Primary);
    let c = RedisConfig::builder()
        .url("redis+cluster://n1:7000")
        .read_from(super::ReadFrom::Replicas)
        .build()?;
    assert_eq!(c.read_from(), super::ReadFrom::Replicas);
    assert!(format!("{c:?}").contains("Replicas"));

    assert!(url_err("redis+cluster://n1:7000?tls=yes").contains("`tls`"));
    assert!(url_err("redis+cluster://n1:7000?read_from=replica").contains("`read_from`"));
    assert!(url_err("redis://h:6379?tls=true").contains("tls"));
    assert!(url_err("rediss://h:6379?tls=false").contains("tls"));
    let e = url_err("redis://h:6379?read_from=replicas");
    assert!(
        e.contains("read_from") && e.contains("Sentinel or Cluster"),
        "{e}"
    );
    let e = err(RedisConfig::builder()
        .url("redis+sentinel://s1:26379/m")
        .tls_root_ca_pem(b"pem".to_vec()));
    assert!(e.contains("tls=true"), "{e}");
    Ok(())
}

#[test]
fn parameters_of_urls_given_to_the_builder_apply_and_later_methods_override_them() -> Result<()> {
    let c = RedisConfig::builder()
        .url("redis+cluster://n1:7000?read_from=replicas&prefix=url:&pool_max=3")
        .key_prefix("method:")
        .build()?;
    assert_eq!(c.read_from(), super::ReadFrom::Replicas);
    assert_eq!(c.key_prefix(), b"method:");
    assert_eq!(c.pool_max(), 3);
    let c = RedisConfig::builder()
        .default_ttl(Duration::from_secs(5))
        .url("redis://h:6379?prefix=url:")
        .build()?;
    assert_eq!(c.key_prefix(), b"url:");
    assert_eq!(
        c.default_ttl,
        Some(Duration::from_secs(5)),
        "no ttl parameter: kept"
    );
    let e = err(RedisConfig::builder().url("redis://h:6379?read_from=nowhere"));
    assert!(e.contains("read_from"), "{e}");
    let e = err(RedisConfig::builder().url("redis://h:6379?colour=blue"));
    assert!(e.contains("colour"), "{e}");
    Ok(())
}
