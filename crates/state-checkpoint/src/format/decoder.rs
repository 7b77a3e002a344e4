//! [`Decoder`]: the bytes of a checkpoint file in (any chunking), entries out, every check
//! made as early as the bytes allow.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use state_core::{Entry, Result, StateError};

use super::entry::Cursor;
use super::{
    Compression, END, FOOTER_LEN, FORMAT_VERSION, FRAME_HEADER_LEN, FRAME_LZ4, FRAME_RAW,
    HEADER_LEN, MAGIC, MAX_FRAME_LEN, Summary,
};

/// Reads a checkpoint file incrementally, without async: [`feed`](Self::feed) it bytes,
/// take entries with [`next_entry`](Self::next_entry) until it returns `None` (it needs
/// more bytes, or the footer was read), and call [`finish`](Self::finish) when the input
/// ends.
///
/// Every problem is an [`ErrorKind::Corrupt`](state_core::ErrorKind::Corrupt) error whose
/// message names the file and says what is wrong and where. It never panics, whatever the
/// bytes, and never allocates more than [`MAX_FRAME_LEN`] for a frame, whatever lengths a
/// damaged file claims (a frame's lengths are checked against its header checksum before
/// they are used; its buffer grows only with the bytes that arrive, and an LZ4 frame may
/// claim at most 256 times its stored size). Entries are handed out as soon as their frame's checksum matched; the
/// whole-file hash is checked at the end, so a caller must not act on the entries (commit
/// an import) before [`finish`](Self::finish) succeeded.
#[derive(Debug)]
pub struct Decoder {
    name: String,
    /// Bytes fed and not yet consumed.
    buf: BytesMut,
    /// The file offset of `buf[0]`.
    offset: u64,
    state: State,
    /// Every byte consumed so far, except the footer's hash field.
    hasher: Sha256,
    compression: Compression,
    frames: u64,
    entries: u64,
    data_bytes: u64,
    summary: Option<Summary>,
}

#[derive(Debug)]
enum State {
    Header,
    /// At a record: a frame or the end marker.
    Record,
    Payload(FrameHeader),
    Entries {
        cursor: Cursor,
        left: u32,
    },
    Done,
    /// An error was returned; the message is repeated to any further call.
    Failed(String),
}

#[derive(Debug, Clone, Copy)]
struct FrameHeader {
    kind: u8,
    entries: u32,
    raw_len: u32,
    stored_len: u32,
    crc: u32,
}

impl Decoder {
    /// A decoder for the file called `name` (a file name or URL, for messages).
    pub fn new(name: &str) -> Self {
        Decoder {
            name: name.to_string(),
            buf: BytesMut::new(),
            offset: 0,
            state: State::Header,
            hasher: Sha256::new(),
            compression: Compression::None,
            frames: 0,
            entries: 0,
            data_bytes: 0,
            summary: None,
        }
    }

    /// Adds the next bytes of the file.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next entry; `Ok(None)` when more bytes are needed or the footer was read.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if let State::Failed(message) = &self.state {
            return Err(StateError::corrupt(message.clone()));
        }
        match self.step() {
            Ok(entry) => Ok(entry),
            Err(message) => {
                let message = format!("checkpoint file `{}`: {message}", self.name);
                self.state = State::Failed(message.clone());
                Err(StateError::corrupt(message))
            }
        }
    }

    /// Call when the input has ended: the file's [`Summary`] once the footer was read and
    /// matched, or why the file is incomplete. Entries not taken yet are read (and
    /// checked) and dropped, so `feed` everything then `finish` verifies a whole file.
    pub fn finish(&mut self) -> Result<Summary> {
        // Reads what is buffered (a footer, trailing bytes) if the caller did not.
        while self.next_entry()?.is_some() {}
        match (&self.state, self.summary) {
            (State::Done, Some(summary)) => Ok(summary),
            _ => {
                let end = self.offset + self.buf.len() as u64;
                let what = match &self.state {
                    State::Header if end == 0 => "the file is empty".to_string(),
                    State::Header => {
                        format!("truncated: {end} bytes, shorter than the {HEADER_LEN}-byte header")
                    }
                    _ => format!(
                        "truncated: the file ends at byte {end}, in frame {} before the end \
                         marker and footer",
                        self.frames + 1
                    ),
                };
                let message = format!("checkpoint file `{}`: {what}", self.name);
                self.state = State::Failed(message.clone());
                Err(StateError::corrupt(message))
            }
        }
    }

    /// The file's summary, once its footer was read and matched.
    pub fn summary(&self) -> Option<Summary> {
        self.summary
    }

    fn step(&mut self) -> std::result::Result<Option<Entry>, String> {
        loop {
            match &mut self.state {
                State::Failed(_) => return Err("decoding stopped at an earlier error".into()),
                State::Header => {
                    if !self.header()? {
                        return Ok(None);
                    }
                }
                State::Record => {
                    if !self.record()? {
                        return Ok(None);
                    }
                }
                State::Payload(header) => {
                    let header = *header;
                    if !self.payload(header)? {
                        return Ok(None);
                    }
                }
                State::Entries { cursor, left } => {
                    if *left == 0 {
                        if !cursor.is_at_end() {
                            return Err(format!(
                                "frame {} has bytes after its last entry",
                                self.frames
                            ));
                        }
                        self.state = State::Record;
                        continue;
                    }
                    let entry = cursor
                        .entry()
                        .map_err(|what| format!("in frame {}: {what}", self.frames))?;
                    *left -= 1;
                    self.entries += 1;
                    return Ok(Some(entry));
                }
                State::Done => {
                    if !self.buf.is_empty() {
                        return Err(format!(
                            "{} trailing bytes after the footer (at byte {})",
                            self.buf.len(),
                            self.offset
                        ));
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Checks the 16-byte header; false while it is incomplete.
    fn header(&mut self) -> std::result::Result<bool, String> {
        let seen = self.buf.len().min(MAGIC.len());
        if self.buf[..seen] != MAGIC[..seen] {
            return Err(
                "not a checkpoint file (it does not start with the checkpoint \
                        magic bytes)"
                    .to_string(),
            );
        }
        if self.buf.len() >= 10 {
            let version = u16::from_le_bytes([self.buf[8], self.buf[9]]);
            if version > FORMAT_VERSION {
                return Err(format!(
                    "written by a newer version of the checkpoint format (version {version}; \
                     this build reads versions up to {FORMAT_VERSION}): upgrade to read it"
                ));
            }
            if version == 0 {
                return Err("unknown checkpoint format version 0".to_string());
            }
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(false);
        }
        let header = self.consume(HEADER_LEN);
        let crc = le_u32(&header[12..16]);
        if crc32fast::hash(&header[..12]) != crc {
            return Err("header checksum mismatch".to_string());
        }
        self.compression = match Compression::from_code(header[10]) {
            Some(compression) => compression,
            None => return Err(format!("unknown compression code {}", header[10])),
        };
        if header[11] != 0 {
            return Err(format!("unknown header flags {:#04x}", header[11]));
        }
        self.state = State::Record;
        Ok(true)
    }

    /// Reads a frame's header or the end marker and footer; false while incomplete.
    fn record(&mut self) -> std::result::Result<bool, String> {
        let Some(&kind) = self.buf.first() else {
            return Ok(false);
        };
        let at = self.offset;
        match kind {
            END => {
                if self.buf.len() < FOOTER_LEN {
                    return Ok(false);
                }
                self.footer()?;
                Ok(true)
            }
            FRAME_RAW | FRAME_LZ4 => {
                if self.buf.len() < FRAME_HEADER_LEN {
                    return Ok(false);
                }
                let raw = self.consume(FRAME_HEADER_LEN);
                let frame = self.frames + 1;
                if crc32fast::hash(&raw[..17]) != le_u32(&raw[17..21]) {
                    return Err(format!(
                        "frame {frame} header checksum mismatch (at byte {at})"
                    ));
                }
                let header = FrameHeader {
                    kind,
                    entries: le_u32(&raw[1..5]),
                    raw_len: le_u32(&raw[5..9]),
                    stored_len: le_u32(&raw[9..13]),
                    crc: le_u32(&raw[13..17]),
                };
                check_frame(&header, self.compression)
                    .map_err(|what| format!("frame {frame} (at byte {at}): {what}"))?;
                self.frames = frame;
                self.state = State::Payload(header);
                Ok(true)
            }
            other => Err(format!(
                "unknown record kind {other:#04x} at byte {at} (after frame {})",
                self.frames
            )),
        }
    }

    /// Checks and unpacks a frame's payload; false while incomplete.
    fn payload(&mut self, header: FrameHeader) -> std::result::Result<bool, String> {
        let stored_len = header.stored_len as usize;
        if self.buf.len() < stored_len {
            // The buffer grows with the bytes that arrive, not with what the header claims.
            return Ok(false);
        }
        let at = self.offset;
        let stored = self.consume(stored_len).freeze();
        let frame = self.frames;
        if crc32fast::hash(&stored) != header.crc {
            return Err(format!("checksum mismatch in frame {frame} (at byte {at})"));
        }
        let payload = if header.kind == FRAME_LZ4 {
            let mut raw = vec![0; header.raw_len as usize];
            match lz4_flex::block::decompress_into(&stored, &mut raw) {
                Ok(n) if n == raw.len() => Bytes::from(raw),
                Ok(n) => {
                    return Err(format!(
                        "frame {frame} unpacks to {n} bytes, not the {} its header says",
                        header.raw_len
                    ));
                }
                Err(e) => return Err(format!("frame {frame} does not unpack ({e})")),
            }
        } else {
            stored
        };
        self.data_bytes += u64::from(header.raw_len);
        self.state = State::Entries {
            cursor: Cursor::new(payload),
            left: header.entries,
        };
        Ok(true)
    }

    /// Checks the footer (its hash first: any change to the file shows there).
    fn footer(&mut self) -> std::result::Result<(), String> {
        let at = self.offset;
        let counts = self.consume(17);
        let computed: [u8; 32] = self.hasher.clone().finalize().into();
        let stored = self.buf.split_to(32);
        self.offset += 32;
        if stored[..] != computed[..] {
            return Err(format!(
                "the whole-file SHA-256 in the footer (at byte {}) does not match the file",
                at + 17
            ));
        }
        let entries = u64::from_le_bytes(le_8(&counts[1..9]));
        let data_bytes = u64::from_le_bytes(le_8(&counts[9..17]));
        if entries != self.entries || data_bytes != self.data_bytes {
            return Err(format!(
                "the footer counts {entries} entries and {data_bytes} bytes, but the frames \
                 hold {} entries and {} bytes",
                self.entries, self.data_bytes
            ));
        }
        let mut whole = self.hasher.clone();
        whole.update(&stored);
        self.summary = Some(Summary {
            entries,
            data_bytes,
            sha256: whole.finalize().into(),
        });
        self.state = State::Done;
        Ok(())
    }

    /// Takes the next `n` buffered bytes (callers checked they are there), hashing them.
    fn consume(&mut self, n: usize) -> BytesMut {
        let bytes = self.buf.split_to(n);
        self.hasher.update(&bytes);
        self.offset += n as u64;
        if self.buf.is_empty() {
            // Let go of a large frame's buffer rather than keep its capacity.
            self.buf = BytesMut::new();
        }
        bytes
    }
}

/// No LZ4 block unpacks to more than 255 times its size (plus its last literals).
const LZ4_MAX_RATIO: u64 = 256;

/// What is wrong with a frame header whose checksum matched, if anything.
fn check_frame(header: &FrameHeader, compression: Compression) -> std::result::Result<(), String> {
    if header.entries == 0 {
        return Err("a frame without entries".to_string());
    }
    if header.raw_len == 0 || header.raw_len > MAX_FRAME_LEN {
        return Err(format!(
            "a frame length of {} bytes, outside 1..={MAX_FRAME_LEN}",
            header.raw_len
        ));
    }
    // Three bytes is the smallest entry: flags, an empty key's and an empty value's length.
    if u64::from(header.entries) * 3 > u64::from(header.raw_len) {
        return Err(format!(
            "{} entries cannot fit in {} bytes",
            header.entries, header.raw_len
        ));
    }
    match header.kind {
        FRAME_RAW if header.stored_len != header.raw_len => Err(format!(
            "an uncompressed frame stored in {} bytes but {} long",
            header.stored_len, header.raw_len
        )),
        FRAME_LZ4 if compression != Compression::Lz4 => {
            Err("an lz4 frame in a file whose header says uncompressed".to_string())
        }
        // LZ4 expands at most 255 times, so this bounds what a small forged frame can make
        // the decoder allocate.
        FRAME_LZ4
            if header.stored_len == 0
                || header.stored_len >= header.raw_len
                || u64::from(header.raw_len) > u64::from(header.stored_len) * LZ4_MAX_RATIO =>
        {
            Err(format!(
                "an lz4 frame of {} stored bytes for {} bytes of entries",
                header.stored_len, header.raw_len
            ))
        }
        _ => Ok(()),
    }
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(raw)
}

fn le_8(bytes: &[u8]) -> [u8; 8] {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[..8]);
    raw
}
