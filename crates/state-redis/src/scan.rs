//! SCAN over every node that holds data: pages of distinct keys, in bounded memory.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::SystemTime;

use futures_util::StreamExt;
use redis::Value;
use state_core::{BoxStream, Entry, Idempotency, Result, StateError};

use crate::conn::Node;
use crate::driver::RedisStateBackend;
use crate::keys;
use crate::reply::{expiry_at, expiry_of, unexpected};
use crate::scripts;

/// One page of keys found on `node`.
pub(crate) type Page = (Node, Vec<Vec<u8>>);

struct ScanState {
    pattern: Vec<u8>,
    keep_internal: bool,
    nodes: Option<Vec<Node>>,
    index: usize,
    cursor: u64,
    /// 128-bit hashes of the keys already returned: SCAN may return a key twice while the
    /// server resizes its table. 16 bytes a key, never the keys or values themselves.
    seen: HashSet<u128>,
    done: bool,
}

fn fingerprint(key: &[u8]) -> u128 {
    let mut a = DefaultHasher::new();
    (0u8, key).hash(&mut a);
    let mut b = DefaultHasher::new();
    (1u8, key).hash(&mut b);
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

impl RedisStateBackend {
    /// Pages of distinct data keys matching `pattern` on every master (internal keys left out).
    pub(crate) fn scan_keys(&self, pattern: Vec<u8>) -> BoxStream<'_, Result<Vec<Vec<u8>>>> {
        Box::pin(
            self.scan_pages(pattern, false)
                .map(|p| p.map(|(_, keys)| keys)),
        )
    }

    /// Pages of distinct keys matching `pattern`, internal keys included.
    pub(crate) fn scan_raw(&self, pattern: Vec<u8>) -> BoxStream<'_, Result<Vec<Vec<u8>>>> {
        Box::pin(
            self.scan_pages(pattern, true)
                .map(|p| p.map(|(_, keys)| keys)),
        )
    }

    pub(crate) fn scan_pages(
        &self,
        pattern: Vec<u8>,
        keep_internal: bool,
    ) -> BoxStream<'_, Result<Page>> {
        let state = ScanState {
            pattern,
            keep_internal,
            nodes: None,
            index: 0,
            cursor: 0,
            seen: HashSet::new(),
            done: false,
        };
        Box::pin(futures_util::stream::unfold(
            state,
            move |mut st| async move {
                loop {
                    if st.done {
                        return None;
                    }
                    let nodes = match &st.nodes {
                        Some(nodes) => nodes,
                        None => match self.masters().await {
                            Ok(nodes) => st.nodes.insert(nodes),
                            Err(e) => {
                                st.done = true;
                                return Some((Err(e), st));
                            }
                        },
                    };
                    let node = nodes.get(st.index).cloned()?;
                    let cmd = redis::cmd("SCAN")
                        .arg(st.cursor)
                        .arg("MATCH")
                        .arg(&st.pattern)
                        .arg("COUNT")
                        .arg(self.batch_size().max(10))
                        .clone();
                    let reply = self
                        .retry(Idempotency::Idempotent, "SCAN", || {
                            self.inner.pool.query_node(&node, &cmd)
                        })
                        .await;
                    let (cursor, found) = match reply.and_then(parse_scan) {
                        Ok(r) => r,
                        Err(e) => {
                            st.done = true;
                            return Some((Err(e), st));
                        }
                    };
                    if cursor == 0 {
                        st.index += 1;
                    }
                    st.cursor = cursor;
                    let keep_internal = st.keep_internal;
                    let mut page = Vec::with_capacity(found.len());
                    for key in found {
                        if (keep_internal || !keys::is_internal(&key))
                            && st.seen.insert(fingerprint(&key))
                        {
                            page.push(key);
                        }
                    }
                    if !page.is_empty() {
                        return Some((Ok((node, page)), st));
                    }
                }
            },
        ))
    }

    /// Streams the live entries under `prefix` with their absolute expiry.
    pub(crate) fn entries(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        let full_prefix = self.full_prefix(prefix);
        let pattern = keys::prefix_pattern(&full_prefix);
        let strip = self.prefix().len();
        let pages = self.scan_pages(pattern, false);
        Box::pin(
            pages
                .then(move |page| async move {
                    let out: Vec<Result<Entry>> = match page {
                        Err(e) => vec![Err(e)],
                        Ok((node, keys)) => match self.fetch(&node, &keys, strip).await {
                            Ok(entries) => entries.into_iter().map(Ok).collect(),
                            Err(e) => vec![Err(e)],
                        },
                    };
                    futures_util::stream::iter(out)
                })
                .flatten(),
        )
    }

    /// Values and expiries of `keys` (all on `node`), each read atomically with its TTL.
    async fn fetch(&self, node: &Node, keys: &[Vec<u8>], strip: usize) -> Result<Vec<Entry>> {
        let script = &scripts::GET_WITH_PTTL;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.batch_size()) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.add_command(script.evalsha(&[key], &[]));
            }
            let mut replies = self
                .retry(Idempotency::Idempotent, "EVALSHA", || {
                    self.inner.pool.pipeline_node(node, &pipe)
                })
                .await?;
            let noscript = replies
                .iter()
                .any(|r| matches!(r, Value::ServerError(e) if e.code() == "NOSCRIPT"));
            if noscript {
                let load = script.load();
                self.retry(Idempotency::Idempotent, "SCRIPT LOAD", || {
                    self.inner.pool.query_node(node, &load)
                })
                .await?;
                replies = self
                    .retry(Idempotency::Idempotent, "EVALSHA", || {
                        self.inner.pool.pipeline_node(node, &pipe)
                    })
                    .await?;
            }
            let now = SystemTime::now();
            for (key, reply) in chunk.iter().zip(replies) {
                let reply = crate::reply::lift_reply("EVALSHA", self.target(), reply)?;
                let Value::Array(parts) = reply else {
                    if reply == Value::Nil {
                        continue;
                    }
                    return Err(unexpected("scan", &reply));
                };
                let mut parts = parts.into_iter();
                let (Some(Value::BulkString(value)), Some(Value::Int(expiry)), absolute) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    return Err(StateError::new(
                        state_core::ErrorKind::Backend,
                        "scan: unexpected reply shape from the GET+PTTL script",
                    ));
                };
                let expires_at = match absolute {
                    Some(Value::Int(1)) => expiry_at(expiry),
                    _ => expiry_of(expiry, now),
                };
                let Some(expires_at) = expires_at else {
                    continue;
                };
                out.push(Entry {
                    key: bytes::Bytes::copy_from_slice(key.get(strip..).unwrap_or_default()),
                    value: bytes::Bytes::from(value),
                    expires_at,
                    metadata: None,
                });
            }
        }
        Ok(out)
    }
}

pub(crate) fn parse_scan(reply: Value) -> Result<(u64, Vec<Vec<u8>>)> {
    let Value::Array(parts) = reply else {
        return Err(unexpected("SCAN", &reply));
    };
    let mut parts = parts.into_iter();
    let (Some(cursor), Some(Value::Array(found))) = (parts.next(), parts.next()) else {
        return Err(StateError::new(
            state_core::ErrorKind::Backend,
            "SCAN: unexpected reply shape",
        ));
    };
    let cursor = match cursor {
        Value::BulkString(b) => std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(n) => u64::try_from(n).ok(),
        _ => None,
    }
    .ok_or_else(|| StateError::new(state_core::ErrorKind::Backend, "SCAN: bad cursor"))?;
    let keys = found
        .into_iter()
        .filter_map(|v| match v {
            Value::BulkString(b) => Some(b),
            _ => None,
        })
        .collect();
    Ok((cursor, keys))
}
