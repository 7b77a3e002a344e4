#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod backends;
mod bench;
mod checkpoint;
mod cli;
mod commands;
mod error;
mod escape;
mod lock;

use std::io::{BufWriter, Write as _};
use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::error::CliError;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Backend(format!("cannot start the async runtime ({e})")))
        .and_then(|runtime| runtime.block_on(run(cli)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if let Some(message) = err.message() {
                eprintln!("statectl: {message}");
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// Help and version print as clap formats them; a usage error becomes one line on stderr
/// (exit 2), like every other error.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    let text = e.render().to_string();
    let mut line = String::new();
    for part in text.lines().map(str::trim) {
        if part.is_empty() || part.starts_with("For more information") {
            continue;
        }
        let part = part.strip_prefix("error: ").unwrap_or(part);
        if !line.is_empty() {
            line.push_str(if part.starts_with("Usage:") {
                "; "
            } else {
                " "
            });
        }
        line.push_str(part);
    }
    eprintln!("statectl: {line}; see statectl --help");
    ExitCode::from(2)
}

async fn run(cli: Cli) -> Result<(), CliError> {
    if let Some(addr) = &cli.metrics_addr {
        backends::serve_metrics(addr)?;
    }
    if let Command::Checkpoint(command) = &cli.command {
        // The default store is created only for a --store command: without one, the
        // embedded store is refused.
        let mut out = BufWriter::new(std::io::stdout().lock());
        let result = checkpoint::run(cli.url.as_deref(), command, &mut out).await;
        out.flush()?;
        return result;
    }
    if let Command::Lock(command) = &cli.command {
        // Locks need a lock service: the default embedded store is refused, not created.
        return lock::run(cli.url.as_deref().unwrap_or(backends::DEFAULT_URL), command).await;
    }
    let url = backends::resolve(cli.url.as_deref())?;
    let backend = backends::registry().connect_url(url.clone()).await?;
    let gauges = backends::collect_gauges(&backend).await?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    let b = &*backend;
    let result = match &cli.command {
        Command::Put { key, value, ttl } => commands::put(b, key, value, ttl.as_deref()).await,
        Command::Get { key } => commands::get(b, key, &mut out).await,
        Command::Del { key } => commands::del(b, key, &mut out).await,
        Command::Ttl { key } => commands::ttl(b, key, &mut out).await,
        Command::Scan { prefix, values } => commands::scan(b, prefix, *values, &mut out).await,
        Command::Count { prefix } => commands::count(b, prefix, &mut out).await,
        // Handled above: they need concrete types, not the registry's backend.
        Command::Checkpoint(_) | Command::Lock(_) => Ok(()),
        Command::Bench(args) => match bench::run(backend.clone(), &url, args).await {
            Ok(report) => {
                out.write_all(report.table().as_bytes())?;
                match &args.shape.json {
                    Some(path) => report.write_json(path).map_err(CliError::Usage),
                    None => Ok(()),
                }
            }
            Err(e) => Err(e),
        },
    };
    if let Some(gauges) = gauges {
        gauges.stop().await;
    }
    out.flush()?;
    // Close the store before the process exits, so an embedded file is released cleanly.
    drop(backend);
    result
}
