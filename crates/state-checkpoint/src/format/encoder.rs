//! [`Encoder`]: entries in, the bytes of a checkpoint file out, one frame at a time.

use bytes::Bytes;
use sha2::{Digest, Sha256};
use state_core::{Entry, Result, StateError};

use super::{
    Compression, END, FORMAT_VERSION, FRAME_HEADER_LEN, FRAME_LZ4, FRAME_RAW, FRAME_TARGET, MAGIC,
    Summary, entry,
};

/// Writes a checkpoint file incrementally, without async: [`push`](Self::push) entries,
/// send each chunk it returns, then send what [`finish`](Self::finish) returns.
///
/// It holds at most one frame (about [`FRAME_TARGET`] bytes of entries, or one larger
/// entry) at a time, so memory does not grow with the number of entries.
///
/// ```
/// use state_checkpoint::format::{Compression, Decoder, Encoder};
/// use state_core::Entry;
///
/// let mut encoder = Encoder::new(Compression::Lz4);
/// let mut file = Vec::new();
/// for i in 0..3u8 {
///     if let Some(chunk) = encoder.push(&Entry::new(vec![b'k', i], "v"))? {
///         file.extend_from_slice(&chunk);
///     }
/// }
/// let (tail, summary) = encoder.finish()?;
/// file.extend_from_slice(&tail);
/// assert_eq!(summary.entries, 3);
///
/// let mut decoder = Decoder::new("example.data");
/// decoder.feed(&file);
/// let mut keys = Vec::new();
/// while let Some(entry) = decoder.next_entry()? {
///     keys.push(entry.key);
/// }
/// assert_eq!(decoder.finish()?, summary);
/// assert_eq!(keys.len(), 3);
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Debug)]
pub struct Encoder {
    compression: Compression,
    /// The entries of the frame being filled, uncompressed.
    frame: Vec<u8>,
    frame_entries: u32,
    /// Bytes encoded but not handed out yet (the header, sealed frames).
    out: Vec<u8>,
    /// Every byte handed out, in order: the footer's hash covers all of them.
    hasher: Sha256,
    entries: u64,
    data_bytes: u64,
}

impl Encoder {
    /// An encoder writing frames compressed with `compression`.
    pub fn new(compression: Compression) -> Self {
        let mut header = Vec::with_capacity(16);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.push(compression.code());
        header.push(0); // flags: none defined in version 1
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        Encoder {
            compression,
            frame: Vec::new(),
            frame_entries: 0,
            out: header,
            hasher: Sha256::new(),
            entries: 0,
            data_bytes: 0,
        }
    }

    /// Adds `entry`. Returns the next chunk of the file when a frame is full, `None` while
    /// the frame fills. `InvalidInput` if the entry cannot be written in this format (too
    /// large for a frame, an expiry past the year 584 million); the encoder is then still
    /// usable, without that entry.
    pub fn push(&mut self, entry: &Entry) -> Result<Option<Bytes>> {
        let before = self.frame.len();
        if let Err(e) = entry::write(entry, &mut self.frame) {
            self.frame.truncate(before);
            return Err(e);
        }
        // An entry that would push a non-empty frame past the target starts the next one,
        // so a frame is at most FRAME_TARGET bytes or one entry.
        if before > 0 && self.frame.len() > FRAME_TARGET {
            let tail = self.frame.split_off(before);
            self.seal()?;
            self.frame = tail;
        }
        self.frame_entries += 1;
        self.entries += 1;
        if self.frame.len() >= FRAME_TARGET {
            self.seal()?;
        }
        Ok(self.take_out())
    }

    /// Seals the last frame and writes the end marker and the footer: the rest of the
    /// file, and its [`Summary`].
    pub fn finish(mut self) -> Result<(Bytes, Summary)> {
        self.seal()?;
        let mut tail = std::mem::take(&mut self.out);
        tail.push(END);
        tail.extend_from_slice(&self.entries.to_le_bytes());
        tail.extend_from_slice(&self.data_bytes.to_le_bytes());
        self.hasher.update(&tail);
        let footer_hash: [u8; 32] = self.hasher.clone().finalize().into();
        tail.extend_from_slice(&footer_hash);
        self.hasher.update(footer_hash);
        let summary = Summary {
            entries: self.entries,
            data_bytes: self.data_bytes,
            sha256: self.hasher.finalize().into(),
        };
        Ok((Bytes::from(tail), summary))
    }

    /// Moves the current frame, compressed if that makes it smaller, to the output.
    fn seal(&mut self) -> Result<()> {
        if self.frame_entries == 0 {
            return Ok(());
        }
        let mut raw = std::mem::take(&mut self.frame);
        let raw_len = u32::try_from(raw.len())
            .map_err(|_| StateError::invalid_input("a checkpoint frame outgrew 4 GiB"))?;
        let compressed = match self.compression {
            Compression::Lz4 => Some(lz4_flex::block::compress(&raw)),
            Compression::None => None,
        };
        // Stored as is when compression does not make it smaller (random bytes).
        let (kind, payload) = match &compressed {
            Some(smaller) if smaller.len() < raw.len() => (FRAME_LZ4, smaller.as_slice()),
            _ => (FRAME_RAW, raw.as_slice()),
        };
        // payload.len() <= raw_len, which fits in a u32.
        let stored_len = payload.len() as u32;
        let start = self.out.len();
        self.out.reserve(FRAME_HEADER_LEN + payload.len());
        self.out.push(kind);
        self.out
            .extend_from_slice(&self.frame_entries.to_le_bytes());
        self.out.extend_from_slice(&raw_len.to_le_bytes());
        self.out.extend_from_slice(&stored_len.to_le_bytes());
        self.out
            .extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        let header_crc = crc32fast::hash(&self.out[start..]);
        self.out.extend_from_slice(&header_crc.to_le_bytes());
        self.out.extend_from_slice(payload);
        self.data_bytes += u64::from(raw_len);
        self.frame_entries = 0;
        // Reuse the buffer for the next frame, unless one huge entry made it huge.
        if raw.capacity() <= 2 * FRAME_TARGET {
            raw.clear();
            self.frame = raw;
        }
        Ok(())
    }

    fn take_out(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        let out = std::mem::take(&mut self.out);
        self.hasher.update(&out);
        Some(Bytes::from(out))
    }
}
