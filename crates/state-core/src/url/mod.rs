//! One parser for every backend URL; the [`Registry`](crate::Registry) turns a URL into a backend.
//!
//! A URL names its [`Scheme`], and the scheme's [shape](UrlShape) says how the rest reads.
//! Each backend crate declares its schemes; the shapes in use:
//!
//! ```text
//! memory://                                    (Bare)
//! redb:PATH                      (also redb://PATH)                         (Path)
//! redis://[user:pass@]host:port[/db]          rediss://… (TLS)              (Hosts)
//! redis+sentinel://host:port[,host:port…]/MASTER_NAME
//! redis+cluster://host:port[,host:port…]
//! postgres://user[:pass]@host:port/db         postgresql://…
//! ```
//!
//! Every URL takes query parameters: `prefix=` (key prefix) and `ttl=` (default TTL, in
//! humantime form such as `30s` or `1500ms`) for all, plus backend-specific ones. An unknown
//! parameter is a [`Config`](crate::ErrorKind::Config) error, never silently ignored.
//!
//! A URL is parsed against the schemes someone can open: [`Registry::parse`] uses those
//! registered, a backend crate its own (`StateUrl::parse(text, &state_redis::SCHEMES)`).
//!
//! ```
//! use state_core::url::{Scheme, StateUrl, UrlShape};
//!
//! const SENTINEL: Scheme =
//!     Scheme::new("redis+sentinel", UrlShape::Hosts { default_port: 26379, several: true });
//! let url = StateUrl::parse("redis+sentinel://s1:26379,s2/mymaster?prefix=app:", &[SENTINEL])?;
//! assert_eq!(url.scheme(), SENTINEL);
//! assert_eq!(url.hosts()[1].port, 26379);
//! assert_eq!(url.path(), Some("mymaster"));
//! assert_eq!(url.key_prefix(), Some("app:"));
//! # Ok::<(), state_core::StateError>(())
//! ```
//!
//! [`Registry::parse`]: crate::Registry::parse

mod parse;
mod scheme;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::{Result, StateError};
use parse::{percent_encode, with_field};

pub use parse::parse_duration;
pub use scheme::{Scheme, UrlShape};

/// A password or token: its `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself, for handing to a driver. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One `host:port` of a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port, or the scheme's default.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// A parsed backend URL. Its `Debug` and `Display` redact the password.
#[derive(Clone, PartialEq, Eq)]
pub struct StateUrl {
    scheme: Scheme,
    username: Option<String>,
    password: Option<Secret>,
    hosts: Vec<HostPort>,
    path: Option<String>,
    params: BTreeMap<String, String>,
    /// Parameters read by another part (a layer, a lock), which the backend accepts
    /// without reading.
    handed_over: Vec<&'static str>,
}

impl StateUrl {
    /// Parses `input` as a URL of one of `schemes` (those a caller can open), failing with a
    /// [`Config`](crate::ErrorKind::Config) error that says what is wrong and, for an
    /// unknown scheme, lists `schemes`. Never echoes a password.
    pub fn parse(input: &str, schemes: &[Scheme]) -> Result<StateUrl> {
        parse::parse(input, schemes)
    }

    fn bare(scheme: Scheme, path: Option<String>, params: BTreeMap<String, String>) -> Self {
        StateUrl {
            scheme,
            username: None,
            password: None,
            hosts: Vec::new(),
            path,
            params,
            handed_over: Vec::new(),
        }
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The user name, if any.
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }

    /// The password, if any.
    pub fn password(&self) -> Option<&Secret> {
        self.password.as_ref()
    }

    /// The hosts (one, or several for Sentinel and Cluster); empty for memory and redb.
    pub fn hosts(&self) -> &[HostPort] {
        &self.hosts
    }

    /// The decoded path without its leading `/`: the file for redb, the db index for Redis,
    /// the master name for Sentinel, the database for PostgreSQL.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }

    /// The value of query parameter `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// Every query parameter.
    pub fn params(&self) -> &BTreeMap<String, String> {
        &self.params
    }

    /// The common `prefix=` parameter.
    pub fn key_prefix(&self) -> Option<&str> {
        self.param("prefix")
    }

    /// The common `ttl=` parameter (humantime: `30s`, `1500ms`, `2m`).
    pub fn default_ttl(&self) -> Result<Option<Duration>> {
        self.param("ttl")
            .map(|raw| parse_duration(raw).map_err(|e| with_field(e, "ttl")))
            .transpose()
    }

    /// Marks `names` as parameters another part reads (a layer, a lock service): the
    /// backend's [`check_params`](Self::check_params) then accepts them, and the URL keeps
    /// them for whoever they are meant for.
    pub fn hand_over(&mut self, names: &[&'static str]) {
        for name in names {
            if !self.handed_over.contains(name) {
                self.handed_over.push(name);
            }
        }
    }

    /// Fails with a `Config` error naming the first parameter not in `common` (`prefix`,
    /// `ttl`), `specific` or those [handed over](Self::hand_over) to other parts, and
    /// listing the ones accepted.
    pub fn check_params(&self, specific: &[&str]) -> Result<()> {
        const COMMON: [&str; 2] = ["prefix", "ttl"];
        for name in self.params.keys() {
            let name = name.as_str();
            if !COMMON.contains(&name)
                && !specific.contains(&name)
                && !self.handed_over.contains(&name)
            {
                let mut known: Vec<&str> = COMMON.to_vec();
                known.extend_from_slice(specific);
                known.extend_from_slice(&self.handed_over);
                return Err(StateError::config(format!(
                    "unknown parameter `{name}` in a {} URL; accepted parameters: {}",
                    self.scheme,
                    known.join(", ")
                )));
            }
        }
        Ok(())
    }

    /// A parameter parsed with `FromStr`, with an error naming it.
    pub fn parse_param<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>>
    where
        T::Err: fmt::Display,
    {
        self.param(name)
            .map(|raw| {
                raw.parse::<T>().map_err(|e| {
                    StateError::config(format!("parameter `{name}`: `{raw}` is not valid ({e})"))
                })
            })
            .transpose()
    }

    /// The URL as text with the password replaced by `***`: safe to log or print.
    pub fn redacted(&self) -> String {
        self.to_string()
    }

    /// The URL of a server (a [`UrlShape::Hosts`] scheme) as text WITH its password, every
    /// part percent-encoded so that [`parse`](Self::parse) reads it back unchanged; the
    /// query parameters too if `with_query`. For handing to a driver or another parser
    /// only: never log it.
    pub fn expose(&self, with_query: bool) -> String {
        let mut out = format!("{}://", self.scheme);
        match (&self.username, &self.password) {
            (user, Some(password)) => {
                let user = percent_encode(user.as_deref().unwrap_or(""));
                out.push_str(&format!("{user}:{}@", percent_encode(password.expose())));
            }
            (Some(user), None) => out.push_str(&format!("{}@", percent_encode(user))),
            (None, None) => {}
        }
        let hosts: Vec<String> = self.hosts.iter().map(ToString::to_string).collect();
        out.push_str(&hosts.join(","));
        if let Some(path) = &self.path {
            out.push('/');
            out.push_str(&percent_encode(path));
        }
        if with_query {
            for (i, (key, value)) in self.params.iter().enumerate() {
                out.push(if i == 0 { '?' } else { '&' });
                out.push_str(&format!(
                    "{}={}",
                    percent_encode(key),
                    percent_encode(value)
                ));
            }
        }
        out
    }
}

impl fmt::Display for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme.shape() {
            UrlShape::Bare => write!(f, "{}://", self.scheme)?,
            UrlShape::Path => write!(f, "{}:{}", self.scheme, self.path.as_deref().unwrap_or(""))?,
            UrlShape::Hosts { .. } => {
                write!(f, "{}://", self.scheme)?;
                match (&self.username, &self.password) {
                    (Some(user), Some(_)) => write!(f, "{user}:***@")?,
                    (Some(user), None) => write!(f, "{user}@")?,
                    (None, Some(_)) => f.write_str(":***@")?,
                    (None, None) => {}
                }
                for (i, host) in self.hosts.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{host}")?;
                }
                if let Some(path) = &self.path {
                    write!(f, "/{path}")?;
                }
            }
        }
        for (i, (k, v)) in self.params.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            // A parameter named like a secret is redacted too.
            let secretish = k.contains("pass") || k.contains("token") || k.contains("secret");
            let v = if secretish { "***" } else { v.as_str() };
            write!(f, "{sep}{k}={v}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateUrl({self})")
    }
}
