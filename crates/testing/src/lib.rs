#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod clock;
pub mod conformance;
pub mod faults;
pub mod harness;
pub mod history;
pub mod locks;
pub mod matrix;
pub mod model;
pub mod services;
