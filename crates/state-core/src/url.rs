//! One parser for every backend URL; the [`Registry`](crate::Registry) turns a URL into a backend.
//!
//! ```text
//! memory://
//! redb:PATH                      (also redb://PATH)
//! redis://[user:pass@]host:port[/db]          rediss://… (TLS)
//! redis+sentinel://host:port[,host:port…]/MASTER_NAME
//! redis+cluster://host:port[,host:port…]
//! postgres://user[:pass]@host:port/db         postgresql://…
//! ```
//!
//! Every URL takes query parameters: `prefix=` (key prefix) and `ttl=` (default TTL, in
//! humantime form such as `30s` or `1500ms`) for all, plus backend-specific ones. An unknown
//! parameter is a [`Config`](crate::ErrorKind::Config) error, never silently ignored.
//!
//! ```
//! use state_core::{Scheme, StateUrl};
//!
//! let url = StateUrl::parse("redis+sentinel://s1:26379,s2:26379/mymaster?prefix=app:")?;
//! assert_eq!(url.scheme(), Scheme::RedisSentinel);
//! assert_eq!(url.hosts().len(), 2);
//! assert_eq!(url.path(), Some("mymaster"));
//! assert_eq!(url.key_prefix(), Some("app:"));
//! # Ok::<(), state_core::StateError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::error::{Result, StateError};

/// The kinds of URL this workspace understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scheme {
    /// `memory://`: the in-process reference backend.
    Memory,
    /// `redb:PATH`: the embedded on-disk store.
    Redb,
    /// `redis://`: one Redis server.
    Redis,
    /// `rediss://`: one Redis server over TLS.
    Rediss,
    /// `redis+sentinel://`: a primary found through Sentinels.
    RedisSentinel,
    /// `redis+cluster://`: a Redis Cluster.
    RedisCluster,
    /// `postgres://` or `postgresql://`.
    Postgres,
}

impl Scheme {
    /// Every scheme, in the order the docs list them.
    pub const ALL: [Scheme; 7] = [
        Scheme::Memory,
        Scheme::Redb,
        Scheme::Redis,
        Scheme::Rediss,
        Scheme::RedisSentinel,
        Scheme::RedisCluster,
        Scheme::Postgres,
    ];

    /// The scheme as written in a URL (`postgres` for both PostgreSQL spellings).
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Memory => "memory",
            Scheme::Redb => "redb",
            Scheme::Redis => "redis",
            Scheme::Rediss => "rediss",
            Scheme::RedisSentinel => "redis+sentinel",
            Scheme::RedisCluster => "redis+cluster",
            Scheme::Postgres => "postgres",
        }
    }

    fn from_name(name: &str) -> Option<Scheme> {
        Some(match name.to_ascii_lowercase().as_str() {
            "memory" => Scheme::Memory,
            "redb" => Scheme::Redb,
            "redis" => Scheme::Redis,
            "rediss" => Scheme::Rediss,
            "redis+sentinel" => Scheme::RedisSentinel,
            "redis+cluster" => Scheme::RedisCluster,
            "postgres" | "postgresql" => Scheme::Postgres,
            _ => return None,
        })
    }

    fn default_port(self) -> Option<u16> {
        match self {
            Scheme::Redis | Scheme::Rediss | Scheme::RedisCluster => Some(6379),
            Scheme::RedisSentinel => Some(26379),
            Scheme::Postgres => Some(5432),
            Scheme::Memory | Scheme::Redb => None,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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
    /// Parses any URL of the forms in the [module docs](self).
    pub fn parse(input: &str) -> Result<StateUrl> {
        let input = input.trim();
        let Some(colon) = input.find(':') else {
            return Err(unknown_scheme(input));
        };
        let name = &input[..colon];
        let scheme = Scheme::from_name(name).ok_or_else(|| unknown_scheme(name))?;
        let rest = &input[colon + 1..];
        match scheme {
            Scheme::Memory => {
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                let (path, query) = split_query(rest);
                if !path.is_empty() && path != "/" {
                    return Err(StateError::config(format!(
                        "memory URLs take no host or path (got `{path}`); write memory://"
                    )));
                }
                Ok(StateUrl::bare(scheme, None, parse_query(query)?))
            }
            Scheme::Redb => {
                let rest = rest.strip_prefix("//").unwrap_or(rest);
                let (path, query) = split_query(rest);
                if path.is_empty() {
                    return Err(StateError::config(
                        "the redb URL has no file path; write redb:PATH, e.g. redb:.statectl/state.redb",
                    ));
                }
                Ok(StateUrl::bare(
                    scheme,
                    Some(percent_decode(path, "path")?),
                    parse_query(query)?,
                ))
            }
            _ => parse_network(scheme, rest),
        }
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

    /// The URL of a server (not `memory://` or `redb:`) as text WITH its password, every
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

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(text: &str) -> String {
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

impl fmt::Display for StateUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Scheme::Memory => f.write_str("memory://")?,
            Scheme::Redb => write!(f, "redb:{}", self.path.as_deref().unwrap_or(""))?,
            _ => {
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

impl std::str::FromStr for StateUrl {
    type Err = StateError;
    fn from_str(s: &str) -> Result<Self> {
        StateUrl::parse(s)
    }
}

fn unknown_scheme(name: &str) -> StateError {
    // Only the part before ':' is echoed: the rest may hold a password.
    let shown: String = name.chars().take(40).collect();
    StateError::config(format!(
        "unknown URL scheme `{shown}`; use memory://, redb:PATH, redis://, rediss://, \
         redis+sentinel://, redis+cluster:// or postgres://"
    ))
}

fn with_field(err: StateError, field: &str) -> StateError {
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

fn parse_network(scheme: Scheme, rest: &str) -> Result<StateUrl> {
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(StateError::config(format!(
            "a {scheme} URL starts with {scheme}://"
        )));
    };
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
        hosts.push(parse_host(scheme, part)?);
    }
    let multi_host_ok = matches!(scheme, Scheme::RedisSentinel | Scheme::RedisCluster);
    if hosts.len() > 1 && !multi_host_ok {
        return Err(StateError::config(format!(
            "a {scheme} URL names one host; for several use redis+sentinel:// or redis+cluster://"
        )));
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

fn parse_host(scheme: Scheme, part: &str) -> Result<HostPort> {
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
    let port = match port {
        Some(p) => p.parse::<u16>().map_err(|_| {
            StateError::config(format!(
                "port `{p}` of host `{host}` is not a number from 0 to 65535"
            ))
        })?,
        None => scheme.default_port().unwrap_or(0),
    };
    Ok(HostPort {
        host: host.to_string(),
        port,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn parse(s: &str) -> StateUrl {
        match StateUrl::parse(s) {
            Ok(url) => url,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    fn config_error(s: &str) -> String {
        match StateUrl::parse(s) {
            Ok(url) => panic!("{s} parsed as {url:?}"),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Config, "{s}: {e}");
                e.to_string()
            }
        }
    }

    #[test]
    fn expose_round_trips_with_the_password_and_only_there() -> Result<()> {
        let url =
            StateUrl::parse("redis+sentinel://u%20x:p%40ss%3Aw@h1:1,h2:2/mymaster?prefix=a%26b")?;
        let full = url.expose(true);
        assert!(full.contains("p%40ss%3Aw"), "{full}");
        let again = StateUrl::parse(&full)?;
        assert_eq!(again.password().map(Secret::expose), Some("p@ss:w"));
        assert_eq!(again.username(), Some("u x"));
        assert_eq!(again.key_prefix(), Some("a&b"));
        assert_eq!(again.redacted(), url.redacted());
        assert!(!url.expose(false).contains('?'));
        assert!(!url.redacted().contains("p%40ss") && !url.redacted().contains("p@ss"));
        Ok(())
    }

    #[test]
    fn parses_every_scheme() {
        let u = parse("memory://");
        assert_eq!(u.scheme(), Scheme::Memory);
        let u = parse("memory://?prefix=a:&ttl=30s");
        assert_eq!(u.key_prefix(), Some("a:"));
        assert_eq!(
            u.default_ttl().ok().flatten(),
            Some(Duration::from_secs(30))
        );

        let u = parse("redb:.statectl/state.redb");
        assert_eq!(u.path(), Some(".statectl/state.redb"));
        let u = parse("redb:///tmp/x.redb?prefix=p");
        assert_eq!(u.path(), Some("/tmp/x.redb"));

        let u = parse("redis://user:p%40ss@127.0.0.1:6380/3?prefix=x:");
        assert_eq!(u.scheme(), Scheme::Redis);
        assert_eq!(u.username(), Some("user"));
        assert_eq!(u.password().map(Secret::expose), Some("p@ss"));
        assert_eq!(u.hosts()[0].to_string(), "127.0.0.1:6380");
        assert_eq!(u.path(), Some("3"));

        let u = parse("rediss://localhost");
        assert_eq!((u.scheme(), u.hosts()[0].port), (Scheme::Rediss, 6379));

        let u = parse("redis+sentinel://a:26379,b,[::1]:26380/mymaster");
        let hosts: Vec<String> = u.hosts().iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["a:26379", "b:26379", "[::1]:26380"]);
        assert_eq!(u.path(), Some("mymaster"));

        let u = parse("redis+cluster://n1:7000,n2:7001");
        assert_eq!(u.hosts().len(), 2);

        let u = parse("postgresql://me@db.local/optimizer?sslmode=require&table=t");
        assert_eq!(u.scheme(), Scheme::Postgres);
        assert_eq!(u.hosts()[0].port, 5432);
        assert_eq!(u.path(), Some("optimizer"));
        assert_eq!(u.param("sslmode"), Some("require"));
    }

    #[test]
    fn display_and_debug_never_show_the_password() {
        let u = parse("redis://admin:hunter2@h:1/0?password=hunter3&prefix=a");
        for shown in [u.to_string(), format!("{u:?}"), u.redacted()] {
            assert!(!shown.contains("hunter"), "{shown}");
            assert!(shown.contains("admin:***@h:1/0"), "{shown}");
        }
        assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
    }

    #[test]
    fn bad_urls_are_config_errors_that_say_why() {
        assert!(config_error("mysql://x").contains("unknown URL scheme `mysql`"));
        assert!(config_error("no-scheme-here").contains("unknown URL scheme"));
        assert!(config_error("redis://h:99999").contains("99999"));
        assert!(config_error("redis://a:1,b:2").contains("one host"));
        assert!(config_error("redis:h:1").contains("redis://"));
        assert!(config_error("redb:").contains("file path"));
        assert!(config_error("memory://?a=1&a=2").contains("twice"));
        assert!(config_error("redis://h/%zz").contains("percent"));
        assert!(config_error("redis://[::1/").contains("unclosed"));
    }

    #[test]
    fn the_scheme_error_never_echoes_credentials() {
        let msg = config_error("foo://user:hunter2@h");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn unknown_parameters_are_named() {
        let u = parse("memory://?prefix=a&colour=blue");
        let err = u.check_params(&[]).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("`colour`") && e.contains("prefix, ttl")));
        let u = parse("memory://?ttl=soon");
        assert!(u.default_ttl().is_err());
    }
}
