//! `cargo xtask`: the project's automation (the rust-analyzer pattern: a `publish = false`
//! crate behind a `.cargo/config.toml` alias, with few dependencies).
//!
//! ```text
//! cargo xtask services up|status|down   Redis and PostgreSQL on loopback, the Docker engine
//! cargo xtask test-all [--cases N]      services up, then every test of every crate and the
//!                                       container suites
//! cargo xtask test-all --matrix         the suites across backends, topologies and layers
//! cargo xtask ci                        fmt, clippy, docs, test-all, the matrix
//! cargo xtask bench …                   benchmarks against the raw engines
//! cargo xtask migrate --url URL         apply the PostgreSQL migrations
//! ```

#![forbid(unsafe_code)]

mod bench;
mod ci;
mod docker;
mod fuzz;
mod images;
mod matrix;
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
    /// Make sure Redis (127.0.0.1:6379), PostgreSQL (127.0.0.1:5432) and a Docker engine
    /// with local Redis/PostgreSQL images are there.
    Services {
        #[command(subcommand)]
        action: services::Action,
    },
    /// Start the services, then run every crate's tests, doc tests and the container
    /// suites; with --matrix, the suites across backends, topologies and layers instead.
    TestAll(test_all::Options),
    /// Everything CI checks: fmt, clippy, the containers feature, docs, test-all, the matrix.
    Ci(test_all::Options),
    /// Benchmarks: ours against the raw engines (arguments go to the bench task).
    Bench {
        /// Arguments for the bench task (`cargo xtask bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every `cargo fuzz` target for a while each (arguments go to the fuzz task).
    Fuzz {
        /// Arguments for the fuzz task, e.g. `--time 60s url config`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The Docker API version bridge `services up` starts (not for direct use).
    #[command(hide = true)]
    DockerBridge(docker::BridgeOptions),
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
        Task::Fuzz { args } => fuzz::run(&args),
        Task::Migrate { args } => migrate::run(&args),
        Task::DockerBridge(options) => docker::bridge(&options),
    };
    if let Err(e) = result {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}
