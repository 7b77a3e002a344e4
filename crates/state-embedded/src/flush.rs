//! `Eventual` durability: commits skip the `fsync`, and a flusher thread makes them durable
//! with one `fsync`'d empty commit per interval.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use redb::Database;
use state_core::{Result, StateError};

use crate::error::redb;

/// One empty commit with `fsync`: redb then holds every earlier commit durably.
pub(crate) fn flush(db: &Database) -> Result<()> {
    let txn = db
        .begin_write()
        .map_err(|e| redb("begin the flush transaction", e))?;
    txn.commit().map_err(|e| redb("flush to disk", e))
}

#[derive(Debug, Default)]
pub(crate) struct FlushState {
    /// Non-durable commits acknowledged so far.
    pub(crate) commits: AtomicU64,
    /// How many of them are known durable.
    pub(crate) durable: AtomicU64,
    stop: Mutex<bool>,
    wake: Condvar,
}

/// The group-commit thread of `Eventual` durability.
pub(crate) struct Flusher {
    pub(crate) state: Arc<FlushState>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    pub(crate) fn start(db: Arc<Database>, interval: Duration) -> Result<Flusher> {
        let state = Arc::new(FlushState::default());
        let shared = state.clone();
        let thread = std::thread::Builder::new()
            .name("redb-flusher".into())
            .spawn(move || flusher_loop(&db, &shared, interval))
            .map_err(|e| {
                StateError::new(
                    state_core::ErrorKind::Backend,
                    format!("cannot start the redb flusher thread: {e}"),
                )
                .with_source(e)
            })?;
        Ok(Flusher {
            state,
            thread: Some(thread),
        })
    }

    pub(crate) fn synced_up_to(&self, commits: u64) {
        self.state.durable.fetch_max(commits, Ordering::AcqRel);
    }

    pub(crate) fn stop(&mut self) {
        *self
            .state
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = true;
        self.state.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            // The flusher holds a database handle: it must be gone before the file closes.
            let _ = thread.join();
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.stop();
    }
}

fn flusher_loop(db: &Database, state: &FlushState, interval: Duration) {
    let mut stopped = state.stop.lock().unwrap_or_else(PoisonError::into_inner);
    while !*stopped {
        stopped = state
            .wake
            .wait_timeout(stopped, interval)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
        let target = state.commits.load(Ordering::Acquire);
        if target > state.durable.load(Ordering::Acquire) {
            drop(stopped);
            // A failed flush is retried on the next tick; pending_flush() stays true.
            if flush(db).is_ok() {
                state.durable.fetch_max(target, Ordering::AcqRel);
            }
            stopped = state.stop.lock().unwrap_or_else(PoisonError::into_inner);
        }
    }
}
