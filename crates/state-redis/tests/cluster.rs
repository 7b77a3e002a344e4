//! The shared suites and Cluster-specific checks against a Redis Cluster of 3 masters and 3
//! replicas started once for this test binary (`testing::services::RedisCluster`).

mod common;

use std::sync::OnceLock;

use state_core::{StateBackend, stream};
use state_redis::{RedisConfig, RedisStateBackend};
use testing::services::RedisCluster;

fn cluster() -> &'static (RedisCluster, &'static str) {
    static CLUSTER: OnceLock<(RedisCluster, &'static str)> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = common::runtime()
            .block_on(RedisCluster::start())
            .unwrap_or_else(|e| panic!("cannot start the Redis Cluster: {e}"));
        let url: &'static str = Box::leak(cluster.url().into_boxed_str());
        (cluster, url)
    })
}

#[test]
fn cluster_passes_the_conformance_and_property_suites() {
    let (_, url) = cluster();
    common::run_suites(common::factory(url));
}

#[test]
fn cluster_batches_span_every_master_and_keep_request_order() {
    let (cluster, url) = cluster();
    common::runtime().block_on(async {
        let prefix = testing::conformance::unique_namespace();
        let config = RedisConfig::builder()
            .url(*url)
            .key_prefix(&prefix)
            .pipeline_batch_size(7)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let backend = RedisStateBackend::new(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<Vec<u8>> = (0..600u32).map(|i| format!("k{i}").into_bytes()).collect();
        let values: Vec<Vec<u8>> = (0..600u32).map(|i| format!("v{i}").into_bytes()).collect();
        let entries: Vec<(&[u8], &[u8])> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (k.as_slice(), v.as_slice()))
            .collect();
        backend
            .batch_put(&entries)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut asked: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        asked.reverse();
        asked.push(b"absent");
        let got = backend
            .batch_get(&asked)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for (key, value) in asked.iter().zip(&got) {
            let want = (*key != b"absent").then(|| {
                let mut v = b"v".to_vec();
                v.extend_from_slice(key.get(1..).unwrap_or_default());
                v
            });
            assert_eq!(value.as_deref(), want.as_deref(), "{key:?}");
        }
        // Every master holds some of the keys, and scan/count visit them all.
        let masters = cluster.masters().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(masters.len(), 3);
        for port in masters {
            let found = cluster
                .cli(port, &["--scan", "--pattern", &format!("{prefix}*")])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                found.lines().count() > 0,
                "master {port} holds none of the keys"
            );
        }
        assert_eq!(
            backend.count(b"").await.unwrap_or_else(|e| panic!("{e}")),
            600
        );
        let scanned = stream::try_collect(backend.scan(b"k1"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scanned.len(), 1 + 10 + 100, "k1, k10..k19, k100..k199");
        assert_eq!(backend.server_info().await.map(|i| i.len()).ok(), Some(3));
        // Summed over the 3 masters, each of which this backend has written to.
        let gauges = backend.gauges().await.unwrap_or_else(|e| panic!("{e}"));
        let value = |name: &str| gauges.iter().find(|g| g.name == name).map(|g| g.value);
        assert!(value("redis_memory_used_bytes") > Some(0.0), "{gauges:?}");
        assert!(value("redis_connected_clients") >= Some(3.0), "{gauges:?}");
        assert!(
            backend
                .health_check()
                .await
                .map(|h| h.is_healthy())
                .unwrap_or(false)
        );
        assert!(
            !backend.capabilities().atomic_restore,
            "one transaction per slot only"
        );
        assert_eq!(
            backend
                .batch_delete(&asked)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
            600
        );
        assert_eq!(
            backend.count(b"").await.unwrap_or_else(|e| panic!("{e}")),
            0
        );

        // The guide's form: every node as a redis:// URL plus cluster_mode(true).
        let seeds: Vec<String> = cluster
            .ports()
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        let config = RedisConfig::builder()
            .urls(seeds)
            .cluster_mode(true)
            .key_prefix(&prefix)
            .pool_size(1, 2)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let guide = RedisStateBackend::new(config)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        guide
            .put(b"g", b"1")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            backend.get(b"g").await.ok().flatten().as_deref(),
            Some(&b"1"[..])
        );
        guide.clear(b"").await.unwrap_or_else(|e| panic!("{e}"));
    });
}
