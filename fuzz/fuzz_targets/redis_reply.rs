//! Arbitrary bytes read as RESP by the driver, then into every reply decoder of the Redis
//! backend and lock (SCAN pages, fencing tokens, INFO text, integers, error replies): each
//! ends in a value or an error, never a panic; a decoded token is the reply's decimal text.
#![no_main]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use state_core::ErrorKind;
use state_redis::fuzzing;
use state_redis::redis::{Value, parse_redis_value};

fn decode_all(value: Value) {
    if let Ok((_cursor, keys)) = fuzzing::scan_reply(value.clone()) {
        let bulk = match &value {
            Value::Array(parts) => match parts.get(1) {
                Some(Value::Array(found)) => found
                    .iter()
                    .filter(|v| matches!(v, Value::BulkString(_)))
                    .count(),
                _ => usize::MAX,
            },
            _ => usize::MAX,
        };
        assert_eq!(keys.len(), bulk, "every bulk string of the page is a key");
    }
    match state_lock::fuzzing::token_reply("fuzz", &value) {
        Ok(token) => {
            let text = match &value {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                other => panic!("a token from {other:?}"),
            };
            assert_eq!(text.parse::<u64>().ok(), Some(token.0));
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::Backend, "{e}"),
    }
    if let Ok(text) = fuzzing::info_text(&value) {
        let _ = fuzzing::info_u64(text, "used_memory");
        let _ = fuzzing::info_field(text, "role");
        let _ = fuzzing::cluster_nodes(text);
    }
    if let Ok(n) = fuzzing::int_of(&value) {
        // Fixed, so a failure replays; PTTL replies are the integers this reads.
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let _ = fuzzing::expiry_of(n, now);
        let _ = fuzzing::expiry_of(n, SystemTime::now());
    }
    if let Value::Array(items) = &value {
        let _ = fuzzing::first_error(items);
        for item in items.iter().take(8) {
            decode_all(item.clone());
        }
    }
    let _ = fuzzing::bytes_of(value.clone());
    let _ = fuzzing::lift_reply(value);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = parse_redis_value(data) {
        decode_all(value);
    }
});
