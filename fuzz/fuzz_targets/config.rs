//! Arbitrary text, after a scheme the first byte picks (so most inputs reach the parameter
//! readers), into every config's `from_url`: each ends in a config or a `Config` error with
//! a message, and no config's `Debug` shows the URL's password.
#![no_main]

use libfuzzer_sys::fuzz_target;
use state_core::{ErrorKind, StateError};
use state_lock::{PostgresLockConfig, RedisLockConfig};
use state_postgres::PostgresConfig;
use state_redis::RedisConfig;

const PREFIXES: [&str; 9] = [
    "",
    "redis://",
    "rediss://",
    "redis+sentinel://",
    "redis+cluster://",
    "postgres://",
    "redis://u:fuzz-secret-pw@h:1/0?",
    "postgres://u:fuzz-secret-pw@h:1/db?",
    "redb:",
];

/// `secret`: whether the password can only have come from the prefix (the fuzzed part
/// could spell it in a parameter, plainly or percent-encoded, and then it may be shown).
fn checked<T: std::fmt::Debug>(result: Result<T, StateError>, url: &str, secret: bool) {
    let shown = match result {
        Ok(config) => format!("{config:?}"),
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::Config, "{url:?}: {e}");
            assert!(!e.message().is_empty(), "{url:?}");
            e.to_string()
        }
    };
    assert!(
        !(secret && shown.contains("fuzz-secret-pw")),
        "{url:?}: {shown}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(rest) = std::str::from_utf8(rest) else {
        return;
    };
    let url = format!("{}{rest}", PREFIXES[usize::from(pick) % PREFIXES.len()]);
    let secret = !rest.contains('%') && !rest.contains("pw");
    checked(RedisConfig::from_url(&url), &url, secret);
    checked(RedisLockConfig::from_url(&url), &url, secret);
    checked(PostgresConfig::from_url(&url), &url, secret);
    checked(PostgresLockConfig::from_url(&url), &url, secret);
    if let Ok(parsed) = state_core::StateUrl::parse(&url, &[state_embedded::REDB]) {
        checked(state_embedded::RedbConfig::from_url(&parsed), &url, secret);
    }
});
