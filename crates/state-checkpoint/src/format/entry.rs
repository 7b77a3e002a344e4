//! One entry inside a frame's payload, both ways (README, "Entries").

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use state_core::{Entry, Result, StateError};

use super::MAX_FRAME_LEN;

/// Flag bit: an absolute expiry (`u64` LE unix milliseconds) follows the value.
const HAS_EXPIRY: u8 = 0b01;
/// Flag bit: JSON metadata (a length and UTF-8 bytes) follows.
const HAS_METADATA: u8 = 0b10;

/// Appends the encoding of `entry` to `out`. Fails with `InvalidInput` if the entry cannot
/// be written in this format (larger than a frame, expiry past the format's range).
pub(crate) fn write(entry: &Entry, out: &mut Vec<u8>) -> Result<()> {
    let expiry = entry.expires_at.map(expiry_millis).transpose()?;
    let metadata = match &entry.metadata {
        Some(value) => Some(serde_json::to_vec(value).map_err(|e| {
            StateError::invalid_input("the entry's metadata cannot be written as JSON")
                .with_source(e)
        })?),
        None => None,
    };
    let meta_len = metadata.as_ref().map_or(0, Vec::len);
    // Flags, three lengths of at most 5 bytes each, and the expiry.
    let size = 1 + 15 + 8 + entry.key.len() + entry.value.len() + meta_len;
    if size > MAX_FRAME_LEN as usize {
        return Err(StateError::invalid_input(format!(
            "an entry with a {}-byte key, a {}-byte value and {meta_len} bytes of metadata is \
             larger than a checkpoint frame can hold ({MAX_FRAME_LEN} bytes)",
            entry.key.len(),
            entry.value.len(),
        )));
    }
    let mut flags = 0;
    if expiry.is_some() {
        flags |= HAS_EXPIRY;
    }
    if metadata.is_some() {
        flags |= HAS_METADATA;
    }
    out.reserve(size);
    out.push(flags);
    put_bytes(out, &entry.key);
    put_bytes(out, &entry.value);
    if let Some(millis) = expiry {
        out.extend_from_slice(&millis.to_le_bytes());
    }
    if let Some(json) = &metadata {
        put_bytes(out, json);
    }
    Ok(())
}

/// Unix milliseconds of an expiry, rounded down (so a round trip never extends a lifetime);
/// a time before 1970 is written as 0, which is just as expired.
fn expiry_millis(at: SystemTime) -> Result<u64> {
    let millis = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    u64::try_from(millis).map_err(|_| {
        StateError::invalid_input("an entry's expiry lies past what a checkpoint can hold")
    })
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Callers checked the whole entry against MAX_FRAME_LEN, which fits in a u32.
    put_varint(out, bytes.len() as u32);
    out.extend_from_slice(bytes);
}

/// LEB128: seven bits a byte, least significant group first, high bit set on all but the
/// last byte.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads entries out of one frame's (uncompressed) payload.
#[derive(Debug)]
pub(crate) struct Cursor {
    payload: Bytes,
    pos: usize,
}

impl Cursor {
    pub(crate) fn new(payload: Bytes) -> Self {
        Cursor { payload, pos: 0 }
    }

    /// Whether every byte was read.
    pub(crate) fn is_at_end(&self) -> bool {
        self.pos >= self.payload.len()
    }

    /// The next entry; `Err(what)` says what is wrong with the bytes.
    pub(crate) fn entry(&mut self) -> std::result::Result<Entry, String> {
        let flags = self.byte()?;
        if flags & !(HAS_EXPIRY | HAS_METADATA) != 0 {
            return Err(format!("unknown entry flags {flags:#04x}"));
        }
        let key = self.bytes("key")?;
        let value = self.bytes("value")?;
        let expires_at = if flags & HAS_EXPIRY != 0 {
            let millis = self.u64_le()?;
            let at = UNIX_EPOCH
                .checked_add(Duration::from_millis(millis))
                .ok_or_else(|| format!("expiry {millis} ms is past this system's clock range"))?;
            Some(at)
        } else {
            None
        };
        let metadata = if flags & HAS_METADATA != 0 {
            let json = self.bytes("metadata")?;
            let value = serde_json::from_slice(&json)
                .map_err(|e| format!("the metadata of an entry is not valid JSON ({e})"))?;
            Some(value)
        } else {
            None
        };
        Ok(Entry {
            key,
            value,
            expires_at,
            metadata,
        })
    }

    fn byte(&mut self) -> std::result::Result<u8, String> {
        let byte = self
            .payload
            .get(self.pos)
            .copied()
            .ok_or_else(|| "an entry runs past the end of its frame".to_string())?;
        self.pos += 1;
        Ok(byte)
    }

    fn u64_le(&mut self) -> std::result::Result<u64, String> {
        let end = self.pos.saturating_add(8);
        let raw = self
            .payload
            .get(self.pos..end)
            .and_then(|s| <[u8; 8]>::try_from(s).ok())
            .ok_or_else(|| "an entry's expiry runs past the end of its frame".to_string())?;
        self.pos = end;
        Ok(u64::from_le_bytes(raw))
    }

    fn varint(&mut self, what: &str) -> std::result::Result<u32, String> {
        let mut value: u32 = 0;
        for shift in [0u32, 7, 14, 21, 28] {
            let byte = self.byte()?;
            let bits = u32::from(byte & 0x7f);
            if shift == 28 && bits > 0x0f {
                return Err(format!("the {what} length does not fit in 32 bits"));
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("the {what} length is longer than 5 bytes"))
    }

    /// A length-prefixed byte string, copied out so that a kept key does not pin its frame.
    fn bytes(&mut self, what: &str) -> std::result::Result<Bytes, String> {
        let len = self.varint(what)? as usize;
        let end = self.pos.saturating_add(len);
        let slice = self.payload.get(self.pos..end).ok_or_else(|| {
            format!(
                "a {len}-byte {what} runs past the end of its frame ({} bytes left)",
                self.payload.len().saturating_sub(self.pos)
            )
        })?;
        let out = Bytes::copy_from_slice(slice);
        self.pos = end;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_their_edges() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u32::MAX - 1, u32::MAX] {
            let mut out = vec![0]; // flags byte
            put_varint(&mut out, value);
            let mut cursor = Cursor::new(Bytes::from(out));
            assert_eq!(cursor.byte(), Ok(0));
            assert_eq!(cursor.varint("key"), Ok(value));
            assert!(cursor.is_at_end());
        }
    }

    #[test]
    fn overlong_varints_are_errors() {
        let mut cursor = Cursor::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x1f]));
        assert!(cursor.varint("key").is_err());
        let mut cursor = Cursor::new(Bytes::from_static(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]));
        assert!(cursor.varint("key").is_err());
    }

    #[test]
    fn sub_millisecond_expiry_rounds_down_and_pre_epoch_is_zero() {
        let at = UNIX_EPOCH + Duration::from_micros(1_500);
        assert_eq!(expiry_millis(at).ok(), Some(1));
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(expiry_millis(before).ok(), Some(0));
    }
}
