//! The data commands: each one call on the backend and a line (or lines) on stdout.

use std::io::Write;

use state_core::{StateBackend, Ttl, parse_duration, stream};

use crate::error::CliError;
use crate::escape::escape;

/// `put KEY VALUE [--ttl DURATION]`: prints nothing.
pub async fn put(
    backend: &dyn StateBackend,
    key: &str,
    value: &str,
    ttl: Option<&str>,
) -> Result<(), CliError> {
    match ttl {
        Some(raw) => {
            let ttl = parse_duration(raw)
                .map_err(|e| CliError::Usage(format!("invalid --ttl: {}", e.message())))?;
            backend
                .put_with_ttl(key.as_bytes(), value.as_bytes(), ttl)
                .await?;
        }
        None => backend.put(key.as_bytes(), value.as_bytes()).await?,
    }
    Ok(())
}

/// `get KEY`: the value's bytes and a newline.
pub async fn get(
    backend: &dyn StateBackend,
    key: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let value = backend
        .get(key.as_bytes())
        .await?
        .ok_or_else(|| CliError::missing(key.as_bytes()))?;
    out.write_all(&value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// `del KEY`: 1 if a key was deleted, else 0.
pub async fn del(
    backend: &dyn StateBackend,
    key: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let deleted = backend.delete(key.as_bytes()).await?;
    writeln!(out, "{}", u8::from(deleted))?;
    Ok(())
}

/// `ttl KEY`: remaining milliseconds or `persistent`.
pub async fn ttl(
    backend: &dyn StateBackend,
    key: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    match backend.ttl(key.as_bytes()).await? {
        Ttl::Missing => return Err(CliError::missing(key.as_bytes())),
        Ttl::Persistent => writeln!(out, "persistent")?,
        Ttl::Remaining(left) => writeln!(out, "{}", left.as_millis())?,
    }
    Ok(())
}

/// `scan [PREFIX] [--values]`: one escaped key (and value) per line, streamed.
pub async fn scan(
    backend: &dyn StateBackend,
    prefix: &str,
    values: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut entries = backend.scan(prefix.as_bytes());
    while let Some(entry) = stream::next(&mut entries).await {
        let entry = entry?;
        if values {
            writeln!(out, "{}\t{}", escape(&entry.key), escape(&entry.value))?;
        } else {
            writeln!(out, "{}", escape(&entry.key))?;
        }
    }
    Ok(())
}

/// `count [PREFIX]`.
pub async fn count(
    backend: &dyn StateBackend,
    prefix: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    writeln!(out, "{}", backend.count(prefix.as_bytes()).await?)?;
    Ok(())
}
