//! The command line (DESIGN.md "statectl": a public interface, keep it stable).

use bench_plan::plan::ShapeArgs;
use clap::{Parser, Subcommand};

/// Reads and writes distributed state from a shell, on any backend picked by URL.
///
/// Exit codes: 0 success; 1 the key or checkpoint does not exist (get, ttl, checkpoint
/// latest/restore/delete/verify); 2 a bad URL, option or input; 3 the backend failed (unreachable
/// server, I/O error, locked or corrupt file or checkpoint, a lock lost while its command
/// ran); 75 `lock run` could not get the lock within --wait, or `checkpoint create
/// --lock-url` found another leader. `lock run` otherwise exits with its command's status
/// (128 + N if a signal N ended it).
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
    /// Takes, lists, verifies, restores and deletes checkpoints, or runs the checkpoint
    /// coordinator.
    ///
    /// With --store URL (file:///absolute/dir, or postgres://…?schema=S&table=T for a table
    /// in a PostgreSQL database) checkpoints are portable files, on every backend: a
    /// checkpoint covers every live entry under the --url (its prefix=, schema=…) and a
    /// restore replaces them all with the checkpoint's, each keeping its absolute expiry
    /// (nothing expired is revived). Without --store only a postgres:// --url works: its
    /// checkpoints are copies inside the server, under the URL's key prefix (the fast path:
    /// no row leaves the server), restorable into that PostgreSQL namespace only.
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
    ///
    /// With --store nothing else is deleted: retention is `checkpoint run`'s (--keep).
    Create {
        /// Where checkpoints are kept.
        #[command(flatten)]
        store: StoreArg,
        /// With --store: take it only while holding the lock a `checkpoint run` on the same
        /// store leads with (exit 75 if another holds it).
        #[command(flatten)]
        leader: LeaderArgs,
    },
    /// Prints `id<TAB>created_at (RFC 3339, UTC)<TAB>rows<TAB>bytes`, oldest first.
    ///
    /// With --store, `bytes` is the uncompressed size of the entries as encoded in the file,
    /// and a damaged manifest is a warning on stderr (its checkpoint is not listed: it does
    /// not exist).
    List {
        /// Where checkpoints are kept.
        #[command(flatten)]
        store: StoreArg,
    },
    /// Prints the newest valid checkpoint as `list` prints its row; exit 1 if there is none.
    ///
    /// With --store, a damaged manifest is a warning on stderr and is passed over (its
    /// checkpoint does not exist); the file itself is not read (`verify` checks it).
    Latest {
        /// Where checkpoints are kept.
        #[command(flatten)]
        store: StoreArg,
    },
    /// Replaces the entries with checkpoint ID's; exit 1 if there is no such checkpoint.
    ///
    /// `latest` restores the newest checkpoint that can be restored and prints its id: a
    /// damaged one is skipped for the next older, with a warning on stderr naming it. With
    /// --store the whole file is checked before anything is written, so a damaged one
    /// changes nothing.
    Restore {
        /// The checkpoint id (from `create` or `list`), or `latest`.
        id: String,
        /// Where checkpoints are kept.
        #[command(flatten)]
        store: StoreArg,
    },
    /// Deletes checkpoint ID; exit 1 if there is no such checkpoint.
    Delete {
        /// The checkpoint id.
        id: String,
        /// Where checkpoints are kept.
        #[command(flatten)]
        store: StoreArg,
    },
    /// Checks checkpoint ID without restoring it (--store only) and prints
    /// `ID<TAB>ok<TAB>key_prefix=P` (`key_prefix=unrecorded` for a manifest from before
    /// prefixes were recorded).
    ///
    /// Reads the whole file: every frame's checksum, the footer's hash and counts, the file
    /// against its manifest, and every entry against the --url backend (its size limits,
    /// metadata). A damaged checkpoint exits 3 naming the file; exit 1 if there is no such
    /// checkpoint.
    Verify {
        /// The checkpoint id.
        id: String,
        /// Where checkpoints are kept.
        #[command(flatten)]
        store: StoreArg,
    },
    /// Runs the checkpoint coordinator until SIGTERM or Ctrl-C (--store only).
    ///
    /// Takes a checkpoint of --url into --store every --interval (the first one interval
    /// after the start) and keeps the newest --keep. Prints each checkpoint's id on stdout
    /// as it is committed; failures go to stderr and the schedule goes on. With --lock-url,
    /// of the processes given the same store and lock only the lock's holder writes, each
    /// checkpoint named after its fencing token; a follower tries for the lock every
    /// --interval (or --lock-ttl if shorter), so it takes over one try after a dead leader's
    /// lease runs out, and checkpoints at once. A leader killed mid-checkpoint leaves no
    /// listed checkpoint, only a file the sweep removes after an hour. On SIGTERM or Ctrl-C
    /// a checkpoint in flight is finished (up to 60 s), the lock released, and it exits 0.
    Run {
        /// Where checkpoints are kept: file:///absolute/dir or postgres://….
        #[arg(long, value_name = "URL")]
        store: String,
        /// Time between checkpoints, start to start.
        #[arg(long, value_name = "DURATION", default_value = "5m")]
        interval: String,
        /// How many checkpoints to keep (the newest; older ones are deleted after each
        /// checkpoint).
        #[arg(long, value_name = "N", default_value_t = 5)]
        keep: usize,
        /// The least time between the end of one checkpoint and the start of the next.
        #[arg(long, value_name = "DURATION", default_value = "10s")]
        min_pause: String,
        /// Leader election.
        #[command(flatten)]
        leader: LeaderArgs,
    },
}

/// `--store URL` of the checkpoint subcommands.
#[derive(Debug, clap::Args)]
pub struct StoreArg {
    /// Keep checkpoints as files in this store: `file:///absolute/dir`, or
    /// `postgres://[user@]host[:port]/db[?schema=S&table=T]` (a table, created on first use;
    /// default `public.state_checkpoint_files`). Object stores such as `s3://` are not built
    /// in yet.
    /// Without it: PostgreSQL's server-side checkpoints.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

/// Who may write to a checkpoint store: `--lock-url` and the lock's name and lease.
#[derive(Debug, clap::Args)]
pub struct LeaderArgs {
    /// Write checkpoints only while holding a lock of this lock service (redis://…,
    /// postgres://…); without it, run one writer per store.
    #[arg(long, value_name = "URL")]
    pub lock_url: Option<String>,
    /// The leader's lock (use one name per store).
    #[arg(long, value_name = "NAME", default_value = "state-checkpoint")]
    pub lock_name: String,
    /// The leader's lease, renewed every third of it: how long a dead leader blocks the
    /// others.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub lock_ttl: String,
}
