//! The shared suites and Sentinel-specific checks against a primary, a replica and three
//! sentinels started once for this test binary (`testing::services::RedisSentinel`).

mod common;

use std::sync::OnceLock;

use state_core::StateBackend;
use state_redis::{RedisConfig, RedisStateBackend, Topology};
use testing::services::RedisSentinel;

fn sentinel() -> &'static (RedisSentinel, &'static str) {
    static SENTINEL: OnceLock<(RedisSentinel, &'static str)> = OnceLock::new();
    SENTINEL.get_or_init(|| {
        let topology = common::runtime()
            .block_on(RedisSentinel::start())
            .unwrap_or_else(|e| panic!("cannot start the Sentinel topology: {e}"));
        let url: &'static str = Box::leak(topology.url().into_boxed_str());
        (topology, url)
    })
}

#[test]
fn sentinel_passes_the_conformance_and_property_suites() {
    let (_, url) = sentinel();
    common::run_suites(common::factory(url));
}

#[test]
fn sentinel_mode_sends_data_to_the_primary_and_checks_the_master_name() {
    let (topology, url) = sentinel();
    common::runtime().block_on(async {
        let prefix = testing::conformance::unique_namespace();
        let config = RedisConfig::builder()
            .url(*url)
            .key_prefix(&prefix)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(config.topology(), Topology::Sentinel { master_name } if master_name == "mymaster"));
        let backend = RedisStateBackend::new(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        backend.put(b"k", b"v").await.unwrap_or_else(|e| panic!("{e}"));
        let primary = topology.primary_port().await.unwrap_or_else(|e| panic!("{e}"));
        let got = topology
            .cli(primary, &["GET", &format!("{prefix}k")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.trim(), "v");
        let info = backend.server_info().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(info.first().map(|i| i.role.as_str()), Some("master"));
        assert!(backend.capabilities().atomic_restore);
        backend.clear(b"").await.unwrap_or_else(|e| panic!("{e}"));

        // The guide's form: the sentinels as redis:// URLs plus the master name.
        let sentinels: Vec<String> = topology
            .sentinel_ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        let config = RedisConfig::builder()
            .urls(sentinels)
            .sentinel_master(topology.master_name())
            .key_prefix(&prefix)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let guide = RedisStateBackend::new(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        guide.put(b"g", b"1").await.unwrap_or_else(|e| panic!("{e}"));
        let got = topology
            .cli(primary, &["GET", &format!("{prefix}g")])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.trim(), "1");
        guide.clear(b"").await.unwrap_or_else(|e| panic!("{e}"));

        // A master name the sentinels do not know is a configuration error at start.
        let ports = topology.sentinel_ports();
        let url = format!("redis+sentinel://127.0.0.1:{}/nosuchmaster", ports[0]);
        let err = RedisStateBackend::from_url(&url).await.err().map(|e| e.kind());
        assert_eq!(err, Some(state_core::ErrorKind::Config));
    });
}
