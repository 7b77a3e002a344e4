//! The crate's private reply parsers, reachable for `cargo fuzz` targets and property tests
//! only: not part of the API, hidden from the docs, and free to change in any release.

use std::time::SystemTime;

use redis::Value;
use state_core::Result;

/// The `(host, port)` of each live master with slots in a `CLUSTER NODES` reply.
pub fn cluster_nodes(text: &str) -> Vec<(String, u16)> {
    crate::conn::parse_cluster_nodes(text)
        .into_iter()
        .filter_map(|node| match node {
            crate::conn::Node::Cluster { host, port } => Some((host, port)),
            crate::conn::Node::Single => None,
        })
        .collect()
}

/// The cursor and the keys of a `SCAN` reply.
pub fn scan_reply(reply: Value) -> Result<(u64, Vec<Vec<u8>>)> {
    crate::scan::parse_scan(reply)
}

/// The field `name` of an `INFO` reply's text.
pub fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    crate::reply::info_field(text, name)
}

/// The unsigned integer field `name` of an `INFO` reply's text.
pub fn info_u64(text: &str, name: &str) -> Result<u64> {
    crate::reply::info_u64("fuzz", text, name)
}

/// The text of an `INFO` reply.
pub fn info_text(value: &Value) -> Result<&str> {
    crate::reply::info_text("fuzz", value)
}

/// A bulk-string-like reply as bytes (`None` for nil).
pub fn bytes_of(value: Value) -> Result<Option<bytes::Bytes>> {
    crate::reply::bytes_of("fuzz", value)
}

/// An integer reply.
pub fn int_of(value: &Value) -> Result<i64> {
    crate::reply::int_of("fuzz", value)
}

/// A top-level error reply lifted into an error.
pub fn lift_reply(value: Value) -> Result<Value> {
    crate::reply::lift_reply("fuzz", "fuzz:0", value)
}

/// The first error reply of a pipeline's replies.
pub fn first_error(replies: &[Value]) -> Result<()> {
    crate::reply::first_error("fuzz", "fuzz:0", replies)
}

/// The absolute expiry of a key with `pttl` milliseconds left at `now`.
pub fn expiry_of(pttl: i64, now: SystemTime) -> Option<Option<SystemTime>> {
    crate::reply::expiry_of(pttl, now)
}
