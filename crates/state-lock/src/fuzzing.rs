//! The crate's private reply parsers, reachable for `cargo fuzz` targets and property tests
//! only: not part of the API, hidden from the docs, and free to change in any release.

use state_core::{FencingToken, Result};
use state_redis::redis::Value;

/// The fencing token in a Redis acquire reply (decimal text only).
pub fn token_reply(name: &str, reply: &Value) -> Result<FencingToken> {
    crate::redis::token_reply(name, reply)
}
