//! Group commit: one writer thread per open database runs the write calls queued for it,
//! as many as are waiting, in one redb write transaction.
//!
//! Why: redb admits one write transaction at a time and each commit has a fixed cost
//! (page bookkeeping, checksums, the `fsync` of `Immediate` durability). A job per call on
//! the blocking pool made up to 16 pool threads queue on redb's write slot, with several
//! context switches per call; one thread committing whatever is queued pays the fixed cost
//! once per group instead.
//!
//! How: a call sends a [`Job`] and awaits its oneshot. The writer blocks for one job, takes
//! whatever else is queued (at most [`MAX_GROUP`]), and runs them in arrival order in one
//! transaction with one sweep and one commit. Each call is answered only after that commit
//! returned, so every call of a group takes effect at the one instant of the commit, which
//! lies after the call was made and before it is answered: each call stays linearizable
//! and all or nothing, and `Immediate` durability still means fsync'd before answered.
//!
//! A call whose closure fails must fail alone with its writes undone. redb's savepoints
//! cannot help: one can only be taken before the transaction opens a table, not between
//! two calls. So the group's transaction is aborted and the group run again, one call per
//! transaction (job closures are `Fn` for that); a failure of the transaction itself
//! (begin, sweep, commit) is every call's error.
//!
//! A call whose caller stopped waiting (its future was dropped: a timeout, a runtime shut
//! down) before its group starts is skipped: it was never answered, so nothing
//! acknowledged is lost, and work given up on does not pile up.
//!
//! Lifetime: the store holds the channel's only sender, and every caller borrows the store
//! while it waits. Dropping the store closes the channel; the writer takes what is still
//! queued (calls given up on, so skipped), then exits, and the store joins it before the
//! flusher stops and the file closes. The thread is a plain thread, so writes work the same
//! inside and outside a tokio runtime.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use state_core::{ErrorKind, Result, StateError};
use tokio::sync::{mpsc, oneshot};

use crate::write::{Core, Failure, Writer};

#[cfg(test)]
mod tests;

/// The most calls one transaction commits.
pub(crate) const MAX_GROUP: usize = 256;

/// How many calls may wait for the writer. Bounded, although each caller awaits its answer,
/// because a cancelled caller (a timeout) stops awaiting but leaves its job queued: without
/// a bound, a caller that keeps timing out could queue jobs faster than they commit.
/// A full queue makes callers wait for room (cancel-safe: nothing is sent then).
const QUEUE_CAPACITY: usize = 4 * MAX_GROUP;

/// One write call, as the writer thread sees it.
pub(crate) trait Job: Send {
    /// How many expired entries the call's transaction should reclaim.
    fn sweep(&self) -> usize;
    /// Whether the caller has stopped waiting (its future was dropped).
    fn abandoned(&self) -> bool;
    /// Runs the call's writes in `w`, keeping its result for [`Job::answer`]. Runs again
    /// (in a fresh transaction) when another call of its group failed.
    fn run(&mut self, w: &mut Writer<'_>) -> Result<()>;
    /// Sends the kept result, or `outcome`'s error, to the caller.
    fn answer(self: Box<Self>, outcome: Result<()>);
}

struct Call<T, F> {
    f: F,
    sweep: usize,
    out: Option<T>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: Fn(&mut Writer<'_>) -> Result<T> + Send,
{
    fn sweep(&self) -> usize {
        self.sweep
    }

    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }

    fn run(&mut self, w: &mut Writer<'_>) -> Result<()> {
        self.out = None;
        self.out = Some((self.f)(w)?);
        Ok(())
    }

    fn answer(self: Box<Self>, outcome: Result<()>) {
        let Call { out, reply, .. } = *self;
        let result = outcome.and_then(|()| {
            out.ok_or_else(|| {
                StateError::new(
                    ErrorKind::Backend,
                    "the redb writer committed a write call without its result \
                     (a bug in state-embedded); the write was applied",
                )
            })
        });
        // A caller that stopped waiting needs no answer.
        let _ = reply.send(result);
    }
}

/// How group commit is doing, for tests and operators; see [`crate::RedbBackend::write_stats`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Write calls the writer thread ran (and answered), since the file was opened in this
    /// process. Imports are not counted: each runs in its own transaction.
    pub calls: u64,
    /// Write transactions the writer thread committed. `calls / commits` is the mean group.
    pub commits: u64,
    /// Groups rolled back and run again one call per transaction because a call failed.
    pub split_groups: u64,
    /// Calls skipped because their caller stopped waiting before their group started.
    pub abandoned: u64,
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    commits: AtomicU64,
    split_groups: AtomicU64,
    abandoned: AtomicU64,
}

fn bump(counter: &AtomicU64, by: usize) {
    counter.fetch_add(u64::try_from(by).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// The callers' end of a store's writer thread.
pub(crate) struct WriterThread {
    /// `None` once stopped; the only sender, so dropping it closes the channel.
    queue: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
}

impl WriterThread {
    pub(crate) fn start(core: Arc<Core>) -> Result<WriterThread> {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        let counters = Arc::new(Counters::default());
        let shared = counters.clone();
        let thread = std::thread::Builder::new()
            .name("redb-writer".into())
            .spawn(move || writer_loop(&core, jobs, &shared))
            .map_err(|e| {
                StateError::new(
                    ErrorKind::Backend,
                    format!("cannot start the redb writer thread: {e}"),
                )
                .with_source(e)
            })?;
        Ok(WriterThread {
            queue: Some(queue),
            thread: Some(thread),
            counters,
        })
    }

    /// Runs `f` in a write transaction of the writer thread, possibly with other calls, and
    /// returns its result once that transaction has committed. `f` may run more than once
    /// (in rolled-back transactions first); only its last run commits.
    pub(crate) async fn write<T, F>(&self, sweep: usize, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut Writer<'_>) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job> = Box::new(Call {
            f,
            sweep,
            out: None,
            reply,
        });
        let Some(queue) = &self.queue else {
            return Err(closed());
        };
        if queue.send(job).await.is_err() {
            return Err(closed());
        }
        answer.await.unwrap_or_else(|_| {
            Err(StateError::new(
                ErrorKind::Backend,
                "the redb writer thread stopped (it panicked) before answering this write \
                 call; it was most likely rolled back: read the key before trying again",
            )
            .with_outcome_unknown())
        })
    }

    pub(crate) fn stats(&self) -> WriteStats {
        let c = &self.counters;
        WriteStats {
            calls: c.calls.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            split_groups: c.split_groups.load(Ordering::Relaxed),
            abandoned: c.abandoned.load(Ordering::Relaxed),
        }
    }

    /// How many calls wait in the queue, not yet taken by the writer.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queue
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity())
    }

    /// Closes the queue and waits until the writer has run every queued call and exited.
    pub(crate) fn stop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            // A job holding the last store handle would drop it on the writer thread itself,
            // which cannot join itself; it exits once this job returns and the queue is empty.
            if thread.thread().id() == std::thread::current().id() {
                return;
            }
            // The writer holds a database handle: it must be gone before the file closes.
            let _ = thread.join();
        }
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        self.stop();
    }
}

fn closed() -> StateError {
    StateError::new(
        ErrorKind::Backend,
        "the redb writer thread has stopped (the database is closing); the write was not applied",
    )
}

fn writer_loop(core: &Core, mut jobs: mpsc::Receiver<Box<dyn Job>>, counters: &Counters) {
    let mut group: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_GROUP);
    // Returns 0 only once the channel is closed and empty: every queued call has run.
    while jobs.blocking_recv_many(&mut group, MAX_GROUP) > 0 {
        let queued = group.len();
        group.retain(|job| !job.abandoned());
        bump(&counters.abandoned, queued - group.len());
        if group.is_empty() {
            continue;
        }
        let ran = catch_unwind(AssertUnwindSafe(|| {
            run_group(core, &mut group, counters);
        }));
        if ran.is_err() {
            // The unanswered jobs are dropped below, which tells their callers; the writer
            // lives on for later calls. The expiry hint may be stale: recheck it.
            core.reset_expiry_hint();
        }
        group.clear();
    }
}

/// Runs `group` in one transaction, or one call per transaction if a call fails; answers
/// every call.
fn run_group(core: &Core, group: &mut Vec<Box<dyn Job>>, counters: &Counters) {
    bump(&counters.calls, group.len());
    let sweep = group.iter().map(|job| job.sweep()).max().unwrap_or(0);
    let outcome = core.transact(sweep, |w| group.iter_mut().try_for_each(|job| job.run(w)));
    match outcome {
        Ok(()) => {
            bump(&counters.commits, 1);
            for job in group.drain(..) {
                job.answer(Ok(()));
            }
        }
        Err(Failure::Call(e)) if group.len() == 1 => {
            if let Some(job) = group.pop() {
                job.answer(Err(e));
            }
        }
        Err(Failure::Call(_)) => {
            bump(&counters.split_groups, 1);
            for mut job in group.drain(..) {
                let sweep = job.sweep();
                match core.transact(sweep, |w| job.run(w)) {
                    Ok(()) => {
                        bump(&counters.commits, 1);
                        job.answer(Ok(()));
                    }
                    Err(Failure::Call(e) | Failure::Frame(e)) => job.answer(Err(e)),
                }
            }
        }
        Err(Failure::Frame(e)) => {
            let mut jobs = group.drain(..);
            let first = jobs.next();
            for job in jobs {
                job.answer(Err(copy_error(&e)));
            }
            if let Some(job) = first {
                job.answer(Err(e));
            }
        }
    }
}

/// The same error for another call of a failed group (the source goes to one call only).
fn copy_error(e: &StateError) -> StateError {
    let copy = StateError::new(e.kind(), e.message());
    if e.outcome_unknown() {
        copy.with_outcome_unknown()
    } else {
        copy
    }
}
