//! Open a file, write with and without a TTL, scan, checkpoint: `cargo run --example embedded`.

use std::time::Duration;

use state_core::stream::try_collect;
use state_embedded::{Durability, RedbConfig, StateBackend};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), state_embedded::StateError> {
    let path = std::env::temp_dir().join("state-embedded-example/state.redb");
    let backend = RedbConfig::new(path)
        .key_prefix("example:")
        .durability(Durability::Immediate) // fsync every commit: nothing acknowledged is lost
        .open()?;

    backend.put(b"user:1", b"alice").await?;
    backend
        .put_with_ttl(b"session:9", b"token", Duration::from_secs(30))
        .await?;
    backend
        .batch_put(&[(b"user:2", b"bob"), (b"job:1", b"queued")])
        .await?;

    for entry in try_collect(backend.scan(b"user:")).await? {
        println!(
            "{} = {}",
            String::from_utf8_lossy(&entry.key),
            String::from_utf8_lossy(&entry.value)
        );
    }
    println!("session TTL: {:?}", backend.ttl(b"session:9").await?);

    let checkpoint = backend.checkpoint().await?; // one read transaction: a consistent snapshot
    println!("checkpoint of {} entries", checkpoint.len());
    backend.clear(b"").await?;
    backend.restore(checkpoint).await?; // one write transaction: all or nothing
    println!("restored {} keys", backend.count(b"").await?);
    Ok(())
}
