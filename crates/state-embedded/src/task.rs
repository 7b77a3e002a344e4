//! Running blocking redb work off the async runtime.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use state_core::{ErrorKind, Result, StateError};
use tokio::sync::oneshot;

/// Runs `f` on tokio's blocking pool (a plain thread outside a tokio runtime), so that a
/// commit's `fsync` or a wait for redb's single writer never stalls the runtime's workers.
pub(crate) fn spawn<T, F>(f: F) -> Task<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let job = move || {
        let _ = tx.send(f());
    };
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn_blocking(job);
        }
        Err(_) => {
            if let Err(e) = std::thread::Builder::new()
                .name("redb-worker".into())
                .spawn(job)
            {
                let (tx, rx) = oneshot::channel();
                let _ = tx.send(Err(StateError::new(
                    ErrorKind::Backend,
                    format!("cannot start a thread for a redb operation: {e}"),
                )
                .with_source(e)));
                return Task { rx };
            }
        }
    }
    Task { rx }
}

/// The result of a [`spawn`]ed job.
pub(crate) struct Task<T> {
    rx: oneshot::Receiver<Result<T>>,
}

impl<T> Future for Task<T> {
    type Output = Result<T>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<T>> {
        Pin::new(&mut self.rx).poll(cx).map(|received| {
            received.unwrap_or_else(|_| {
                Err(StateError::new(
                    ErrorKind::Backend,
                    "a redb worker stopped before finishing (panic or runtime shutdown); \
                     its transaction was rolled back",
                ))
            })
        })
    }
}
