//! statectl's line escaping: any bytes escape to one line (no CR, no LF) that unescapes to
//! the same bytes, and unescaping any text ends in bytes or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

// statectl is a binary: its escaping module is compiled in here from its source file.
#[path = "../../crates/statectl/src/escape.rs"]
#[allow(dead_code)]
mod escape;

fuzz_target!(|data: &[u8]| {
    let line = escape::escape(data);
    assert!(!line.contains(['\n', '\r']), "{line:?}");
    assert_eq!(escape::unescape(&line).as_deref(), Ok(data), "{line:?}");
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(bytes) = escape::unescape(text)
    {
        // What unescapes also escapes and comes back (spellings such as `\x41` may differ).
        assert_eq!(escape::unescape(&escape::escape(&bytes)), Ok(bytes));
    }
});
