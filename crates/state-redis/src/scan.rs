//! SCAN over every master: pages of distinct keys, in memory that does not grow with the
//! number of keys.
//!
//! # Why SCAN repeats keys, and why that cannot be detected cheaply
//!
//! Redis 7.0's `dictScan` walks the buckets of the key table in reverse-binary order of the
//! cursor, so that a table that grows between two calls (rehashing into a bigger one) makes
//! it neither miss nor repeat a key. A table that *shrinks* between two calls (`serverCron` resizes it once
//! fewer than 10% of its buckets are used, e.g. after a mass delete) does repeat keys: the
//! small bucket the cursor now points into also holds the keys of the big buckets of the same
//! block that were already visited, and they are returned again. Only that first bucket
//! repeats keys, but nothing a client can read tells it apart: the table size is not in any
//! reply (only `DEBUG HTSTATS`, disabled by default, shows it), the cursor looks the same, and
//! a key's bucket depends on a hash seed chosen at random by each server process. Other
//! servers differ again (per-slot tables in Redis 7.4+ Cluster, Valkey's new table). So the
//! duplicates are removed by comparing keys, whatever produced them.
//!
//! # How the keys are de-duplicated
//!
//! [`scan_pages`](RedisStateBackend::scan_pages) first runs SCAN to the end on every master and
//! feeds each key (with its master) to a [`spill::KeySpill`]: an external merge sort that keeps
//! at most [`spill::BUFFER_BYTES`] in memory, writes sorted runs to anonymous temporary files
//! beyond that, and merges them dropping repeats. Whole keys are compared, so no key is ever
//! dropped by a fingerprint collision, and a key found on two masters (moved by a resharding
//! during the scan) is also returned once. Then it hands out pages of up to the pipeline batch
//! size of distinct keys of one master, in byte order. Consequences: the first page arrives
//! only after the whole SCAN; values are read (by [`entries`](RedisStateBackend::entries))
//! after the listing, so a key deleted or expired in between is left out, and a key written
//! after its bucket was scanned is not seen (the scan is fuzzy either way, see
//! `Capabilities::consistent_snapshot`). `count` counts distinct keys; `clear` deletes each
//! once. A scan that fits in the buffer never touches the disk.

use std::time::SystemTime;

use futures_util::StreamExt;
use redis::Value;
use state_core::{BoxStream, Entry, Idempotency, Result, StateError};

use crate::conn::Node;
use crate::driver::RedisStateBackend;
use crate::keys;
use crate::reply::{expiry_at, expiry_of, unexpected};
use crate::scripts;

mod spill;

use spill::{Distinct, KeySpill};

/// One page of keys found on `node`.
pub(crate) type Page = (Node, Vec<Vec<u8>>);

/// Where a scan stands: listing every master's keys, then handing out distinct pages.
enum ScanState {
    List {
        pattern: Vec<u8>,
        keep_internal: bool,
    },
    Hand(Handout),
    Done,
}

struct Handout {
    nodes: Vec<Node>,
    distinct: Distinct,
    /// Keys read from `distinct` and not yet handed out, one page per node.
    pending: Vec<Vec<Vec<u8>>>,
    drained: bool,
}

impl Handout {
    /// The next page of at most `size` keys of one node; `None` at the end.
    fn next_page(&mut self, size: usize) -> Result<Option<Page>> {
        while !self.drained {
            let Some((key, node)) = self.distinct.next_key()? else {
                self.drained = true;
                break;
            };
            let index = node as usize;
            let Some(page) = self.pending.get_mut(index) else {
                continue;
            };
            page.push(key);
            if page.len() >= size {
                let keys = std::mem::take(page);
                return Ok(self.nodes.get(index).cloned().map(|n| (n, keys)));
            }
        }
        for (index, page) in self.pending.iter_mut().enumerate() {
            if !page.is_empty() {
                let keys = std::mem::take(page);
                return Ok(self.nodes.get(index).cloned().map(|n| (n, keys)));
            }
        }
        Ok(None)
    }
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

    /// Pages of distinct keys matching `pattern` (see the module docs): each key once, with
    /// the master it was found on, after SCAN has visited every master.
    pub(crate) fn scan_pages(
        &self,
        pattern: Vec<u8>,
        keep_internal: bool,
    ) -> BoxStream<'_, Result<Page>> {
        let state = ScanState::List {
            pattern,
            keep_internal,
        };
        let size = self.batch_size().max(1);
        Box::pin(futures_util::stream::unfold(
            state,
            move |state| async move {
                let mut handout = match state {
                    ScanState::Done => return None,
                    ScanState::Hand(handout) => handout,
                    ScanState::List {
                        pattern,
                        keep_internal,
                    } => match self.list(&pattern, keep_internal).await {
                        Ok(handout) => handout,
                        Err(e) => return Some((Err(e), ScanState::Done)),
                    },
                };
                match handout.next_page(size) {
                    Ok(Some(page)) => Some((Ok(page), ScanState::Hand(handout))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), ScanState::Done)),
                }
            },
        ))
    }

    /// SCANs every master to the end, feeding the keys to a spill.
    async fn list(&self, pattern: &[u8], keep_internal: bool) -> Result<Handout> {
        let nodes = self.masters().await?;
        let mut spill = KeySpill::new(spill::BUFFER_BYTES);
        for (index, node) in nodes.iter().enumerate() {
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            let mut cursor = 0u64;
            loop {
                let cmd = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(self.batch_size().max(10))
                    .clone();
                let reply = self
                    .retry(Idempotency::Idempotent, "SCAN", || {
                        self.inner.pool.query_node(node, &cmd)
                    })
                    .await?;
                let (next, found) = parse_scan(reply)?;
                for key in found {
                    if keep_internal || !keys::is_internal(&key) {
                        spill.push(&key, index).await?;
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        let distinct = spill.finish().await?;
        Ok(Handout {
            pending: vec![Vec::new(); nodes.len()],
            nodes,
            distinct,
            drained: false,
        })
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
