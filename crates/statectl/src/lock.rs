//! `statectl lock run NAME [--ttl D] [--wait D] -- COMMAND…`: a command run under a
//! distributed lock, with the lease kept alive by a watchdog while it runs.

use std::process::ExitStatus;
use std::sync::Arc;

use state_core::{ErrorKind, LockOptions, parse_duration};
use state_lock::WatchedGuard;
use tokio::process::Command;

use crate::cli::LockCommand;
use crate::error::CliError;

/// Runs one lock subcommand; `Err(CliError::Child(code))` carries the command's status.
pub async fn run(url: &str, command: &LockCommand) -> Result<(), CliError> {
    let LockCommand::Run {
        name,
        ttl,
        wait,
        command,
    } = command;
    let ttl = parse_duration(ttl)?;
    let wait = parse_duration(wait)?;
    let Some((program, args)) = command.split_first() else {
        return Err(CliError::Usage(
            "lock run needs a command after `--`".into(),
        ));
    };
    let options = LockOptions::default().with_wait_timeout(wait);
    let registry = crate::backends::registry();
    let lock = registry
        .connect_lock_url(registry.parse(url)?, options)
        .await?;
    let guard = lock.acquire(name, ttl).await.map_err(|e| match e.kind() {
        ErrorKind::Timeout => CliError::LockBusy(e.to_string()),
        _ => e.into(),
    })?;
    let token = guard.fencing_token();
    let watched = WatchedGuard::new(Arc::clone(&lock), guard, ttl);

    let shown = program.to_string_lossy().into_owned();
    let mut child = Command::new(program)
        .args(args)
        .env("STATE_FENCING_TOKEN", token.0.to_string())
        .env("STATE_LOCK_NAME", name)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!("statectl: cannot run `{shown}` ({e})");
            CliError::Child(code)
        })?;

    let status = tokio::select! {
        status = child.wait() => status,
        () = watched.lost() => {
            // Someone else may hold the lock now: the command must not go on.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(CliError::Backend(format!(
                "lock `{name}` was lost while `{shown}` ran (its lease could not be extended \
                 in time); the command was killed"
            )));
        }
    };
    let status =
        status.map_err(|e| CliError::Backend(format!("waiting for `{shown}` failed ({e})")))?;
    match watched.release().await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotOwner => {
            return Err(CliError::Backend(format!(
                "lock `{name}` was lost before `{shown}` finished; its work may overlap \
                 another holder's"
            )));
        }
        // The command finished under the lock; a failed release only delays the next
        // holder until the lease runs out.
        Err(e) => eprintln!(
            "statectl: warning: releasing lock `{name}` failed ({e}); it frees itself when its lease runs out"
        ),
    }
    match exit_code(status) {
        0 => Ok(()),
        code => Err(CliError::Child(code)),
    }
}

/// The shell's convention: the exit code, or 128 + the signal that ended the process.
fn exit_code(status: ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code & 0xff).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + (signal & 0x7f)).unwrap_or(1);
        }
    }
    1
}
