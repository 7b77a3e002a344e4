//! The URL grammar: a scheme's [shape](UrlShape) decides how the text after `NAME:` reads.

use std::collections::BTreeMap;
use std::time::Duration;

use super::scheme::{Scheme, UrlShape, usage_list};
use super::{HostPort, Secret, StateUrl};
use crate::error::{Result, StateError};

/// Parses `input` as a URL of one of `schemes`.
pub(super) fn parse(input: &str, schemes: &[Scheme]) -> Result<StateUrl> {
    let input = input.trim();
    let Some(colon) = input.find(':') else {
        return Err(unknown_scheme(input, schemes));
    };
    let name = &input[..colon];
    let Some(scheme) = schemes.iter().copied().find(|s| s.is_written(name)) else {
        return Err(unknown_scheme(name, schemes));
    };
    let rest = &input[colon + 1..];
    match scheme.shape() {
        UrlShape::Bare => {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (path, query) = split_query(rest);
            if !path.is_empty() && path != "/" {
                return Err(StateError::config(format!(
                    "{scheme} URLs take no host or path (got `{path}`); write {scheme}://"
                )));
            }
            Ok(StateUrl::bare(scheme, None, parse_query(query)?))
        }
        UrlShape::Path => {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (path, query) = split_query(rest);
            if path.is_empty() {
                return Err(StateError::config(format!(
                    "the {scheme} URL has no file path; write {scheme}:PATH, e.g. \
                     {scheme}:.statectl/state.{scheme}"
                )));
            }
            Ok(StateUrl::bare(
                scheme,
                Some(percent_decode(path, "path")?),
                parse_query(query)?,
            ))
        }
        UrlShape::Hosts {
            default_port,
            several,
        } => parse_network(scheme, default_port, several, rest, schemes),
    }
}

fn unknown_scheme(name: &str, schemes: &[Scheme]) -> StateError {
    // Only the part before ':' is echoed: the rest may hold a password.
    let shown: String = name.chars().take(40).collect();
    StateError::config(format!(
        "unknown URL scheme `{shown}`; use {}",
        usage_list(schemes)
    ))
}

pub(super) fn with_field(err: StateError, field: &str) -> StateError {
    StateError::config(format!("parameter `{field}`: {}", err.message()))
}

/// Parses a humantime duration such as `1500ms`, `30s` or `2m`.
pub fn parse_duration(raw: &str) -> Result<Duration> {
    humantime::parse_duration(raw.trim()).map_err(|e| {
        StateError::invalid_input(format!(
            "`{raw}` is not a duration ({e}); write it like 1500ms, 30s or 2m"
        ))
    })
}

fn split_query(s: &str) -> (&str, &str) {
    match s.find('?') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    }
}

fn parse_query(query: &str) -> Result<BTreeMap<String, String>> {
    let mut params = BTreeMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k, "query")?;
        let v = percent_decode(v, &k)?;
        if params.insert(k.clone(), v).is_some() {
            return Err(StateError::config(format!(
                "parameter `{k}` is given twice in the URL"
            )));
        }
    }
    Ok(params)
}

fn parse_network(
    scheme: Scheme,
    default_port: u16,
    several: bool,
    rest: &str,
    schemes: &[Scheme],
) -> Result<StateUrl> {
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(StateError::config(format!(
            "a {scheme} URL starts with {scheme}://"
        )));
    };
    refuse_unencoded_userinfo(rest)?;
    let (before_query, query) = split_query(rest);
    let (authority, path) = match before_query.find('/') {
        Some(i) => (&before_query[..i], Some(&before_query[i + 1..])),
        None => (before_query, None),
    };
    // The last '@' ends the user info: a password may itself contain '@' when encoded.
    let (userinfo, hostlist) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, pass) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            let user = percent_decode(user, "user name")?;
            let pass = pass
                .map(|p| percent_decode(p, "password").map(Secret::new))
                .transpose()?;
            ((!user.is_empty()).then_some(user), pass)
        }
    };
    let mut hosts = Vec::new();
    for part in hostlist.split(',') {
        hosts.push(parse_host(scheme, default_port, part)?);
    }
    if hosts.len() > 1 && !several {
        return Err(one_host_only(scheme, schemes));
    }
    let path = path
        .filter(|p| !p.is_empty())
        .map(|p| percent_decode(p, "path"))
        .transpose()?;
    Ok(StateUrl {
        scheme,
        username,
        password,
        hosts,
        path,
        params: parse_query(query)?,
        handed_over: Vec::new(),
    })
}

/// A `/` or `?` written as is in a user name or password ends the authority early, and the
/// rest of the password would be read as a host, a port or a path, and quoted back in an
/// error. Such a URL is refused with a message that quotes none of it. An `@` after the
/// first `/` or `?` is taken as user info unless a `=` before it shows a query parameter.
fn refuse_unencoded_userinfo(rest: &str) -> Result<()> {
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, after) = rest.split_at(end);
    if authority.contains('@') {
        return Ok(());
    }
    match after.find('@') {
        Some(at) if !after[..at].contains('=') => Err(StateError::config(
            "the URL's user name or password holds a `/` or `?` that is not percent-encoded; \
             write `/` as %2F and `?` as %3F",
        )),
        _ => Ok(()),
    }
}

fn one_host_only(scheme: Scheme, schemes: &[Scheme]) -> StateError {
    let several: Vec<Scheme> = schemes
        .iter()
        .copied()
        .filter(|s| matches!(s.shape(), UrlShape::Hosts { several: true, .. }))
        .collect();
    if several.is_empty() {
        return StateError::config(format!("a {scheme} URL names one host"));
    }
    StateError::config(format!(
        "a {scheme} URL names one host; for several use {}",
        usage_list(&several)
    ))
}

fn parse_host(scheme: Scheme, default_port: u16, part: &str) -> Result<HostPort> {
    if part.is_empty() {
        return Err(StateError::config(format!(
            "the {scheme} URL has an empty host; write host:port"
        )));
    }
    let (host, port) = if let Some(v6) = part.strip_prefix('[') {
        let Some(end) = v6.find(']') else {
            return Err(StateError::config(format!("unclosed `[` in host `{part}`")));
        };
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => {
                return Err(StateError::config(format!(
                    "unexpected `{after}` after the address in `{part}`"
                )));
            }
        };
        (&v6[..end], port)
    } else {
        match part.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (part, None),
        }
    };
    // A bracket inside a host could not be written back (`expose`, `Display`) so that it
    // reads the same: `[` and `]` only ever enclose an IPv6 address.
    if host.contains(['[', ']']) {
        return Err(StateError::config(format!(
            "host `{part}` has a stray `[` or `]`; brackets enclose an IPv6 address, as in \
             [::1]:{default_port}"
        )));
    }
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| {
            StateError::config(format!(
                "port `{p}` of host `{host}` is not a number from 0 to 65535"
            ))
        })?,
        None => default_port,
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub(super) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => out.push(b),
                None => {
                    return Err(StateError::config(format!(
                        "bad percent-encoding in the URL's {what}"
                    )));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| StateError::config(format!("the URL's {what} is not valid UTF-8")))
}
