//! The portable checkpoint file format, streamed both ways.
//!
//! The crate's README documents the format byte by byte; the constants here are its
//! numbers. [`encode`] and [`decode`] are the async, streaming entry points; [`Encoder`]
//! and [`Decoder`] are the synchronous, incremental machines underneath (the fuzz target
//! drives [`Decoder`] directly).

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::stream;
use state_core::{BoxStream, Entry, Result, StateError};

mod decoder;
mod encoder;
mod entry;

pub use decoder::Decoder;
pub use encoder::Encoder;

/// The version this build writes, and the newest it reads. Files of a newer version are
/// refused with a `Corrupt` error that says so.
pub const FORMAT_VERSION: u16 = 1;

/// The first 8 bytes of every checkpoint file: `0x89 "STCKPT" 0x0A`. The high first byte
/// and the line feed catch a file mangled by a text-mode transfer, as PNG's do.
pub const MAGIC: [u8; 8] = *b"\x89STCKPT\n";

/// The largest uncompressed frame payload a file may declare: 513 MiB, room for one
/// 512 MiB value (the largest Redis accepts) with its key, metadata and lengths. Longer
/// lengths are rejected before anything is allocated.
pub const MAX_FRAME_LEN: u32 = 513 * 1024 * 1024;

/// The encoder seals a frame once its entries reach this many bytes (1 MiB); a frame is at
/// most this long, or one entry if that entry is longer.
pub const FRAME_TARGET: usize = 1 << 20;

pub(crate) const HEADER_LEN: usize = 16;
pub(crate) const FRAME_HEADER_LEN: usize = 21;
/// The end marker, the two counts and the hash.
pub(crate) const FOOTER_LEN: usize = 1 + 8 + 8 + 32;

/// Record kinds: the end marker, a frame stored as is, a frame stored as one lz4 block.
pub(crate) const END: u8 = 0x00;
pub(crate) const FRAME_RAW: u8 = 0x01;
pub(crate) const FRAME_LZ4: u8 = 0x02;

/// How frames are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Stored as is.
    None,
    /// Each frame one LZ4 block (stored as is where that is not smaller).
    #[default]
    Lz4,
}

impl Compression {
    /// The name used in manifests and on command lines: `none` or `lz4`.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
        }
    }

    /// The compression called `name` (`none`, `lz4`), in any case.
    pub fn from_name(name: &str) -> Result<Self> {
        if name.eq_ignore_ascii_case("none") {
            Ok(Compression::None)
        } else if name.eq_ignore_ascii_case("lz4") {
            Ok(Compression::Lz4)
        } else {
            Err(StateError::config(format!(
                "unknown checkpoint compression `{name}`; use none or lz4"
            )))
        }
    }

    /// The header byte.
    pub(crate) fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            _ => None,
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Compression {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self> {
        Compression::from_name(s)
    }
}

/// What a checkpoint file holds, known once it has been written or read to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Summary {
    /// How many entries.
    pub entries: u64,
    /// The uncompressed size of the frames' payloads (the entries as encoded).
    pub data_bytes: u64,
    /// SHA-256 of the whole file as stored, footer included: what `sha256sum` prints.
    pub sha256: [u8; 32],
}

impl Summary {
    /// The whole-file hash in lower-case hex, as manifests store it.
    pub fn sha256_hex(&self) -> String {
        hex::encode(self.sha256)
    }
}

/// Where [`encode`] and [`decode_with_summary`] leave the [`Summary`] once their stream has
/// ended without error. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct SummaryHandle(Arc<Mutex<Option<Summary>>>);

impl SummaryHandle {
    /// The summary, once the stream ended successfully; `None` before, or after an error.
    pub fn get(&self) -> Option<Summary> {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set(&self, summary: Summary) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(summary);
    }
}

/// Encodes a stream of entries into the bytes of a checkpoint file, in chunks (one chunk
/// per frame of about [`FRAME_TARGET`] bytes of entries, the header with the first and
/// the footer with the last); the summary is in the handle once the returned stream has
/// ended.
///
/// An error from `entries` is passed on and ends the stream (what was sent is not a
/// checkpoint: it has no footer). An entry the format cannot hold is an `InvalidInput`
/// error, which ends it too. Memory holds one frame, whatever the number of entries.
///
/// ```
/// use state_checkpoint::{Compression, decode, encode};
/// use state_core::{Entry, stream};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let entries = vec![Ok(Entry::new("a", "1")), Ok(Entry::new("b", "2"))];
/// let (chunks, summary) = encode(stream::iter(entries), Compression::Lz4);
/// let file: Vec<_> = stream::try_collect(chunks).await?;
/// assert_eq!(summary.get().map(|s| s.entries), Some(2));
///
/// let back = stream::try_collect(decode("example.data", stream::iter(file.into_iter().map(Ok)))).await?;
/// assert_eq!(back, vec![Entry::new("a", "1"), Entry::new("b", "2")]);
/// # Ok::<(), state_core::StateError>(())
/// # }).unwrap();
/// ```
pub fn encode<'a>(
    entries: BoxStream<'a, Result<Entry>>,
    compression: Compression,
) -> (BoxStream<'a, Result<Bytes>>, SummaryHandle) {
    let handle = SummaryHandle::default();
    let out = handle.clone();
    let start = Some((entries, Encoder::new(compression)));
    let chunks = stream::unfold(start, move |state| {
        let handle = out.clone();
        async move {
            let (mut entries, mut encoder) = state?;
            loop {
                match state_core::stream::next(&mut entries).await {
                    Some(Ok(entry)) => match encoder.push(&entry) {
                        Ok(Some(chunk)) => return Some((Ok(chunk), Some((entries, encoder)))),
                        Ok(None) => {}
                        Err(e) => return Some((Err(e), None)),
                    },
                    Some(Err(e)) => return Some((Err(e), None)),
                    None => {
                        return match encoder.finish() {
                            Ok((tail, summary)) => {
                                handle.set(summary);
                                Some((Ok(tail), None))
                            }
                            Err(e) => Some((Err(e), None)),
                        };
                    }
                }
            }
        }
    });
    (Box::pin(chunks), handle)
}

/// Decodes the bytes of a checkpoint file (any chunking) into its entries, checking every
/// frame's checksum as it goes and, at the end, the footer's counts and whole-file hash.
///
/// Any problem is an [`ErrorKind::Corrupt`](state_core::ErrorKind::Corrupt) error whose
/// message names `name` (the file) and says what is wrong: not a checkpoint (bad magic),
/// written by a newer version, truncated, checksum mismatch in frame N, trailing bytes….
/// An error from `chunks` is passed on unchanged. Either ends the stream. Entries come
/// before the end is checked: act on them (commit an import) only once the stream has
/// ended without error.
pub fn decode<'a>(
    name: &str,
    chunks: BoxStream<'a, Result<Bytes>>,
) -> BoxStream<'a, Result<Entry>> {
    decode_with_summary(name, chunks).0
}

/// [`decode`], with the file's [`Summary`] in the handle once the stream has ended without
/// error: compare it with a manifest's counts and hash.
pub fn decode_with_summary<'a>(
    name: &str,
    chunks: BoxStream<'a, Result<Bytes>>,
) -> (BoxStream<'a, Result<Entry>>, SummaryHandle) {
    let handle = SummaryHandle::default();
    let out = handle.clone();
    let start = Some((chunks, Decoder::new(name)));
    let entries = stream::unfold(start, move |state| {
        let handle = out.clone();
        async move {
            let (mut chunks, mut decoder) = state?;
            loop {
                match decoder.next_entry() {
                    Ok(Some(entry)) => return Some((Ok(entry), Some((chunks, decoder)))),
                    Ok(None) => {}
                    Err(e) => return Some((Err(e), None)),
                }
                match state_core::stream::next(&mut chunks).await {
                    Some(Ok(chunk)) => decoder.feed(&chunk),
                    Some(Err(e)) => return Some((Err(e), None)),
                    None => {
                        return match decoder.finish() {
                            Ok(summary) => {
                                handle.set(summary);
                                None
                            }
                            Err(e) => Some((Err(e), None)),
                        };
                    }
                }
            }
        }
    });
    (Box::pin(entries), handle)
}
