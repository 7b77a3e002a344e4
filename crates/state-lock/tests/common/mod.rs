//! Shared helpers of the state-lock integration tests.

#![allow(dead_code)]

pub mod leader;
#[cfg(feature = "redis")]
pub mod redis;
