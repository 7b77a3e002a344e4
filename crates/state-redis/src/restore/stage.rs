//! Staging: entries streamed into the staging hashes in bounded chunks, and (Replace in
//! Cluster) the old keys listed beside them.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use redis::{Cmd, Pipeline};
use state_core::{BoxStream, Entry, ErrorKind, Idempotency, Result, StateError, stream};

use super::{LANES, Restore, unix_ms};
use crate::driver::{BATCH_CONCURRENCY, RedisStateBackend};
use crate::keys;
use crate::reply::first_error;

/// Entries per `HSET`: large enough that the server's per-command cost vanishes.
const CHUNK_ENTRIES: usize = 1000;
/// Bytes per chunk, so that large values keep the client's memory bounded too.
const CHUNK_BYTES: usize = 1 << 20;

/// Header of a staged value: stored without expiry.
pub(super) const PERSISTENT: u8 = b'P';
/// Header of a staged value: `X` + Unix ms + `:` + value, stored with `PXAT`.
pub(super) const EXPIRING: u8 = b'X';
/// A staged tombstone: the entry had expired, the key must end up absent.
pub(super) const GONE: u8 = b'D';

/// One lane's pending entries: (bucket, Redis key, staged value).
#[derive(Default)]
struct Chunk {
    items: Vec<(u16, Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

/// A hash field and its value.
type Field = (Vec<u8>, Vec<u8>);

type Flight<'f> = Pin<Box<dyn Future<Output = (usize, Result<()>)> + Send + 'f>>;

/// The staged form of an entry: its header, final expiry and value.
fn staged_value(entry: &Entry, now: SystemTime) -> Vec<u8> {
    if entry.is_expired_at(now) {
        return vec![GONE];
    }
    match entry.expires_at {
        None => {
            let mut out = Vec::with_capacity(1 + entry.value.len());
            out.push(PERSISTENT);
            out.extend_from_slice(&entry.value);
            out
        }
        Some(at) => {
            // PXAT takes a signed 64-bit time: a later one is as good as never.
            let ms = unix_ms(at).min(i64::MAX as u64).to_string();
            let mut out = Vec::with_capacity(2 + ms.len() + entry.value.len());
            out.push(EXPIRING);
            out.extend_from_slice(ms.as_bytes());
            out.push(b':');
            out.extend_from_slice(&entry.value);
            out
        }
    }
}

impl Restore<'_> {
    /// Streams `entries` into the staging hashes. Returns once every chunk is on the
    /// server, or with the first error after every chunk in flight has ended (so that
    /// nothing lands after the caller's clean-up).
    pub(super) async fn stage(&self, mut entries: BoxStream<'_, Result<Entry>>) -> Result<()> {
        let backend = self.backend;
        let mut chunks: Vec<Chunk> = (0..LANES).map(|_| Chunk::default()).collect();
        let mut busy = [false; LANES];
        let mut flights: FuturesUnordered<Flight<'_>> = FuturesUnordered::new();
        let mut failed: Option<StateError> = None;
        // On standalone the switch runs even with nothing staged (a Replace by nothing).
        if !backend.is_cluster() {
            self.touched.insert(0);
            let ticket = redis::cmd("SET")
                .arg(self.ticket_key(0))
                .arg("ready")
                .arg("PXAT")
                .arg(self.expire_at)
                .clone();
            let mut pipe = redis::pipe();
            pipe.add_command(ticket);
            self.send_pipes(std::slice::from_ref(&pipe)).await?;
        }
        loop {
            let next = match stream::next(&mut entries).await {
                Some(Ok(entry)) => Some(entry),
                Some(Err(e)) => {
                    failed = Some(e);
                    break;
                }
                None => None,
            };
            let Some(entry) = next else { break };
            let (full, value) = match self.check(&entry) {
                Ok(full) => (full, staged_value(&entry, SystemTime::now())),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            let slot = keys::slot(&full);
            let bucket = self.bucket_of(&full);
            self.touched.insert(bucket);
            // The lane follows the key: one key's entries are sent in stream order.
            let lane = usize::from(slot) % LANES;
            let Some(chunk) = chunks.get_mut(lane) else {
                continue;
            };
            chunk.bytes += full.len() + value.len();
            chunk.items.push((bucket, full, value));
            if chunk.items.len() < CHUNK_ENTRIES && chunk.bytes < CHUNK_BYTES {
                continue;
            }
            let full_chunk = std::mem::take(chunk);
            if let Err(e) = wait_for_lane(&mut flights, &mut busy, lane).await {
                failed = Some(e);
                break;
            }
            flights.push(self.send(lane, full_chunk));
            if let Some(b) = busy.get_mut(lane) {
                *b = true;
            }
        }
        if failed.is_none() {
            for (lane, chunk) in chunks.into_iter().enumerate() {
                if chunk.items.is_empty() {
                    continue;
                }
                if let Err(e) = wait_for_lane(&mut flights, &mut busy, lane).await {
                    failed = Some(e);
                    break;
                }
                flights.push(self.send(lane, chunk));
                if let Some(b) = busy.get_mut(lane) {
                    *b = true;
                }
            }
        }
        while let Some((_, result)) = flights.next().await {
            if let (Err(e), None) = (result, &failed) {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The Redis key of `entry`, after the checks a write makes.
    fn check(&self, entry: &Entry) -> Result<Vec<u8>> {
        if entry.metadata.is_some() {
            return Err(StateError::new(
                ErrorKind::Unsupported,
                "the redis backend does not store entry metadata; strip it before \
                 importing, or use a backend with metadata",
            ));
        }
        let full = self.backend.full_key(&entry.key)?;
        self.backend.check_value(&entry.value)?;
        Ok(full)
    }

    /// Sends one lane's chunk: one pipeline per bucket, `HSET` of its entries.
    fn send<'f>(&'f self, lane: usize, chunk: Chunk) -> Flight<'f> {
        Box::pin(async move {
            let mut by_bucket: Vec<(u16, Vec<Field>)> = Vec::new();
            let mut items = chunk.items;
            // Stable: entries of one key keep their order.
            items.sort_by_key(|(bucket, _, _)| *bucket);
            for (bucket, field, value) in items {
                match by_bucket.last_mut() {
                    Some((b, group)) if *b == bucket => group.push((field, value)),
                    _ => by_bucket.push((bucket, vec![(field, value)])),
                }
            }
            let pipes: Vec<Pipeline> = by_bucket
                .iter()
                .map(|(bucket, group)| {
                    let bytes = group.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>();
                    let name = self.entries_key(*bucket);
                    let mut hset = Cmd::with_capacity(2 + 2 * group.len(), bytes + name.len() + 4);
                    hset.arg("HSET").arg(&name);
                    for (field, value) in group {
                        hset.arg(field).arg(value);
                    }
                    self.staging_pipe(*bucket, hset, &name)
                })
                .collect();
            drop(by_bucket);
            (lane, self.send_pipes(&pipes).await)
        })
    }

    /// `cmd` (which writes to `name`, in `bucket`), then the safety expiry of `name`, and
    /// the bucket's ticket: the switch of a bucket runs only while its ticket is `ready`.
    fn staging_pipe(&self, bucket: u16, cmd: Cmd, name: &[u8]) -> Pipeline {
        let mut pipe = redis::pipe();
        pipe.add_command(cmd);
        pipe.cmd("PEXPIREAT").arg(name).arg(self.expire_at);
        pipe.cmd("SET")
            .arg(self.ticket_key(bucket))
            .arg("ready")
            .arg("PXAT")
            .arg(self.expire_at);
        pipe
    }

    /// Sends pipelines (each within one bucket) concurrently.
    async fn send_pipes(&self, pipes: &[Pipeline]) -> Result<()> {
        let backend: &RedisStateBackend = self.backend;
        let mut sends: Vec<Pin<Box<dyn Future<Output = Result<()>> + Send + '_>>> =
            Vec::with_capacity(pipes.len());
        for pipe in pipes {
            sends.push(Box::pin(async move {
                // The staging keys belong to this restore alone (its id is in their names)
                // and a lane sends its next chunk only after this one: sending this again
                // writes the same fields with the same values.
                let replies = backend
                    .pipeline_retry("restore staging", Idempotency::Idempotent, pipe)
                    .await?;
                first_error("restore staging", backend.target(), &replies)
            }));
        }
        let results = futures_util::stream::iter(sends)
            .buffer_unordered(BATCH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    /// Replace in Cluster: lists the namespace's keys and fencing marks, page by page, as
    /// fields of their slot's `old` hash, for the switch of that slot to delete those the
    /// checkpoint does not hold. (On standalone and Sentinel the switch scans by itself.)
    pub(super) async fn list_old_keys(&self) -> Result<()> {
        let backend = self.backend;
        let prefix = backend.prefix().to_vec();
        let mut data = backend.scan_keys(keys::prefix_pattern(&prefix));
        while let Some(page) = stream::next(&mut data).await {
            self.list_page(page?).await?;
        }
        drop(data);
        let mut fences = backend.scan_raw(keys::fence_pattern(&prefix));
        while let Some(page) = stream::next(&mut fences).await {
            let page: Vec<Vec<u8>> = page?
                .into_iter()
                .filter(|key| keys::fenced_data_key(key).is_some_and(|d| d.starts_with(&prefix)))
                .collect();
            self.list_page(page).await?;
        }
        Ok(())
    }

    async fn list_page(&self, mut page: Vec<Vec<u8>>) -> Result<()> {
        page.sort_by_key(|key| keys::slot(key));
        let mut pipes = Vec::new();
        for group in page.chunk_by(|a, b| keys::slot(a) == keys::slot(b)) {
            let Some(first) = group.first() else { continue };
            let bucket = keys::slot(first);
            self.touched.insert(bucket);
            let name = self.old_key(bucket);
            let mut hset = redis::cmd("HSET");
            hset.arg(&name);
            for key in group {
                hset.arg(key).arg("");
            }
            pipes.push(self.staging_pipe(bucket, hset, &name));
        }
        self.send_pipes(&pipes).await
    }
}

/// Waits until `lane` has no chunk in flight; the first failure of any chunk ends it.
async fn wait_for_lane(
    flights: &mut FuturesUnordered<Flight<'_>>,
    busy: &mut [bool; LANES],
    lane: usize,
) -> Result<()> {
    while busy.get(lane).copied().unwrap_or(false) {
        let Some((done, result)) = flights.next().await else {
            break;
        };
        if let Some(b) = busy.get_mut(done) {
            *b = false;
        }
        result?;
    }
    Ok(())
}
