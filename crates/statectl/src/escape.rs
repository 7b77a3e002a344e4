//! Printing arbitrary key and value bytes one per line.
//!
//! Printable UTF-8 passes through unchanged; a backslash becomes `\\`; tab, newline and
//! carriage return become `\t`, `\n`, `\r`; any other control character and every byte that
//! is not valid UTF-8 becomes `\xNN` (two lowercase hex digits per byte). So a key never
//! spans two lines and the original bytes can be recovered.

use std::fmt::Write as _;

/// The bytes as one line of text, escaped as the [module docs](self) say.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    for b in c.encode_utf8(&mut [0; 4]).bytes() {
                        hex(&mut out, b);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            hex(&mut out, b);
        }
    }
    out
}

/// The bytes an [`escape`]d line stands for, so `unescape(&escape(b))` is `b` for all bytes:
/// the proof that escaping loses nothing. A backslash not followed by `\\`, `t`, `n`, `r`
/// or `x` and two hex digits is an error that names its byte offset.
// statectl only prints; the tests and the fuzz target (fuzz/, `escape`) read lines back.
#[allow(dead_code)]
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        match chars.next().map(|(_, c)| c) {
            Some('\\') => out.push(b'\\'),
            Some('t') => out.push(b'\t'),
            Some('n') => out.push(b'\n'),
            Some('r') => out.push(b'\r'),
            Some('x') => {
                let digits = (chars.next(), chars.next());
                let (Some((_, hi)), Some((_, lo))) = digits else {
                    return Err(format!("`\\x` at byte {at} needs two hex digits"));
                };
                let (Some(hi), Some(lo)) = (hi.to_digit(16), lo.to_digit(16)) else {
                    return Err(format!("`\\x{hi}{lo}` at byte {at} is not a hex byte"));
                };
                // Two hex digits are at most 0xff.
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(u8::MAX));
            }
            Some(other) => return Err(format!("unknown escape `\\{other}` at byte {at}")),
            None => return Err(format!("a lone `\\` ends the line at byte {at}")),
        }
    }
    Ok(out)
}

fn hex(out: &mut String, b: u8) {
    // Writing to a String cannot fail.
    let _ = write!(out, "\\x{b:02x}");
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn printable_text_is_unchanged() {
        assert_eq!(escape(b"user:42"), "user:42");
        assert_eq!(escape("héllo wörld ✓".as_bytes()), "héllo wörld ✓");
        assert_eq!(escape(b"a*"), "a*");
    }

    #[test]
    fn line_breaking_and_binary_bytes_are_escaped() {
        assert_eq!(escape(b"a\nb\tc\rd"), "a\\nb\\tc\\rd");
        assert_eq!(escape(b"back\\slash"), "back\\\\slash");
        assert_eq!(escape(b"\x00\x1b\x7f"), "\\x00\\x1b\\x7f");
        assert_eq!(escape(b"\xff\xfe ok"), "\\xff\\xfe ok");
        // C1 control U+0085 (NEL) is escaped byte by byte.
        assert_eq!(escape("x\u{85}".as_bytes()), "x\\xc2\\x85");
        assert!(!escape(b"\n\r\x0b\x0c").contains(['\n', '\r']));
    }
}
