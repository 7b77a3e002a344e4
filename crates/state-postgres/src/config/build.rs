//! The `with_*` builders of [`PostgresConfig`]. A bad value is noted and reported by
//! [`validate`](PostgresConfig::validate), so that chains never fail half-way.

use std::path::PathBuf;
use std::time::Duration;

use state_core::{Limits, Result, RetryPolicy};

use super::PostgresConfig;
use super::url::{parse_ssl_mode, parse_synchronous_commit};

impl PostgresConfig {
    fn note(mut self, problem: Result<()>) -> Self {
        if let (None, Err(err)) = (&self.problem, problem) {
            self.problem = Some(err.message().to_string());
        }
        self
    }

    /// The guide's pool size: `min` connections are opened at start, at most `max` are
    /// ever open.
    pub fn with_pool_size(mut self, min: u32, max: u32) -> Self {
        self.pool_min = min;
        self.pool_max = max;
        self
    }

    /// libpq's `sslmode`: `disable`, `allow`, `prefer` (the default), `require`,
    /// `verify-ca` or `verify-full`.
    pub fn with_ssl_mode(mut self, mode: &str) -> Self {
        match parse_ssl_mode(mode) {
            Ok(mode) => {
                self.ssl_mode = mode;
                self
            }
            Err(err) => self.note(Err(err)),
        }
    }

    /// The CA certificate (PEM file) that `verify-ca` and `verify-full` check the server
    /// against (libpq's `sslrootcert`).
    pub fn with_ssl_root_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ssl_root_cert = Some(path.into());
        self
    }

    /// The session's `synchronous_commit` (`on`, `off`, `local`, `remote_write`,
    /// `remote_apply`); the server's setting when not given. `off` acknowledges a write
    /// before its WAL reaches disk: a server crash (not a clean restart) may lose the last
    /// moments of acknowledged writes, never consistency.
    pub fn with_synchronous_commit(mut self, mode: &str) -> Self {
        match parse_synchronous_commit(mode) {
            Ok(mode) => {
                self.synchronous_commit = Some(mode);
                self
            }
            Err(err) => self.note(Err(err)),
        }
    }

    /// The schema holding the tables (default `public`); created if absent.
    pub fn with_schema(mut self, schema: &str) -> Self {
        self.schema = schema.to_string();
        self
    }

    /// The state table (default `state_entries`). Its companions are named after it:
    /// `{table}_fences`, `{table}_checkpoints`, `{table}_checkpoint_rows` and refinery's
    /// history `{table}_migrations`.
    pub fn with_table(mut self, table: &str) -> Self {
        self.table = table.to_string();
        self
    }

    /// The server-side `statement_timeout` of every connection (default 30s). The client
    /// gives up 5s after it, in case the server stops answering altogether.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// How long an operation waits for a free connection (default 10s).
    pub fn with_acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long opening one connection may take (default 10s).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How retryable errors are retried (default: 3 attempts, see [`RetryPolicy`]).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The guide's `retries(max_retries, base_delay, max_delay)` (the failover timeout is
    /// kept).
    pub fn with_retries(self, max_retries: u32, base_delay: Duration, max_delay: Duration) -> Self {
        let failover_timeout = self.retry.failover_timeout;
        self.with_retry(RetryPolicy {
            failover_timeout,
            ..RetryPolicy::new(max_retries, base_delay, max_delay)
        })
    }

    /// How long an operation waits for a server that is away (restarting, refusing
    /// connections, shutting down) before it reports the error: 30 s by default, zero to
    /// report at once. Only what may be sent again waits (see [`RetryPolicy`]).
    pub fn with_failover_timeout(mut self, timeout: Duration) -> Self {
        self.retry.failover_timeout = timeout;
        self
    }

    /// Namespaces every key under `prefix`.
    pub fn with_key_prefix(mut self, prefix: impl AsRef<[u8]>) -> Self {
        self.key_prefix = prefix.as_ref().to_vec();
        self
    }

    /// A TTL applied by writes that do not carry their own.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Key and value size limits (keys are capped at 2,000 bytes with the prefix, below
    /// PostgreSQL's btree entry limit).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether opening the backend applies pending migrations (default true). With false,
    /// run them beforehand with `cargo xtask migrate --url URL` or [`crate::migrate`].
    pub fn with_migrations(mut self, run: bool) -> Self {
        self.run_migrations = run;
        self
    }

    /// Deletes expired rows in the background every `interval` (they are invisible to
    /// reads at once either way; this reclaims their space).
    pub fn with_reaper(mut self, interval: Duration) -> Self {
        self.reaper_interval = Some(interval);
        self
    }

    /// Coalescing of concurrent point operations and batch reads: at most `max_in_flight`
    /// statements serve `get`, `put`, `put_with_ttl`, `compare_and_swap` and `batch_get`
    /// at once (default 2, capped at `pool_max`; URL parameter `coalesce=N`; 0 turns it
    /// off). A `batch_get` counts by its chunks of up to 1000 keys; a group's statement
    /// reads at most 1000 keys, point gets and batch chunks together.
    ///
    /// A call that finds one of those slots free is its own statement, sent at once, as
    /// without coalescing. Calls made while every slot is busy wait in a queue, and a
    /// background task sends all of them together as one set-based statement (the SQL of
    /// `batch_get` and `batch_put`, or an `UPDATE`/`INSERT` over the swaps' arrays) as
    /// soon as a slot frees, like a Redis client's auto-pipelining: no timer. A
    /// statement names a key once: a second swap of a key waits for the next one. Each statement runs after all its calls were made and
    /// before any is answered, so reads and writes stay linearizable; a put is
    /// acknowledged once its statement committed, and a statement's error is the error of
    /// every call in it.
    ///
    /// What it buys: fewer statements when many tasks share the backend. On a 2-core
    /// machine with 16 tasks, point gets went from about 0.75x of `pgbench -M prepared -c
    /// 16` to 1.1-1.3x, and puts from 0.95x to 1.3-1.45x; compare-and-swaps went from
    /// about 0.95x of one sqlx connection per task to 1.3x (16 tasks) and 2.8x (64), and
    /// batch reads of 100 keys at 64 tasks by about 1.2x. `batch_put` is not coalesced:
    /// a write's commit waits for the WAL flush, and fewer, larger statements left the
    /// server idle during those waits (0.6-0.8x). What it costs: a call that has
    /// to queue pays a hop to that task and back, and point operations use at most
    /// `max_in_flight` connections (the others stay free for everything else), so with
    /// few concurrent callers a low value can cost throughput: with 4 tasks, 2 slots were
    /// about 20% slower than none, 4 slots even. Must not exceed `pool_max`.
    pub fn with_coalescing(mut self, max_in_flight: usize) -> Self {
        self.coalesce = Some(max_in_flight);
        self
    }
}
