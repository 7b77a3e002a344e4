//! [`CompressionLayer`]: values at or above a threshold stored compressed (lz4 or zstd),
//! the guide's "LZ4 compression for values > 1KB, application-level".
//!
//! # Stored format
//!
//! A value the layer compresses is stored as a frame: a 9-byte header, then the payload.
//!
//! | bytes | field                                                          |
//! |-------|----------------------------------------------------------------|
//! | 0..3  | magic `C5 53 5A` (`0xC5`, `S`, `Z`)                            |
//! | 3     | format version, `01`                                           |
//! | 4     | algorithm: `00` stored as is, `01` lz4 block, `02` zstd frame  |
//! | 5..9  | length of the original value, u32 little-endian                |
//! | 9..   | payload                                                        |
//!
//! The payload is the value itself (`00`), one lz4 block without a size prefix (`01`: what
//! `lz4_flex::block::compress` writes, the LZ4 block format), or one zstd frame declaring
//! its content size (`02`: what `zstd::bulk::compress` writes). A reader checks that the
//! payload decodes to exactly the length in the header.
//!
//! Any other stored value is the value itself: what was written before the layer was
//! switched on, or by a client without it, reads back unchanged. A value the layer writes
//! is compressed when it is at least the threshold long and the frame is smaller than the
//! value (random data stays as it is; from 16 KiB on, 4 KiB from its middle are compressed
//! first, and a value whose sample saves under 3 % is not compressed whole: a guess, which
//! can leave a value with an incompressible middle uncompressed); otherwise it is stored
//! as is, unless it begins with
//! the magic `C5 53 5A`: such a value is stored in a `00` frame, so that it cannot be taken
//! for a frame when read back. (The one ambiguity left is a value written without the layer
//! that begins with the magic: it is read as a frame. Random bytes do so once in 16.7
//! million.) That frame makes the stored value 9 bytes longer, which the
//! backend refuses as [`InvalidInput`](crate::ErrorKind::InvalidInput) only when the value
//! is within 9 bytes of its limit.
//!
//! A stored value that begins with the magic but does not decode (an unknown version or
//! algorithm, a length over the backend's value limit, a payload that does not expand to
//! the length) is an error of kind [`Corrupt`](crate::ErrorKind::Corrupt) naming the key,
//! on every read of it (`get`, batches, scans, exports, a compare-and-swap that has to read
//! it); `put` and `delete` replace it. Returning such bytes as they are would hand a
//! truncated or damaged value to the application as if it were good.
//!
//! # What each operation sees
//!
//! Every value is encoded on the way in (writes, `import`, `restore`) and decoded on the
//! way out (reads, `get_and_delete`, scans, `export`, `checkpoint`), so checkpoints hold
//! the values the application wrote and restore onto a backend with or without the layer.
//! Limits apply to the value the application writes, before it is compressed: a value too
//! long for the backend is refused however well it compresses. A `get_and_delete` of a
//! value that does not decode deletes the key and reports the error.
//!
//! `compare_and_swap` compares values, not stored bytes: the value written earlier without
//! the layer, or compressed with another algorithm or threshold, matches the same expected
//! value. It first swaps on the expected value encoded as this layer would store it; if that
//! fails it reads the stored bytes, and when they decode to the expected value it swaps
//! again on exactly those bytes, so the backend's own compare-and-swap keeps the operation
//! atomic. A compare-and-swap that fails costs one read more than without the layer.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::backend::{BoxStream, StateBackend};
use crate::error::{ErrorKind, Result, StateError};
use crate::stats::{Gauge, Stats};
use crate::types::{
    Capabilities, Checkpoint, Entry, FencingToken, Health, ImportMode, Limits, Ttl,
};

use super::Layer;

const MAGIC: [u8; 3] = CompressionLayer::MAGIC;
/// The frame format this layer writes and reads.
const VERSION: u8 = 1;
/// Magic, version, algorithm, original length.
const HEADER_LEN: usize = 9;
const STORED: u8 = 0;
const LZ4: u8 = 1;
const ZSTD: u8 = 2;
/// lz4 expands at most about 255-fold (one length byte stands for 255 bytes): a header
/// claiming more is damaged, and is refused before any memory is set aside for it.
const LZ4_MAX_RATIO: usize = 255;
/// Values at least this long are probed before they are compressed whole ([`PROBE_LEN`]).
const PROBE_FROM: usize = 16 * 1024;
/// The probe: this many bytes from the middle of the value, compressed alone. If they do
/// not shrink by [`PROBE_MIN_SAVING`] percent, the value is stored as it is, without
/// compressing all of it to find out (random or already-compressed data: zstd spends most
/// of a put's time on 16 KiB of it). Compressible values pay for it: their sample is
/// compressed twice, a quarter more work at 16 KiB, under 2 % at 256 KiB.
const PROBE_LEN: usize = 4 * 1024;
const PROBE_MIN_SAVING: usize = 3;
/// How often a compare-and-swap retries on the stored bytes while the value keeps the
/// expected content under a changing encoding (other writers racing it).
const CAS_ATTEMPTS: usize = 8;

/// How values are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Algorithm {
    /// lz4 blocks (`lz4_flex`): fast, about 2-4x on text.
    Lz4,
    /// zstd at `level` (1 to 22; 3 is zstd's default): slower, smaller. Needs the `zstd`
    /// feature of state-core (on by default).
    Zstd {
        /// The compression level.
        level: i32,
    },
}

/// Stores values of at least `threshold` bytes compressed, in a self-describing frame
/// (see the [module docs](self) for the format and what each operation sees).
///
/// ```
/// use std::sync::Arc;
/// use state_core::{CompressionLayer, MemoryBackend, Stack, StateBackend};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let memory: Arc<dyn StateBackend> = Arc::new(MemoryBackend::new());
/// let backend = Stack::new().layer(CompressionLayer::lz4()).apply(memory.clone());
/// let text = "{\"name\": \"value\"} ".repeat(100);
/// backend.put(b"k", text.as_bytes()).await?;
/// assert_eq!(backend.get(b"k").await?.as_deref(), Some(text.as_bytes()));
/// let stored = memory.get(b"k").await?.unwrap_or_default();
/// assert!(stored.len() < text.len() / 4);
/// # Ok::<(), state_core::StateError>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionLayer {
    algorithm: Algorithm,
    threshold: usize,
}

impl CompressionLayer {
    /// The first bytes of every frame the layer writes.
    pub const MAGIC: [u8; 3] = [0xC5, b'S', b'Z'];

    /// The threshold of the guide: values of 1 KiB and more are compressed.
    pub const DEFAULT_THRESHOLD: usize = 1024;

    /// `algorithm` for values of at least [`DEFAULT_THRESHOLD`](Self::DEFAULT_THRESHOLD).
    pub fn new(algorithm: Algorithm) -> CompressionLayer {
        CompressionLayer {
            algorithm,
            threshold: Self::DEFAULT_THRESHOLD,
        }
    }

    /// lz4, the guide's choice.
    pub fn lz4() -> CompressionLayer {
        CompressionLayer::new(Algorithm::Lz4)
    }

    /// zstd at `level`. In a build without the `zstd` feature values are stored as they
    /// are (and zstd frames written by others do not read): the registry refuses
    /// `compress=zstd` there.
    pub fn zstd(level: i32) -> CompressionLayer {
        CompressionLayer::new(Algorithm::Zstd { level })
    }

    /// Compresses values of at least `bytes` bytes (0: every value).
    pub fn threshold(mut self, bytes: usize) -> CompressionLayer {
        self.threshold = bytes;
        self
    }

    /// The algorithm values are compressed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

impl Layer for CompressionLayer {
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        let limits = inner.capabilities().limits();
        Arc::new(Compressed {
            codec: Codec {
                layer: *self,
                limits,
            },
            inner,
        })
    }
}

/// Encodes and decodes values for one wrapped backend.
#[derive(Debug, Clone, Copy)]
struct Codec {
    layer: CompressionLayer,
    /// The inner backend's limits, which apply to the values before encoding.
    limits: Limits,
}

impl Codec {
    /// `value` as the layer stores it.
    fn encode<'v>(&self, value: &'v [u8]) -> Result<Cow<'v, [u8]>> {
        if value.len() >= self.layer.threshold
            && let Some(frame) = self.compress(value)
        {
            return Ok(Cow::Owned(frame));
        }
        if !value.starts_with(&MAGIC) {
            return Ok(Cow::Borrowed(value));
        }
        let mut frame = header(STORED, value.len(), value.len()).ok_or_else(|| {
            StateError::invalid_input(
                "a value of 4 GiB or more that begins with the bytes C5 53 5A cannot be stored \
                 under the compression layer; store it without the layer",
            )
        })?;
        frame.extend_from_slice(value);
        Ok(Cow::Owned(frame))
    }

    /// `value` checked against the limits, then encoded.
    fn encode_entry<'v>(&self, key: &[u8], value: &'v [u8]) -> Result<Cow<'v, [u8]>> {
        self.limits.check_entry(key, value)?;
        self.encode(value)
    }

    /// The compressed frame of `value`, if it is smaller than `value` and a probe of a
    /// large value says it is worth trying.
    fn compress(&self, value: &[u8]) -> Option<Vec<u8>> {
        if self.looks_incompressible(value) {
            return None;
        }
        let algorithm = match self.layer.algorithm {
            Algorithm::Lz4 => LZ4,
            Algorithm::Zstd { .. } => ZSTD,
        };
        let mut frame = header(algorithm, value.len(), value.len() / 2)?;
        match self.layer.algorithm {
            Algorithm::Lz4 => {
                frame.resize(
                    HEADER_LEN + lz4_flex::block::get_maximum_output_size(value.len()),
                    0,
                );
                let written =
                    lz4_flex::block::compress_into(value, frame.get_mut(HEADER_LEN..)?).ok()?;
                frame.truncate(HEADER_LEN + written);
            }
            Algorithm::Zstd { level } => frame.extend_from_slice(&zstd_compress(value, level)?),
        }
        (frame.len() < value.len()).then_some(frame)
    }

    /// Whether a large `value`'s middle [`PROBE_LEN`] bytes compress by less than
    /// [`PROBE_MIN_SAVING`] percent. Only a guess: a value it lets through is still stored
    /// as it is when compressing it whole saves nothing.
    fn looks_incompressible(&self, value: &[u8]) -> bool {
        if value.len() < PROBE_FROM {
            return false;
        }
        let start = (value.len() - PROBE_LEN) / 2;
        let Some(sample) = value.get(start..start + PROBE_LEN) else {
            return false;
        };
        let packed = match self.layer.algorithm {
            Algorithm::Lz4 => lz4_flex::block::compress(sample).len(),
            Algorithm::Zstd { level } => {
                zstd_compress(sample, level).map_or(PROBE_LEN, |z| z.len())
            }
        };
        packed * 100 > PROBE_LEN * (100 - PROBE_MIN_SAVING)
    }

    /// The value `stored` holds under `key`.
    fn decode(&self, key: &[u8], stored: Bytes) -> Result<Bytes> {
        if !stored.starts_with(&MAGIC) {
            return Ok(stored);
        }
        let damaged = |what: &str| {
            StateError::corrupt(format!(
                "the value of key `{}` begins with the compression layer's header (C5 53 5A) \
                 but {what}: it was damaged or written by another program; overwrite or \
                 delete the key",
                key.escape_ascii()
            ))
        };
        let Some((head, payload)) = stored.split_first_chunk::<HEADER_LEN>() else {
            return Err(damaged("is shorter than the 9-byte header"));
        };
        let [_, _, _, version, algorithm, l0, l1, l2, l3] = *head;
        if version != VERSION {
            return Err(damaged(&format!(
                "has format version {version}, and this build reads version {VERSION} (a newer \
                 release may have written it: upgrade the readers first)"
            )));
        }
        let original = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
        if original > self.limits.max_value_len {
            return Err(damaged(&format!(
                "claims {original} bytes, over the backend's limit of {}",
                self.limits.max_value_len
            )));
        }
        let value = match algorithm {
            STORED if payload.len() == original => return Ok(stored.slice(HEADER_LEN..)),
            STORED => return Err(damaged("its length does not match its header")),
            LZ4 if original > payload.len().saturating_mul(LZ4_MAX_RATIO) + 16 => {
                return Err(damaged("claims more than its lz4 payload can hold"));
            }
            LZ4 => {
                let mut value = vec![0; original];
                match lz4_flex::block::decompress_into(payload, &mut value) {
                    Ok(n) if n == original => value,
                    _ => return Err(damaged("its lz4 payload does not decode to its length")),
                }
            }
            ZSTD => zstd_decompress(payload, original).map_err(|e| damaged(&e))?,
            other => return Err(damaged(&format!("names algorithm {other}, unknown here"))),
        };
        Ok(Bytes::from(value))
    }

    fn decode_entry(&self, mut entry: Entry) -> Result<Entry> {
        entry.value = self.decode(&entry.key, entry.value)?;
        Ok(entry)
    }

    fn encode_owned(&self, mut entry: Entry) -> Result<Entry> {
        entry.value = match self.encode_entry(&entry.key, &entry.value)? {
            Cow::Borrowed(_) => entry.value,
            Cow::Owned(frame) => Bytes::from(frame),
        };
        Ok(entry)
    }
}

/// A header for `len` bytes of `algorithm`, with room for `room` payload bytes; `None` past
/// u32.
fn header(algorithm: u8, len: usize, room: usize) -> Option<Vec<u8>> {
    let len = u32::try_from(len).ok()?;
    let mut frame = Vec::with_capacity(HEADER_LEN + room);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&[VERSION, algorithm]);
    frame.extend_from_slice(&len.to_le_bytes());
    Some(frame)
}

#[cfg(feature = "zstd")]
fn zstd_compress(value: &[u8], level: i32) -> Option<Vec<u8>> {
    zstd::bulk::compress(value, level).ok()
}

/// Without zstd built in, nothing is compressed (the registry refuses `compress=zstd`).
#[cfg(not(feature = "zstd"))]
fn zstd_compress(_value: &[u8], _level: i32) -> Option<Vec<u8>> {
    None
}

#[cfg(feature = "zstd")]
fn zstd_decompress(payload: &[u8], original: usize) -> std::result::Result<Vec<u8>, String> {
    // The frame declares its size: checked before `original` bytes are set aside.
    match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(size)) if size == original as u64 => {}
        _ => return Err("its zstd frame does not declare its length".to_owned()),
    }
    match zstd::bulk::decompress(payload, original) {
        Ok(value) if value.len() == original => Ok(value),
        _ => Err("its zstd payload does not decode to its length".to_owned()),
    }
}

#[cfg(not(feature = "zstd"))]
fn zstd_decompress(_payload: &[u8], _original: usize) -> std::result::Result<Vec<u8>, String> {
    Err("is zstd-compressed, and this build of state-core lacks its `zstd` feature".to_owned())
}

/// A backend whose values are stored compressed: what [`CompressionLayer`] returns.
#[derive(Debug)]
struct Compressed {
    codec: Codec,
    inner: Arc<dyn StateBackend>,
}

impl Compressed {
    fn decode_opt(&self, key: &[u8], stored: Option<Bytes>) -> Result<Option<Bytes>> {
        stored.map(|s| self.codec.decode(key, s)).transpose()
    }
}

#[async_trait]
impl StateBackend for Compressed {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let stored = self.inner.get(key).await?;
        self.decode_opt(key, stored)
    }

    async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let value = self.codec.encode_entry(key, value)?;
        self.inner.put(key, &value).await
    }

    async fn put_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let value = self.codec.encode_entry(key, value)?;
        self.inner.put_with_ttl(key, &value, ttl).await
    }

    async fn put_with_metadata(
        &self,
        key: &[u8],
        value: &[u8],
        metadata: serde_json::Value,
    ) -> Result<()> {
        // A backend without metadata answers `Unsupported` whatever the input, as bare.
        if !self.inner.capabilities().metadata {
            return self.inner.put_with_metadata(key, value, metadata).await;
        }
        let value = self.codec.encode_entry(key, value)?;
        self.inner.put_with_metadata(key, &value, metadata).await
    }

    async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn batch_get(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        let stored = self.inner.batch_get(keys).await?;
        keys.iter()
            .zip(stored)
            .map(|(key, stored)| self.decode_opt(key, stored))
            .collect()
    }

    async fn batch_put(&self, entries: &[(&[u8], &[u8])]) -> Result<()> {
        // Every entry is checked before any is encoded, so nothing is written on a refusal.
        for (key, value) in entries {
            self.codec.limits.check_entry(key, value)?;
        }
        let encoded = entries
            .iter()
            .map(|(key, value)| Ok((*key, self.codec.encode(value)?)))
            .collect::<Result<Vec<_>>>()?;
        let borrowed: Vec<(&[u8], &[u8])> = encoded.iter().map(|(k, v)| (*k, &**v)).collect();
        self.inner.batch_put(&borrowed).await
    }

    async fn batch_delete(&self, keys: &[&[u8]]) -> Result<u64> {
        self.inner.batch_delete(keys).await
    }

    async fn get_and_delete(&self, key: &[u8]) -> Result<Option<Bytes>> {
        let stored = self.inner.get_and_delete(key).await?;
        self.decode_opt(key, stored)
    }

    async fn set_if_not_exists(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let value = self.codec.encode_entry(key, value)?;
        self.inner.set_if_not_exists(key, &value, ttl).await
    }

    async fn compare_and_swap(
        &self,
        key: &[u8],
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool> {
        let new = self.codec.encode_entry(key, new)?;
        let Some(expected) = expected else {
            return self.inner.compare_and_swap(key, None, &new).await;
        };
        self.codec.limits.check_value(expected)?;
        let mut attempt = Bytes::from(self.codec.encode(expected)?.into_owned());
        for _ in 0..CAS_ATTEMPTS {
            if self
                .inner
                .compare_and_swap(key, Some(&attempt), &new)
                .await?
            {
                return Ok(true);
            }
            // The stored bytes may be another encoding of the expected value: written
            // before the layer, or with another algorithm or threshold.
            let Some(stored) = self.inner.get(key).await? else {
                return Ok(false);
            };
            // The same bytes again: the value changed and came back between the swap and
            // the read, and may have been the expected one under another encoding.
            if stored != attempt {
                if self.codec.decode(key, stored.clone())? != expected {
                    return Ok(false);
                }
                attempt = stored;
            }
        }
        Err(StateError::new(
            ErrorKind::Conflict,
            format!(
                "compare_and_swap on key `{}`: the stored value kept changing encoding while \
                 it held the expected value ({CAS_ATTEMPTS} attempts); nothing was swapped, \
                 try again",
                key.escape_ascii()
            ),
        ))
    }

    async fn put_fenced(&self, key: &[u8], value: &[u8], token: FencingToken) -> Result<()> {
        let value = self.codec.encode_entry(key, value)?;
        self.inner.put_fenced(key, &value, token).await
    }

    async fn ttl(&self, key: &[u8]) -> Result<Ttl> {
        self.inner.ttl(key).await
    }

    fn scan(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        let codec = self.codec;
        crate::stream::map(self.inner.scan(prefix), move |e| codec.decode_entry(e?))
    }

    async fn count(&self, prefix: &[u8]) -> Result<u64> {
        self.inner.count(prefix).await
    }

    async fn clear(&self, prefix: &[u8]) -> Result<u64> {
        self.inner.clear(prefix).await
    }

    async fn checkpoint(&self) -> Result<Checkpoint> {
        let checkpoint = self.inner.checkpoint().await?;
        let (taken_at, consistent) = (checkpoint.taken_at(), checkpoint.is_consistent());
        let entries = checkpoint
            .into_entries()
            .into_iter()
            .map(|e| self.codec.decode_entry(e))
            .collect::<Result<Vec<_>>>()?;
        Ok(Checkpoint::new(entries, taken_at, consistent))
    }

    async fn restore(&self, checkpoint: Checkpoint) -> Result<()> {
        let (taken_at, consistent) = (checkpoint.taken_at(), checkpoint.is_consistent());
        // Encoded whole before the call: an entry refused leaves the old state untouched.
        let entries = checkpoint
            .into_entries()
            .into_iter()
            .map(|e| self.codec.encode_owned(e))
            .collect::<Result<Vec<_>>>()?;
        let checkpoint = Checkpoint::new(entries, taken_at, consistent);
        self.inner.restore(checkpoint).await
    }

    fn export(&self, prefix: &[u8]) -> BoxStream<'_, Result<Entry>> {
        let codec = self.codec;
        crate::stream::map(self.inner.export(prefix), move |e| codec.decode_entry(e?))
    }

    async fn import(&self, entries: BoxStream<'_, Result<Entry>>, mode: ImportMode) -> Result<u64> {
        let codec = self.codec;
        let entries = crate::stream::map(entries, move |e| codec.encode_owned(e?));
        self.inner.import(entries, mode).await
    }

    async fn health_check(&self) -> Result<Health> {
        self.inner.health_check().await
    }

    async fn stats(&self) -> Stats {
        self.inner.stats().await
    }

    async fn gauges(&self) -> Result<Vec<Gauge>> {
        self.inner.gauges().await
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        self.inner.as_any()
    }
}

#[cfg(test)]
mod tests;
