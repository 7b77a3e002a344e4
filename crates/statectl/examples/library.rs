//! The library behind statectl, used from Rust: open a backend by URL, write with a TTL,
//! read, and update atomically. Run with `cargo run -p statectl --example library`.

use std::time::Duration;

use state_core::{Registry, StateError, Ttl};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), StateError> {
    let mut registry = Registry::new(); // memory:// is built in
    state_embedded::register(&mut registry); // redb:PATH
    let dir = std::env::temp_dir().join(format!("statectl-example-{}", std::process::id()));
    let state = registry
        .connect(&format!("redb:{}/state.redb?prefix=app:", dir.display()))
        .await?;

    state
        .put_with_ttl(b"session:42", b"alice", Duration::from_secs(30))
        .await?;
    let value = state.get(b"session:42").await?;
    println!(
        "session:42 = {:?}",
        value.as_deref().map(String::from_utf8_lossy)
    );
    if let Ttl::Remaining(left) = state.ttl(b"session:42").await? {
        println!("expires in {} ms", left.as_millis());
    }

    // Optimistic update: succeeds only if nobody changed the value in between.
    state.put(b"counter", b"1").await?;
    let swapped = state.compare_and_swap(b"counter", Some(b"1"), b"2").await?;
    println!(
        "counter 1 -> 2: {swapped}; keys under app: {}",
        state.count(b"").await?
    );

    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
