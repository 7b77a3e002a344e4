//! What every suite of this crate stands on: one case runner for the backend suite
//! ([`conformance`](crate::conformance)) and the lock suite ([`locks`](crate::locks)), the
//! model-based properties' backend factory, and the small helpers cases share.
//!
//! A suite names what its cases run against by implementing [`Subject`]: how to build one
//! from the suite's factory, how failure messages name it, and what to tear down after a
//! case. [`run_case`] then runs one case on its own two-worker runtime, tears down also when
//! the case fails, and fails the test naming the case; [`run_all_in_one`] runs a whole case
//! table (and the suite's properties) from one test. The suites' public macros expand
//! through the shared `__suite_*` macros here, one `#[test]` or table entry per case.
//!
//! Nothing here imports a suite: `conformance`, `model` and `locks` import this module.

mod backend;
mod shorthand;
mod suite;

pub use backend::{BackendFuture, Factory, factory, unique_namespace};
pub use shorthand::{
    bytes, close, entries_stream, everything_shown, expect_kind, keys, show, some, value,
};
pub(crate) use suite::run_chunks;
pub use suite::{
    CASE_TIMEOUT, Case, CaseFn, Opened, Subject, Teardown, run_all_in_one, run_case, runtime,
};
