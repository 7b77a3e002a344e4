//! One cell of the test matrix (`cargo xtask test-all --matrix`): the conformance suite and
//! the model-based properties run on one backend factory, counted instead of stopped at the
//! first failure, with a one-line report the matrix reads back.
//!
//! The cell itself (which backend, which topology, which layers) is chosen by the test
//! binary that calls [`run_cell`] (crates/testing/tests/matrix.rs): this crate depends on
//! no backend crate. A "case" in the counts is one conformance case or one generated
//! property case, so a cell with `PROPTEST_CASES=N` runs `CASES.len() + 3 × N` of them; a
//! property that fails counts all of its `N` cases as failed.

use std::time::{Duration, Instant};

use crate::harness::{Factory, run_chunks};

/// The environment variable naming the cell (e.g. `redis-cluster`).
pub const CELL_ENV: &str = "STATE_MATRIX_CELL";
/// The environment variable naming the layers: `bare` or `full`.
pub const LAYERS_ENV: &str = "STATE_MATRIX_LAYERS";
/// The environment variable naming the file [`CellReport::write`] writes.
pub const REPORT_ENV: &str = "STATE_MATRIX_REPORT";

/// What one cell's run came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellReport {
    /// Conformance cases plus generated property cases run.
    pub cases: u64,
    /// How many of those passed.
    pub passed: u64,
    /// The conformance cases and properties that failed, by name.
    pub failed: Vec<String>,
    /// Wall time of the suites (not of starting the servers).
    pub elapsed: Duration,
}

impl CellReport {
    /// `cases=N passed=M millis=T failed=a,b`: one line, read back by xtask.
    pub fn line(&self) -> String {
        format!(
            "cases={} passed={} millis={} failed={}",
            self.cases,
            self.passed,
            self.elapsed.as_millis(),
            self.failed.join(",")
        )
    }

    /// Writes [`line`](Self::line) to the file [`REPORT_ENV`] names, if it names one.
    pub fn write(&self) -> std::io::Result<()> {
        match std::env::var_os(REPORT_ENV) {
            Some(path) if !path.is_empty() => std::fs::write(path, self.line() + "\n"),
            _ => Ok(()),
        }
    }
}

/// Property cases each property generates: `PROPTEST_CASES`, else proptest's default.
pub fn property_cases() -> u64 {
    u64::from(crate::model::config().cases)
}

/// Runs every conformance case (`parallel` at a time, each on its own runtime and
/// namespace) and then every property on backends from `factory`; counts instead of
/// stopping. Each failure's panic is printed where it happens.
pub fn run_cell(factory: &Factory, parallel: usize) -> CellReport {
    let start = Instant::now();
    let per_property = property_cases();
    let conformance = crate::conformance::CASE_TABLE;
    let properties = crate::model::PROPERTIES;
    let mut failed = run_chunks(conformance, parallel, factory);
    let failed_cases = failed.len() as u64;
    let failed_properties = run_chunks(properties, 1, factory);
    let cases = conformance.len() as u64 + properties.len() as u64 * per_property;
    let passed = cases - failed_cases - failed_properties.len() as u64 * per_property;
    failed.extend(failed_properties);
    CellReport {
        cases,
        passed,
        failed: failed.into_iter().map(str::to_owned).collect(),
        elapsed: start.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line_names_counts_time_and_failures() {
        let report = CellReport {
            cases: 60,
            passed: 44,
            failed: vec!["ttl_expires".into(), "operations_agree_with_model".into()],
            elapsed: Duration::from_millis(1500),
        };
        assert_eq!(
            report.line(),
            "cases=60 passed=44 millis=1500 failed=ttl_expires,operations_agree_with_model"
        );
    }
}
