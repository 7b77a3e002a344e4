//! Concurrent histories (RELIABILITY.md cases 29–31): record what concurrent clients asked
//! and got, then check it against a per-key register model and count Jepsen-style
//! anomalies.
//!
//! - [`Recorder`] records each operation's invocation and completion on one logical clock,
//!   with an [`Outcome`] that keeps the contract of `StateError::outcome_unknown`: an error
//!   without it did not take effect ([`Outcome::Failed`]); with it, or after a client
//!   timeout, the operation may take effect at any time after its invocation
//!   ([`Outcome::Unknown`]).
//! - [`check`] decides linearizability per key (Wing–Gong/Lowe search, as porcupine runs
//!   it), within a step budget: [`Verdict::Unknown`] when the budget runs out, never a
//!   silent pass.
//! - [`anomalies`] counts values from nowhere, stale reads (lost writes) and resurrections
//!   without searching.
//! - [`run_workload`] / [`run_workload_with`] drive concurrent clients on a backend, with
//!   an optional fault injector running alongside; [`simulate`] makes linearizable
//!   histories of any size without one, to measure the checker.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use testing::history::{WorkloadConfig, anomalies, check, run_workload};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let backend = Arc::new(state_core::MemoryBackend::new());
//! let config = WorkloadConfig {
//!     prefix: testing::conformance::unique_namespace(),
//!     duration: Duration::from_millis(200),
//!     ..WorkloadConfig::default()
//! };
//! let history = run_workload(backend, config).await;
//! assert!(check(&history).is_linearizable());
//! assert!(anomalies(&history).is_clean());
//! # }
//! ```

mod anomaly;
mod check;
mod op;
mod record;
mod rng;
mod simulate;
pub mod trial;
mod workload;

pub use anomaly::{Anomalies, Counts, anomalies};
pub use check::{CheckConfig, Report, Verdict, check, check_with};
pub use op::{ClientId, Key, Op, OpId, OpKind, Outcome, Output, UNDECODABLE, ValueId};
pub use record::{History, Record, Recorder};
pub use simulate::{SimConfig, simulate};
pub use trial::{FaultLog, Trial, every};
pub use workload::{
    Weights, WorkloadConfig, decode_value, encode_value, run_workload, run_workload_with,
};
