//! [`Scheme`]: a URL scheme and the shape of its URLs, declared by the crate that opens it.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

/// How the URLs of a scheme are written. Core knows these shapes; which backend uses which
/// is the backend crate's business.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlShape {
    /// `NAME://` and query parameters only, such as `memory://`.
    Bare,
    /// `NAME:PATH` (also `NAME://PATH`): everything before `?` is a path, such as
    /// `redb:.statectl/state.redb`.
    Path,
    /// `NAME://[user[:password]@]host[:port][,host[:port]…][/path]`.
    Hosts {
        /// The port of a host written without one.
        default_port: u16,
        /// Whether the URL may name several hosts (Sentinels, Cluster seed nodes).
        several: bool,
    },
}

impl UrlShape {
    /// [`UrlShape::Hosts`], written shorter in `const` declarations.
    pub const fn hosts(default_port: u16, several: bool) -> UrlShape {
        UrlShape::Hosts {
            default_port,
            several,
        }
    }
}

/// A URL scheme: its name, the other spellings it accepts, and the [shape](UrlShape) of its
/// URLs. Each backend crate declares its own (`state_redis::REDIS`,
/// `state_postgres::POSTGRES`…) and registers them with a
/// [`Registry`](crate::Registry); core names only `memory://`
/// ([`MEMORY`](crate::memory::MEMORY)).
///
/// Two schemes are the same scheme when their names are equal.
///
/// ```
/// use state_core::url::{Scheme, StateUrl, UrlShape};
///
/// const KV: Scheme = Scheme::new("kv", UrlShape::Hosts { default_port: 7000, several: false })
///     .with_aliases(&["keyvalue"]);
/// let url = StateUrl::parse("KeyValue://h/db?prefix=a:", &[KV])?;
/// assert_eq!(url.scheme(), KV);
/// assert_eq!(url.to_string(), "kv://h:7000/db?prefix=a:");
/// # Ok::<(), state_core::StateError>(())
/// ```
#[derive(Clone, Copy)]
pub struct Scheme {
    name: &'static str,
    aliases: &'static [&'static str],
    shape: UrlShape,
}

impl Scheme {
    /// A scheme written `name` (in lower case), whose URLs have `shape`.
    pub const fn new(name: &'static str, shape: UrlShape) -> Scheme {
        Scheme {
            name,
            aliases: &[],
            shape,
        }
    }

    /// The same scheme, also accepting the spellings `aliases` (in lower case), such as
    /// `postgresql` for `postgres`.
    pub const fn with_aliases(self, aliases: &'static [&'static str]) -> Scheme {
        Scheme { aliases, ..self }
    }

    /// The scheme as written in a URL (its name, for aliases too).
    pub fn as_str(self) -> &'static str {
        self.name
    }

    /// How its URLs are written.
    pub fn shape(self) -> UrlShape {
        self.shape
    }

    /// Whether `written` (in any case) names this scheme or one of its aliases.
    pub fn is_written(self, written: &str) -> bool {
        written.eq_ignore_ascii_case(self.name)
            || self.aliases.iter().any(|a| written.eq_ignore_ascii_case(a))
    }

    /// How a user starts a URL of this scheme: `memory://`, `redb:PATH`, `redis://`.
    pub fn usage(self) -> String {
        match self.shape {
            UrlShape::Path => format!("{}:PATH", self.name),
            UrlShape::Bare | UrlShape::Hosts { .. } => format!("{}://", self.name),
        }
    }
}

/// `a, b or c`: how the schemes of a list are started, for messages.
pub(crate) fn usage_list(schemes: &[Scheme]) -> String {
    let usages: Vec<String> = schemes.iter().map(|s| s.usage()).collect();
    match usages.split_last() {
        None => "no scheme is known here".to_string(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

impl PartialEq for Scheme {
    fn eq(&self, other: &Scheme) -> bool {
        self.name == other.name
    }
}

impl Eq for Scheme {}

impl Hash for Scheme {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl PartialOrd for Scheme {
    fn partial_cmp(&self, other: &Scheme) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scheme {
    fn cmp(&self, other: &Scheme) -> Ordering {
        self.name.cmp(other.name)
    }
}

impl fmt::Debug for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scheme({})", self.name)
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name)
    }
}
