//! The command line (DESIGN.md "statectl": a public interface, keep it stable).

use bench_plan::plan::ShapeArgs;
use clap::{Parser, Subcommand};

/// Reads and writes distributed state from a shell, on any backend picked by URL.
///
/// Exit codes: 0 success; 1 the key or checkpoint does not exist (get, ttl, checkpoint
/// restore/delete); 2 a bad URL, option or input; 3 the backend failed (unreachable server,
/// I/O error, locked or corrupt file, a lock lost while its command ran); 75 `lock run`
/// could not get the lock within --wait. `lock run` otherwise exits with its command's
/// status (128 + N if a signal N ended it).
#[derive(Debug, Parser)]
#[command(name = "statectl", version, max_term_width = 100)]
pub struct Cli {
    /// The backend: memory://, redb:PATH, redis://…, postgres://… [default: $STATE_URL, else
    /// redb:.statectl/state.redb]
    // The env value is hidden from --help: it may hold a password.
    #[arg(long, global = true, env = "STATE_URL", hide_env_values = true)]
    pub url: Option<String>,
    /// Serve Prometheus metrics of every operation at http://HOST:PORT/metrics while the
    /// command runs
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Stores VALUE under KEY (any old TTL is cleared unless --ttl is given).
    Put {
        /// The key (its UTF-8 bytes).
        key: String,
        /// The value (its UTF-8 bytes).
        value: String,
        /// Expire after this long: 1500ms, 30s, 2m…
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
    /// Prints the value of KEY and a newline; exit 1 if missing.
    Get {
        /// The key.
        key: String,
    },
    /// Deletes KEY and prints how many keys were deleted (0 or 1).
    Del {
        /// The key.
        key: String,
    },
    /// Prints KEY's remaining lifetime in ms, or `persistent`; exit 1 if missing.
    Ttl {
        /// The key.
        key: String,
    },
    /// Lists the keys that start with PREFIX, one per line.
    ///
    /// PREFIX is literal (no glob: `a*` matches keys starting with `a*`). Printable UTF-8 is
    /// written as is; `\`, tab, newline and CR as `\\`, `\t`, `\n`, `\r`; other control
    /// characters and bytes that are not UTF-8 as `\xNN`.
    Scan {
        /// The prefix (default: every key).
        #[arg(default_value = "")]
        prefix: String,
        /// Print `key<TAB>value` (values escaped the same way).
        #[arg(long)]
        values: bool,
    },
    /// Prints how many keys start with PREFIX.
    Count {
        /// The prefix (default: every key).
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Measures throughput and latency (p50/p99/p99.9) of the backend.
    ///
    /// Keys are `bench:XXXXXXXX:0000000042` under a prefix unique to the run, removed at
    /// the end. Batch workloads count ops in keys (entries) and report latency per batch.
    /// A failed call is counted by kind of error and the run goes on (a failover is ridden
    /// out); the counts are printed after the table.
    Bench(BenchArgs),
    /// Creates, lists, restores and deletes server-side checkpoints (postgres:// only).
    ///
    /// A checkpoint copies every live entry under the URL's key prefix inside the server;
    /// restoring replaces that prefix's entries with it in one transaction, each keeping its
    /// absolute expiry.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Runs a command while holding a distributed lock (redis://…, postgres://…).
    #[command(subcommand)]
    Lock(LockCommand),
}

/// `statectl bench …`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The workload's shape, the same options as `bench-ref`.
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Stop at the first failed call with its error (exit 3), instead of counting failures
    /// by kind and going on.
    #[arg(long)]
    pub fail_fast: bool,
}

/// `statectl lock …`.
#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Takes lock NAME (waiting up to --wait), runs COMMAND while extending the lease every
    /// TTL/3, releases the lock, and exits with COMMAND's status.
    ///
    /// COMMAND gets the lock's fencing token in STATE_FENCING_TOKEN (and the name in
    /// STATE_LOCK_NAME): pass it to fenced writes. If the lease is lost while COMMAND runs
    /// (the lock service was unreachable for a whole TTL), COMMAND is killed and statectl
    /// exits 3. On PostgreSQL the URL's `lock_mode=session|lease` picks the lock kind.
    Run {
        /// The lock's name.
        name: String,
        /// The lease: how long the lock outlives a statectl that dies without releasing it.
        #[arg(long, value_name = "DURATION", default_value = "30s")]
        ttl: String,
        /// How long to wait for the lock before giving up with exit code 75.
        #[arg(long, value_name = "DURATION", default_value = "30s")]
        wait: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },
}

/// `statectl checkpoint …`.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Takes a checkpoint and prints its id.
    Create,
    /// Prints `id<TAB>created_at (RFC 3339, UTC)<TAB>rows<TAB>bytes`, oldest first.
    List,
    /// Replaces the entries with checkpoint ID's; exit 1 if there is no such checkpoint.
    Restore {
        /// The checkpoint id (from `create` or `list`).
        id: i64,
    },
    /// Deletes checkpoint ID; exit 1 if there is no such checkpoint.
    Delete {
        /// The checkpoint id.
        id: i64,
    },
}
