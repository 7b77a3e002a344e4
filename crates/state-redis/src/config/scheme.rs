//! The URL schemes this crate opens, as the registry and [`StateUrl::parse`] read them.
//!
//! [`StateUrl::parse`]: state_core::StateUrl::parse

use state_core::{Scheme, UrlShape};

/// `redis://[user:pass@]host:port[/db]`: one Redis server.
pub const REDIS: Scheme = Scheme::new("redis", UrlShape::hosts(6379, false));
/// `rediss://…`: one Redis server over TLS.
pub const REDISS: Scheme = Scheme::new("rediss", UrlShape::hosts(6379, false));
/// `redis+sentinel://host:port[,host:port…]/MASTER_NAME`: a primary found through Sentinels.
pub const REDIS_SENTINEL: Scheme = Scheme::new("redis+sentinel", UrlShape::hosts(26379, true));
/// `redis+cluster://host:port[,host:port…]`: a Redis Cluster, from its seed nodes.
pub const REDIS_CLUSTER: Scheme = Scheme::new("redis+cluster", UrlShape::hosts(6379, true));
/// Every scheme this crate opens, for [`StateUrl::parse`](state_core::StateUrl::parse) and the registry.
pub const SCHEMES: [Scheme; 4] = [REDIS, REDISS, REDIS_SENTINEL, REDIS_CLUSTER];
