//! What the observing layers cost per call on `memory://`, in nanoseconds, one task, no
//! contention: `cargo run --release -p state-metrics --example overhead [CALLS]`.
//!
//! Each variant runs the same gets on the same store, interleaved with the others, five
//! rounds; the median per variant is printed, minus the bare backend's.

use std::sync::Arc;
use std::time::Instant;

use state_core::{MemoryBackend, Stack, StateBackend, StatsLayer};
use state_metrics::{MetricsLayer, TracingLayer};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let calls: u32 = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(2_000_000);
    // The real recorder, as a service would run it (its upkeep drains the histograms).
    state_metrics::prometheus::install("127.0.0.1:0".parse()?)?;
    let store = Arc::new(MemoryBackend::new());
    store.put(b"key", b"value").await?;
    let bare: Arc<dyn StateBackend> = store.clone();
    let separate = Stack::new()
        .layer(TracingLayer::new())
        .layer(MetricsLayer::new())
        .layer(StatsLayer::new())
        .apply(bare.clone());
    let variants: Vec<(&str, Arc<dyn StateBackend>)> = vec![
        ("bare", bare.clone()),
        (
            "stats",
            Stack::new().layer(StatsLayer::new()).apply(bare.clone()),
        ),
        (
            "tracing",
            Stack::new().layer(TracingLayer::new()).apply(bare.clone()),
        ),
        (
            "metrics",
            Stack::new().layer(MetricsLayer::new()).apply(bare.clone()),
        ),
        ("all three", separate),
    ];
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _round in 0..5 {
        for (i, (_, backend)) in variants.iter().enumerate() {
            let started = Instant::now();
            for _ in 0..calls {
                std::hint::black_box(backend.get(b"key").await?);
            }
            times[i].push(started.elapsed().as_nanos() as f64 / f64::from(calls));
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut times[0].clone());
    for ((name, _), t) in variants.iter().zip(times.iter_mut()) {
        let m = median(t);
        println!("{name:>18}: {m:6.1} ns per get, +{:5.1} ns", m - base);
    }
    Ok(())
}
