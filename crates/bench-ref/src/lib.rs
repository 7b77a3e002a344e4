#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

/// The workload plan, shared with `statectl bench` (from the `bench-plan` crate).
pub use bench_plan::plan;
/// Histograms and the report, shared with `statectl bench` (from the `bench-plan` crate).
pub use bench_plan::report;

/// Runs a network workload on a multi-threaded tokio runtime of its own.
pub fn block_on<T>(
    workload: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the tokio runtime: {e}"))?
        .block_on(workload)
}
