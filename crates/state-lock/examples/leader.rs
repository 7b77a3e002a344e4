//! The guide's leader-election loop, written with `LeaderElector`.
//!
//! ```text
//! cargo run -p state-lock --example leader [URL]     # URL: memory:// (default), redis://…, postgres://…
//! ```
//! Two instances campaign for the same lock. The leader does three rounds of work, each
//! written with its epoch as the fencing token, then steps down; the other takes over with
//! a higher epoch. A paused former leader's writes would be rejected by the same token.

use std::sync::Arc;
use std::time::Duration;

use state_core::{MemoryBackend, StateBackend};
use state_lock::{DistributedLock, LeaderElector, Result};

const TTL: Duration = Duration::from_secs(3);

/// One instance: campaign, lead for three rounds (re-checking leadership after every wait),
/// step down; twice.
async fn instance(
    id: &str,
    lock: Arc<dyn DistributedLock>,
    state: Arc<dyn StateBackend>,
) -> Result<()> {
    let elector = LeaderElector::new(lock, "example-leader", TTL)
        .with_retry_interval(Duration::from_millis(100));
    for _ in 0..2 {
        let term = elector.campaign().await?;
        println!("{id}: became leader, epoch {}", term.epoch().0);
        for round in 1..=3 {
            if !term.is_leader() {
                println!("{id}: lost leadership; campaigning again");
                break;
            }
            // Leader work: fenced with the epoch, so a deposed leader cannot overwrite.
            let value = format!("{id} round {round}");
            state
                .put_fenced(b"leader-output", value.as_bytes(), term.epoch())
                .await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        println!("{id}: stepping down");
        term.step_down().await?;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "memory://".into());
    let lock = state_lock::connect(&url, Duration::from_secs(30)).await?;
    // Where the leaders write; a real service would use its state backend.
    let state: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
    let a = tokio::spawn(instance("A", Arc::clone(&lock), Arc::clone(&state)));
    let b = tokio::spawn(instance("B", lock, Arc::clone(&state)));
    for handle in [a, b] {
        handle.await.map_err(|e| {
            state_core::StateError::new(state_core::ErrorKind::Backend, e.to_string())
        })??;
    }
    let last = state.get(b"leader-output").await?;
    println!(
        "last write: {}",
        last.map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_default()
    );
    Ok(())
}
