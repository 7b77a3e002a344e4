//! Options of the embedded backend: where the file is, how commits reach the disk, and the
//! namespace, TTL and size limits of the backend handle.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use state_core::{Limits, Result, Scheme, StateError, StateUrl, UrlShape, ttl_millis};

use crate::RedbBackend;

/// How a commit reaches stable storage, and so what a crash can lose.
///
/// | mode | an acknowledged write survives a process crash | … a power failure or kernel crash |
/// |---|---|---|
/// | [`Immediate`](Durability::Immediate) | yes | yes (if the disk honours `fsync`) |
/// | [`Eventual`](Durability::Eventual) | only once flushed | only once flushed |
///
/// In `Eventual` mode every write commits to the file without `fsync`; a background thread
/// makes all commits so far durable with one `fsync`'d commit every `flush_interval` (group
/// commit). redb recovers a crashed file to its last durable commit, so a crash of the
/// process, the kernel or the power loses the writes acknowledged since the last flush: at
/// most `flush_interval` plus the duration of one flush. A clean shutdown (dropping the last
/// handle) loses nothing. Nothing is ever half-applied: each transaction is all or nothing.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is `fsync`'d before the call returns: an acknowledged write is never lost.
    /// Costs one `fsync` per commit; concurrent write calls share a commit (group commit), and
    /// a `batch_put` is one call.
    Immediate,
    /// Commits return before they are `fsync`'d; a flusher thread makes them durable every
    /// `flush_interval`. Crash and power failure lose at most the last `flush_interval` of
    /// acknowledged writes.
    Eventual {
        /// How often pending commits are made durable.
        flush_interval: Duration,
    },
}

impl Durability {
    /// The flush interval of [`Durability::eventual`]: one `fsync` per second at most, as
    /// Redis's `appendfsync everysec`.
    pub const DEFAULT_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

    /// `Eventual` with the default flush interval of one second.
    pub fn eventual() -> Self {
        Durability::Eventual {
            flush_interval: Self::DEFAULT_FLUSH_INTERVAL,
        }
    }
}

impl Default for Durability {
    /// `Immediate`: nothing acknowledged is lost unless asked for.
    fn default() -> Self {
        Durability::Immediate
    }
}

/// Configuration of a [`RedbBackend`]: a builder that ends in [`open`](RedbConfig::open).
///
/// ```no_run
/// use std::time::Duration;
/// use state_embedded::{Durability, RedbConfig};
///
/// let backend = RedbConfig::new("data/state.redb")
///     .key_prefix("app:")
///     .default_ttl(Duration::from_secs(3600))
///     .durability(Durability::eventual())
///     .cache_size(64 * 1024 * 1024)
///     .open()?;
/// # Ok::<(), state_embedded::StateError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RedbConfig {
    pub(crate) path: PathBuf,
    pub(crate) key_prefix: Vec<u8>,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) limits: Limits,
    pub(crate) durability: Durability,
    pub(crate) cache_size: usize,
    pub(crate) check_integrity: bool,
}

/// `redb:PATH` (also `redb://PATH`): the embedded store in the file at PATH.
pub const REDB: Scheme = Scheme::new("redb", UrlShape::Path);

/// The URL parameters the redb backend accepts besides `prefix` and `ttl`.
pub const URL_PARAMS: [&str; 4] = [
    "durability",
    "flush_interval",
    "cache_size",
    "check_integrity",
];

impl RedbConfig {
    /// redb's page cache: 64 MiB unless set (redb itself would take up to 1 GiB).
    pub const DEFAULT_CACHE_SIZE: usize = 64 * 1024 * 1024;

    /// The page cache for a process that only streams the state once, as a one-off export
    /// or import does (`statectl checkpoint create`, `restore`): 4 MiB.
    ///
    /// Such a process gains nothing from a larger cache, since an export reads each page
    /// once and an import writes each once, but it would fill one up to its size: 64 MiB of
    /// [`DEFAULT_CACHE_SIZE`](Self::DEFAULT_CACHE_SIZE) is what made its memory grow with
    /// the state. A process that also serves reads keeps the default: point reads hit the
    /// cache (see the crate documentation, "Memory"). [`streaming_url`] applies it to a URL.
    pub const STREAMING_CACHE_SIZE: usize = 4 * 1024 * 1024;

    /// The defaults for the file at `path` (created with its parent directories if absent):
    /// no key prefix, no default TTL, [`Limits::DEFAULT`], [`Durability::Immediate`].
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RedbConfig {
            path: path.into(),
            key_prefix: Vec::new(),
            default_ttl: None,
            limits: Limits::DEFAULT,
            durability: Durability::Immediate,
            cache_size: Self::DEFAULT_CACHE_SIZE,
            check_integrity: false,
        }
    }

    /// Reads `redb:PATH?prefix=…&ttl=…&durability=immediate|eventual&flush_interval=…`
    /// `&cache_size=BYTES&check_integrity=true|false`.
    /// An unknown parameter is a [`Config`](state_core::ErrorKind::Config) error.
    pub fn from_url(url: &StateUrl) -> Result<Self> {
        if url.scheme() != REDB {
            return Err(StateError::config(format!(
                "the redb backend cannot open a {} URL; write redb:PATH",
                url.scheme()
            )));
        }
        url.check_params(&URL_PARAMS)?;
        let path = url
            .path()
            .ok_or_else(|| StateError::config("the redb URL has no file path; write redb:PATH"))?;
        let mut config = RedbConfig::new(path);
        if let Some(prefix) = url.key_prefix() {
            config = config.key_prefix(prefix);
        }
        if let Some(ttl) = url.default_ttl()? {
            config = config.default_ttl(ttl);
        }
        let flush_interval = url
            .param("flush_interval")
            .map(|raw| {
                state_core::parse_duration(raw).map_err(|e| {
                    StateError::config(format!("parameter `flush_interval`: {}", e.message()))
                })
            })
            .transpose()?;
        match url.param("durability") {
            None | Some("immediate") => {
                if flush_interval.is_some() {
                    return Err(StateError::config(
                        "parameter `flush_interval` applies only with durability=eventual",
                    ));
                }
            }
            Some("eventual") => {
                config = config.durability(Durability::Eventual {
                    flush_interval: flush_interval.unwrap_or(Durability::DEFAULT_FLUSH_INTERVAL),
                });
            }
            Some(other) => {
                return Err(StateError::config(format!(
                    "parameter `durability`: `{other}` is not a mode; use immediate or eventual"
                )));
            }
        }
        if let Some(bytes) = url.parse_param::<usize>("cache_size")? {
            config = config.cache_size(bytes);
        }
        if let Some(check) = url.parse_param::<bool>("check_integrity")? {
            config = config.check_integrity(check);
        }
        Ok(config)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Namespaces every key of the backend under `prefix`.
    pub fn key_prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.key_prefix = prefix.as_ref().to_vec();
        self
    }

    /// A TTL applied by `put`, `batch_put` and the other writes without their own TTL.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Key and value size limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How commits reach the disk; see [`Durability`] for what each mode can lose.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Bytes of memory redb may use to cache pages: read pages, and up to half of it the
    /// pages a write transaction changed (the rest is written into free space of the file
    /// before the commit). The bound of an export's and an import's memory, whatever their
    /// size; fixed while the file is open (redb cannot resize it).
    pub fn cache_size(mut self, bytes: usize) -> Self {
        self.cache_size = bytes;
        self
    }

    /// Verifies the checksum of every page on open (reads the whole file), so that a file
    /// damaged outside redb fails with [`Corrupt`](state_core::ErrorKind::Corrupt) instead
    /// of being trusted. Off by default: redb verifies a file that was not closed cleanly
    /// anyway, and trusts one that was.
    pub fn check_integrity(mut self, enabled: bool) -> Self {
        self.check_integrity = enabled;
        self
    }

    /// Checks every field, naming the bad one.
    pub fn validate(&self) -> Result<()> {
        if self.path.as_os_str().is_empty() {
            return Err(StateError::config("path: the database file path is empty"));
        }
        if let Some(ttl) = self.default_ttl {
            ttl_millis(ttl)
                .map_err(|e| StateError::config(format!("default_ttl: {}", e.message())))?;
        }
        if self.limits.max_key_len == 0 {
            return Err(StateError::config("limits.max_key_len must be at least 1"));
        }
        if let Durability::Eventual { flush_interval } = self.durability
            && flush_interval.is_zero()
        {
            return Err(StateError::config(
                "flush_interval must be positive; for a flush on every commit use \
                 Durability::Immediate",
            ));
        }
        Ok(())
    }

    /// Validates the configuration and opens (or creates) the database. Fails with
    /// [`Unavailable`](state_core::ErrorKind::Unavailable) if another process has the file
    /// open. Blocking: call it from `spawn_blocking` inside a runtime if the file may need a
    /// repair after a crash.
    pub fn open(self) -> Result<RedbBackend> {
        RedbBackend::open_with(self)
    }
}

/// `url` with `cache_size=`[`RedbConfig::STREAMING_CACHE_SIZE`] added, if it is a `redb:`
/// URL that sets no `cache_size`: for a process that only streams the state once, such as a
/// one-off checkpoint or restore. Any other text (another scheme, a `cache_size` of its own,
/// a URL that does not parse, whose error the caller's own parse reports) comes back as is.
///
/// ```
/// assert_eq!(
///     state_embedded::streaming_url("redb:/data/state.redb?prefix=app:"),
///     "redb:/data/state.redb?prefix=app:&cache_size=4194304"
/// );
/// assert_eq!(state_embedded::streaming_url("memory://"), "memory://");
/// ```
pub fn streaming_url(url: &str) -> Cow<'_, str> {
    match StateUrl::parse(url, &[REDB]) {
        Ok(parsed) if parsed.param("cache_size").is_none() => {
            let separator = if url.contains('?') { '&' } else { '?' };
            Cow::Owned(format!(
                "{url}{separator}cache_size={}",
                RedbConfig::STREAMING_CACHE_SIZE
            ))
        }
        _ => Cow::Borrowed(url),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use state_core::ErrorKind;

    fn from(url: &str) -> Result<RedbConfig> {
        RedbConfig::from_url(&StateUrl::parse(url, &[REDB])?)
    }

    #[test]
    fn url_parameters_are_read() -> Result<()> {
        let c = from(
            "redb:/tmp/x.redb?prefix=a:&ttl=2s&durability=eventual&flush_interval=50ms&cache_size=1048576&check_integrity=true",
        )?;
        assert_eq!(c.path(), Path::new("/tmp/x.redb"));
        assert_eq!(c.key_prefix, b"a:");
        assert_eq!(c.default_ttl, Some(Duration::from_secs(2)));
        assert_eq!(
            c.durability,
            Durability::Eventual {
                flush_interval: Duration::from_millis(50)
            }
        );
        assert_eq!(c.cache_size, 1 << 20);
        assert!(c.check_integrity);
        assert_eq!(from("redb:x.redb")?.durability, Durability::Immediate);
        Ok(())
    }

    #[test]
    fn a_streaming_url_gets_the_streaming_cache_and_keeps_everything_else() -> Result<()> {
        let streaming = |url: &str| from(&streaming_url(url));
        assert_eq!(
            streaming("redb:///tmp/x.redb")?.cache_size,
            RedbConfig::STREAMING_CACHE_SIZE
        );
        let c = streaming("redb:/tmp/x.redb?prefix=a%26b:&durability=eventual")?;
        assert_eq!(c.cache_size, RedbConfig::STREAMING_CACHE_SIZE);
        assert_eq!(c.path(), Path::new("/tmp/x.redb"));
        assert_eq!(c.key_prefix, b"a&b:");
        assert_eq!(c.durability, Durability::eventual());
        // A query that ends in a separator is still one query.
        assert_eq!(
            streaming("redb:x.redb?")?.cache_size,
            RedbConfig::STREAMING_CACHE_SIZE
        );
        for unchanged in [
            "redb:x.redb?cache_size=1024",
            "memory://",
            "postgres://u@h/db",
            "redb:x?colour=blue&colour=red",
            "not a url",
        ] {
            assert_eq!(streaming_url(unchanged), unchanged);
        }
        assert_eq!(
            from(&streaming_url("redb:x?cache_size=1024"))?.cache_size,
            1024
        );
        Ok(())
    }

    #[test]
    fn bad_url_parameters_are_config_errors_naming_them() {
        for (url, needle) in [
            ("redb:x?colour=blue", "`colour`"),
            ("redb:x?durability=sometimes", "`durability`"),
            ("redb:x?flush_interval=1s", "flush_interval"),
            (
                "redb:x?durability=eventual&flush_interval=0s",
                "flush_interval",
            ),
            ("redb:x?cache_size=big", "`cache_size`"),
            ("redb:x?ttl=0s", "default_ttl"),
            ("memory://", "memory"),
        ] {
            let err = from(url).and_then(|c| c.validate().map(|()| c)).err();
            let kind = err.as_ref().map(StateError::kind);
            let msg = err.map(|e| e.to_string()).unwrap_or_default();
            assert_eq!(kind, Some(ErrorKind::Config), "{url}: {msg}");
            assert!(msg.contains(needle), "{url}: {msg}");
        }
    }
}
