//! Reply decoding: a Redis reply turned into what the operation returns, or into a
//! `StateError` that names the operation (and the server, for an error reply).

use std::time::{Duration, SystemTime};

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

/// The absolute expiry of a key with `pttl` milliseconds left, seen at `now`.
pub(crate) fn expiry_of(pttl: i64, now: SystemTime) -> Option<Option<SystemTime>> {
    match pttl {
        -1 => Some(None),
        n if n >= 0 => Some(Some(now + Duration::from_millis(n.max(1) as u64))),
        _ => None,
    }
}
