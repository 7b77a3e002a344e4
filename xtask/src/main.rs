//! `cargo xtask`: the project's automation (the rust-analyzer pattern: a `publish = false`
//! crate behind a `.cargo/config.toml` alias, with few dependencies).
//!
//! ```text
//! cargo xtask services up|status|down   make sure Redis and PostgreSQL answer on loopback
//! cargo xtask test-all [--cases N]      services up, then every test of every crate
//! cargo xtask ci                        fmt, clippy, containers check, docs, test-all
//! cargo xtask bench …                   benchmarks against the raw engines
//! cargo xtask migrate --url URL         apply the PostgreSQL migrations
//! ```

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod migrate;
mod services;
mod test_all;
mod util;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Project automation",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Make sure Redis (127.0.0.1:6379) and PostgreSQL (127.0.0.1:5432) answer.
    Services {
        #[command(subcommand)]
        action: services::Action,
    },
    /// Start the services, then run every crate's tests and doc tests.
    TestAll(test_all::Options),
    /// Everything CI checks: fmt, clippy, the containers feature, docs, then test-all.
    Ci(test_all::Options),
    /// Benchmarks: ours against the raw engines (arguments go to the bench task).
    Bench {
        /// Arguments for the bench task (`cargo xtask bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Apply the PostgreSQL migrations (arguments go to the migrate task).
    Migrate {
        /// Arguments for the migrate task, e.g. `--url postgres://…`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Services { action } => services::run(action),
        Task::TestAll(options) => test_all::run(&options),
        Task::Ci(options) => ci::run(&options),
        Task::Bench { args } => bench::run(&args),
        Task::Migrate { args } => migrate::run(&args),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
