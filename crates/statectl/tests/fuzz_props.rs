//! The `escape` fuzz target (see `fuzz/` at the workspace root) as a test that CI runs:
//! any bytes escape to one line that unescapes to the same bytes, and unescaping any text
//! ends in bytes or an error, never a panic. statectl has no proptest, so the short inputs
//! are enumerated exhaustively (stronger than sampling them) and the long ones come from a
//! seeded generator, so a failure replays.

// statectl is a binary: its escaping module is compiled in here from its source file.
#[path = "../src/escape.rs"]
#[allow(dead_code)]
mod escape;

use escape::{escape, unescape};

fn round_trips(bytes: &[u8]) {
    let line = escape(bytes);
    assert!(!line.contains(['\n', '\r']), "{bytes:?} -> {line:?}");
    assert_eq!(
        unescape(&line).as_deref(),
        Ok(bytes),
        "{bytes:?} -> {line:?}"
    );
}

/// What the target asserts of any text read back: bytes or an error, and bytes that
/// escape and unescape to themselves.
fn unescapes_or_errs(text: &str) {
    match unescape(text) {
        Ok(bytes) => round_trips(&bytes),
        Err(message) => assert!(message.contains("byte"), "{text:?}: {message}"),
    }
}

/// SplitMix64: a fixed sequence, so a failing case is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap_or(0)
    }
}

#[test]
fn every_one_and_two_byte_input_round_trips() {
    round_trips(b"");
    for a in 0..=u8::MAX {
        round_trips(&[a]);
        for b in 0..=u8::MAX {
            round_trips(&[a, b]);
        }
    }
}

#[test]
fn random_bytes_round_trip() {
    let mut rng = Rng(17);
    // Bytes near the interesting edges (controls, backslash, UTF-8 lead and continuation
    // bytes, invalid bytes) more often than their share.
    const EDGES: [u8; 12] = [
        0, b'\\', b'\n', b'\r', b'\t', 0x7f, 0x80, 0xbf, 0xc2, 0xe2, 0xf0, 0xff,
    ];
    for _ in 0..5_000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len)
            .map(|_| match rng.below(3) {
                0 => EDGES[rng.below(EDGES.len())],
                _ => (rng.next() & 0xff) as u8,
            })
            .collect();
        round_trips(&bytes);
        round_trips(String::from_utf8_lossy(&bytes).as_bytes());
    }
}

#[test]
fn every_short_text_of_escape_pieces_unescapes_or_errs() {
    // Every string of up to four of these: all the escapes, half escapes and bad digits.
    const ALPHABET: [&str; 11] = ["\\", "x", "t", "n", "r", "0", "f", "F", "g", "é", "a"];
    let mut texts = vec![String::new()];
    for _ in 0..4 {
        let mut longer = Vec::new();
        for text in &texts {
            for piece in ALPHABET {
                longer.push(format!("{text}{piece}"));
            }
        }
        for text in &longer {
            unescapes_or_errs(text);
        }
        texts = longer;
    }
}

#[test]
fn random_text_unescapes_or_errs() {
    let mut rng = Rng(25);
    const PIECES: [&str; 10] = [
        "\\", "\\x", "\\x4", "\\xff", "\\xZZ", "\\q", "é", "✓", "a", "\\\\",
    ];
    for _ in 0..5_000 {
        let text: String = (0..rng.below(24))
            .map(|_| PIECES[rng.below(PIECES.len())])
            .collect();
        unescapes_or_errs(&text);
    }
}

#[test]
fn malformed_escapes_are_errors_naming_their_place() {
    for (text, at) in [
        ("\\", 0),
        ("ab\\", 2),
        ("\\x", 0),
        ("\\x4", 0),
        ("é\\xg1", 2),
        ("\\q", 0),
    ] {
        let message = unescape(text).expect_err(text);
        assert!(
            message.contains(&format!("byte {at}")),
            "{text:?}: {message}"
        );
    }
    assert!(unescape("\\x41\\X").is_err());
    assert_eq!(unescape("\\x41\\xFF").as_deref(), Ok(&b"A\xff"[..]));
}
