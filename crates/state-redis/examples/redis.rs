//! The Redis backend in a few lines: `cargo run -p state-redis --example redis [URL]`
//! (default `redis://127.0.0.1:6379`; also `redis+sentinel://…/mymaster`, `redis+cluster://…`).

use std::sync::Arc;
use std::time::Duration;

use state_core::{Stack, StatsLayer};
use state_redis::{RedisConfig, RedisStateBackend};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let config = RedisConfig::builder()
        .url(url)
        .key_prefix("example:")
        .retries(3, Duration::from_millis(50), Duration::from_secs(1))
        .build()?;
    let backend = RedisStateBackend::new(config).await?;
    // Counted the same way for every backend: the stats layer, read with `stats()`.
    let backend = Stack::new()
        .layer(StatsLayer::new())
        .apply(Arc::new(backend));

    backend
        .put_with_ttl(b"session:1", b"alice", Duration::from_millis(1500))
        .await?;
    println!("ttl: {:?}", backend.ttl(b"session:1").await?);
    println!(
        "claimed: {}",
        backend.set_if_not_exists(b"lock", b"me", None).await?
    );
    println!(
        "swapped: {}",
        backend
            .compare_and_swap(b"lock", Some(b"me"), b"you")
            .await?
    );

    let checkpoint = backend.checkpoint().await?;
    println!("checkpointed {} keys", checkpoint.len());
    backend.clear(b"").await?;
    backend.restore(checkpoint).await?;

    let stats = backend.stats().await;
    println!(
        "{} operations, hit rate {:.2}",
        stats.operations,
        stats.hit_rate()
    );
    backend.clear(b"").await?;
    Ok(())
}
