//! Arbitrary frame payloads wrapped in a valid header, frame headers with correct CRCs and
//! a footer with the right hash, following the README's layout: this gets past every
//! checksum into entry parsing and LZ4 decompression, which raw bytes rarely reach.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use state_checkpoint::format::{Decoder, MAGIC};

fuzz_target!(|data: &[u8]| {
    let Some((&control, mut rest)) = data.split_first() else {
        return;
    };
    let lz4 = control & 1 == 1;
    let mut file = MAGIC.to_vec();
    file.extend_from_slice(&1u16.to_le_bytes());
    file.push(u8::from(lz4));
    file.push(0);
    let crc = crc32fast::hash(&file);
    file.extend_from_slice(&crc.to_le_bytes());
    let mut claimed = 0u64;
    let mut raw_total = 0u64;
    // Each frame: 1 byte of entry count, 2 bytes of (raw) length, then the payload.
    while rest.len() >= 3 {
        let entries = u32::from(rest[0]).max(1);
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let payload = &rest[3..3 + len];
        rest = &rest[3 + len..];
        let (kind, raw_len) = if lz4 && len > 0 {
            // An arbitrary block claiming to unpack to a little more than it is.
            (2u8, (len as u32).saturating_mul(2).max(len as u32 + 1))
        } else {
            (1u8, len as u32)
        };
        let mut header = vec![kind];
        header.extend_from_slice(&entries.to_le_bytes());
        header.extend_from_slice(&raw_len.to_le_bytes());
        header.extend_from_slice(&(len as u32).to_le_bytes());
        header.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        let crc = crc32fast::hash(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        file.extend_from_slice(&header);
        file.extend_from_slice(payload);
        claimed += u64::from(entries);
        raw_total += u64::from(raw_len);
    }
    file.push(0);
    file.extend_from_slice(&claimed.to_le_bytes());
    file.extend_from_slice(&raw_total.to_le_bytes());
    let hash: [u8; 32] = Sha256::digest(&file).into();
    file.extend_from_slice(&hash);

    let mut decoder = Decoder::new("frames.data");
    decoder.feed(&file);
    let mut read = 0u64;
    while let Ok(Some(_)) = decoder.next_entry() {
        read += 1;
    }
    if decoder.finish().is_ok() {
        assert_eq!(read, claimed);
    }
});
