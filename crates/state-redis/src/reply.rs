//! Reply decoding: a Redis reply turned into what the operation returns, or into a
//! `StateError` that names the operation (and the server, for an error reply).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use redis::Value;
use state_core::{ErrorKind, Result, StateError};

use crate::error::{Failure, to_state};

/// The first error reply of a pipeline, as a `StateError`.
pub(crate) fn first_error(what: &str, target: &str, replies: &[Value]) -> Result<()> {
    for reply in replies {
        if let Value::ServerError(e) = reply {
            return Err(to_state(
                what,
                target,
                Failure::after_send(e.clone().into()),
            ));
        }
    }
    Ok(())
}

pub(crate) fn lift_reply(what: &str, target: &str, value: Value) -> Result<Value> {
    crate::conn::lift(value).map_err(|e| to_state(what, target, Failure::after_send(e)))
}

pub(crate) fn unexpected(what: &str, value: &Value) -> StateError {
    StateError::new(
        ErrorKind::Backend,
        format!("{what}: unexpected reply from Redis ({})", kind_name(value)),
    )
}

fn kind_name(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "integer",
        Value::BulkString(_) => "bulk string",
        Value::Array(_) => "array",
        Value::SimpleString(_) => "simple string",
        Value::Okay => "OK",
        Value::ServerError(_) => "error",
        _ => "other",
    }
}

pub(crate) fn bytes_of(what: &str, value: Value) -> Result<Option<Bytes>> {
    match value {
        Value::Nil => Ok(None),
        Value::BulkString(b) => Ok(Some(Bytes::from(b))),
        Value::SimpleString(s) => Ok(Some(Bytes::from(s.into_bytes()))),
        Value::Okay => Ok(Some(Bytes::from_static(b"OK"))),
        other => Err(unexpected(what, &other)),
    }
}

pub(crate) fn int_of(what: &str, value: &Value) -> Result<i64> {
    match value {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(what, other)),
    }
}

pub(crate) fn text_of(value: &Value) -> String {
    match value {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::VerbatimString { text, .. } => text.clone(),
        Value::SimpleString(s) => s.clone(),
        _ => String::new(),
    }
}

/// The text of an `INFO` reply; anything but a string is an unexpected reply.
pub(crate) fn info_text<'a>(what: &str, value: &'a Value) -> Result<&'a str> {
    match value {
        Value::BulkString(b) => std::str::from_utf8(b).map_err(|_| {
            StateError::new(
                ErrorKind::Backend,
                format!("{what}: the INFO reply from Redis is not UTF-8 text"),
            )
        }),
        Value::VerbatimString { text, .. } => Ok(text),
        Value::SimpleString(s) => Ok(s),
        other => Err(unexpected(what, other)),
    }
}

/// The field `name` of an `INFO` reply's text (`name:value` lines), trimmed.
pub(crate) fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim())
    })
}

/// The unsigned integer field `name` of an `INFO` reply's text (`name:value` lines, with
/// `#` lines heading the sections). A missing field, or one that is not an unsigned
/// integer, is a `Backend` error that names it.
pub(crate) fn info_u64(what: &str, text: &str, name: &str) -> Result<u64> {
    let Some(value) = info_field(text, name) else {
        return Err(StateError::new(
            ErrorKind::Backend,
            format!("{what}: the INFO reply from Redis has no `{name}` field"),
        ));
    };
    value.parse::<u64>().map_err(|_| {
        let shown: String = value.chars().take(40).collect();
        StateError::new(
            ErrorKind::Backend,
            format!("{what}: the INFO field `{name}` is `{shown}`, not an unsigned integer"),
        )
    })
}

/// The expiry of a key whose `PEXPIRETIME` is `ms` (Unix milliseconds; -1: none; -2: the
/// key is gone, `None`).
pub(crate) fn expiry_at(ms: i64) -> Option<Option<SystemTime>> {
    match ms {
        -1 => Some(None),
        n if n >= 0 => Some(Some(UNIX_EPOCH + Duration::from_millis(n as u64))),
        _ => None,
    }
}

/// The absolute expiry of a key with `pttl` milliseconds left, seen at `now`.
pub(crate) fn expiry_of(pttl: i64, now: SystemTime) -> Option<Option<SystemTime>> {
    match pttl {
        -1 => Some(None),
        n if n >= 0 => Some(Some(now + Duration::from_millis(n.max(1) as u64))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absolute_expiry_is_read_as_unix_milliseconds() {
        assert_eq!(expiry_at(-1), Some(None));
        assert_eq!(expiry_at(-2), None);
        assert_eq!(expiry_at(-7), None);
        assert_eq!(
            expiry_at(1_700_000_000_123),
            Some(Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123)))
        );
    }

    const MEMORY: &str = "# Memory\r\nused_memory:1034560\r\nused_memory_human:1010.31K\r\n\
                          used_memory_rss:7340032\r\n";

    #[test]
    fn an_info_field_is_found_by_its_exact_name() {
        assert_eq!(
            info_u64("INFO", MEMORY, "used_memory").ok(),
            Some(1_034_560)
        );
        assert_eq!(
            info_u64("INFO", MEMORY, "used_memory_rss").ok(),
            Some(7_340_032)
        );
        let clients = "# Clients\nconnected_clients:3\nblocked_clients:0\n";
        assert_eq!(info_u64("INFO", clients, "connected_clients").ok(), Some(3));
    }

    #[test]
    fn a_missing_or_malformed_info_field_is_an_error_naming_it() {
        for (text, why) in [
            ("", "no `used_memory` field"),
            (
                "# Memory\r\nused_memory_human:1K\r\n",
                "no `used_memory` field",
            ),
            ("used_memory\r\n", "no `used_memory` field"),
            ("used_memory:\r\n", "is ``, not an unsigned integer"),
            ("used_memory:-5\r\n", "is `-5`, not an unsigned integer"),
            ("used_memory:1.5\r\n", "is `1.5`, not an unsigned integer"),
            (
                "used_memory:99999999999999999999999\r\n",
                "not an unsigned integer",
            ),
            ("used_memory:\u{fffd}\u{0}:x\n", "not an unsigned integer"),
        ] {
            let err = info_u64("INFO memory", text, "used_memory").err();
            let err = err.unwrap_or_else(|| panic!("{text:?} was accepted"));
            assert_eq!(err.kind(), ErrorKind::Backend, "{text:?}");
            assert!(err.message().contains(why), "{text:?}: {err}");
            assert!(err.message().starts_with("INFO memory: "), "{err}");
        }
        let long = format!("used_memory:{}\n", "x".repeat(10_000));
        let err = info_u64("INFO", &long, "used_memory").err();
        assert!(
            err.is_some_and(|e| e.message().len() < 200),
            "the value is cut short"
        );
    }

    #[test]
    fn an_info_reply_that_is_not_text_is_unexpected() {
        let text = Value::BulkString(MEMORY.as_bytes().to_vec());
        assert_eq!(info_text("INFO", &text).ok(), Some(MEMORY));
        assert_eq!(
            info_text("INFO", &Value::SimpleString("a:1".into())).ok(),
            Some("a:1")
        );
        for reply in [
            Value::Nil,
            Value::Int(3),
            Value::Array(vec![]),
            Value::BulkString(vec![0xff, 0xfe]),
        ] {
            let err = info_text("INFO", &reply).err();
            assert!(
                err.is_some_and(|e| e.kind() == ErrorKind::Backend),
                "{reply:?}"
            );
        }
    }
}
