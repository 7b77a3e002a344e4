//! `statectl checkpoint run`: the checkpoint coordinator as a process, until SIGTERM or
//! Ctrl-C.
//!
//! The coordinator runs its schedule in the background; this loop watches its stats and
//! reports what changed: each committed checkpoint's id on stdout, failures and leadership
//! on stderr.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use state_checkpoint::{
    CheckpointCoordinator, CheckpointOptions, CheckpointStats, CheckpointStore,
};
use tokio::time::MissedTickBehavior;

use super::warn;
use crate::backends;
use crate::error::CliError;

/// How often the stats are read for news.
const POLL: Duration = Duration::from_millis(100);

/// Runs the coordinator of the `--url` backend into `store` until a signal ends it.
pub async fn run(
    url: Option<&str>,
    store: Arc<dyn CheckpointStore>,
    options: CheckpointOptions,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    // Before anything else: from here on a SIGTERM means "shut down cleanly".
    let mut stop = Stop::listen()?;
    let place = store.describe();
    let backend = backends::open(url).await?;
    let coordinator = match CheckpointCoordinator::new(Arc::clone(&backend), store, options) {
        Ok(coordinator) => coordinator,
        Err(e) => {
            backends::close(&backend).await;
            return Err(e.into());
        }
    };
    let gauges = match backends::collect_gauges(&backend).await {
        Ok(gauges) => gauges,
        Err(e) => {
            backends::close(&backend).await;
            return Err(e);
        }
    };
    let options = coordinator.options();
    let led = options.lock().is_some();
    eprintln!(
        "statectl: checkpoint run: every {:?} into {place}, keeping {}{}; stop with SIGTERM \
         or Ctrl-C",
        options.interval(),
        options.keep(),
        if led {
            format!(", while holding the lock `{}`", options.lock_name())
        } else {
            String::new()
        }
    );
    let mut report = Report::new(led);
    let watched = match coordinator.start() {
        Ok(()) => watch(&coordinator, &mut stop, &mut report, out).await,
        Err(e) => Err(e.into()),
    };
    if coordinator.stats().in_progress {
        eprintln!("statectl: stopping: finishing the checkpoint in flight");
    }
    let shutdown = coordinator.shutdown().await;
    // A checkpoint finished while shutting down is reported too; the lock was released
    // on purpose, which is no news.
    report.led = false;
    let last = report.news(&coordinator.stats(), out);
    if let Some(gauges) = gauges {
        gauges.stop().await;
    }
    drop(coordinator);
    backends::close(&backend).await;
    watched?;
    shutdown?;
    last
}

/// Reports news every [`POLL`] until a signal arrives.
async fn watch(
    coordinator: &CheckpointCoordinator,
    stop: &mut Stop,
    report: &mut Report,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.signalled() => return Ok(()),
            _ = tick.tick() => report.news(&coordinator.stats(), out)?,
        }
    }
}

/// What has been reported so far.
struct Report {
    /// Whether leadership is elected (`--lock-url`), so worth reporting.
    led: bool,
    completed: u64,
    failed: u64,
    last_error: Option<String>,
    leader: Option<u64>,
}

impl Report {
    fn new(led: bool) -> Self {
        Report {
            led,
            completed: 0,
            failed: 0,
            last_error: None,
            leader: None,
        }
    }

    /// Prints what changed since the last call: a committed checkpoint's id on stdout (the
    /// last one, should several have completed since), a failure or a leadership change on
    /// stderr.
    fn news(&mut self, stats: &CheckpointStats, out: &mut dyn Write) -> Result<(), CliError> {
        if self.led && stats.leader_token != self.leader {
            match stats.leader_token {
                Some(token) => eprintln!(
                    "statectl: leading: this process takes the checkpoints (fencing token \
                     {token})"
                ),
                None => eprintln!(
                    "statectl: no longer leading: the lease was lost; another process may \
                     lead now"
                ),
            }
            self.leader = stats.leader_token;
        }
        if stats.completed > self.completed {
            if let Some(id) = stats.last_id {
                writeln!(out, "{id}")?;
                out.flush()?;
            }
            self.completed = stats.completed;
        }
        let error_is_new = stats.last_error.is_some() && stats.last_error != self.last_error;
        if stats.failed > self.failed {
            let why = stats.last_error.as_deref().unwrap_or("no reason was given");
            eprintln!("statectl: a checkpoint failed ({why}); the schedule goes on");
            self.failed = stats.failed;
        } else if error_is_new && let Some(why) = &stats.last_error {
            warn(why);
        }
        self.last_error.clone_from(&stats.last_error);
        Ok(())
    }
}

/// SIGTERM and SIGINT (Ctrl-C), listened to from the start so that none is missed between
/// two waits.
struct Stop {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> Result<Self, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind| {
                signal(kind).map_err(|e| {
                    CliError::Backend(format!("cannot listen for SIGTERM and SIGINT ({e})"))
                })
            };
            Ok(Stop {
                terminate: listen(SignalKind::terminate())?,
                interrupt: listen(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Stop {})
    }

    async fn signalled(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
