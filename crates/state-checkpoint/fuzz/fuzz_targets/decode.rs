//! Arbitrary bytes, cut into arbitrary chunks, into the decoder: it must never panic, hang
//! or allocate past its frame limit, and must end in an error or a checked summary.
#![no_main]

use libfuzzer_sys::fuzz_target;
use state_checkpoint::format::Decoder;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the chunk size, so chunk boundaries are fuzzed too.
    let (chunk, bytes) = match data.split_first() {
        Some((&first, rest)) => (usize::from(first) * 7 + 1, rest),
        None => (1, data),
    };
    let mut decoder = Decoder::new("fuzz.data");
    for piece in bytes.chunks(chunk) {
        decoder.feed(piece);
        while let Ok(Some(_)) = decoder.next_entry() {}
    }
    if let Ok(summary) = decoder.finish() {
        // Only a file whose footer hash matched gets here.
        assert_eq!(decoder.summary(), Some(summary));
    }
});
