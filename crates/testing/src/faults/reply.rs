//! [`ReplyDrop`]: the handle of a one-shot "lose the next reply" fault.

use std::fmt;
use std::sync::Arc;

use super::control::DropState;

/// An armed [`FaultProxy::drop_next_reply`](super::FaultProxy::drop_next_reply): the next
/// chunk that arrives from the upstream on any connection is discarded, and that
/// connection stays frozen (nothing forwarded either way, nothing closed) while this handle
/// lives. Releasing or dropping the handle lets the proxy reset the connection (RST to the
/// client, upstream closed).
///
/// A handle released before any reply arrived disarms the fault.
pub struct ReplyDrop {
    state: Arc<DropState>,
}

impl ReplyDrop {
    pub(super) fn new(state: Arc<DropState>) -> Self {
        ReplyDrop { state }
    }

    /// Resolves once a reply has been discarded. Both Redis and PostgreSQL answer only after
    /// executing a command, so from then on the server has executed the request whose reply
    /// the client will never see. Waits for as long as no reply comes: wrap it in
    /// `tokio::time::timeout`.
    pub async fn dropped(&self) {
        let mut dropped = self.state.dropped.subscribe();
        // The sender lives in `self.state`, so the wait cannot end with an error.
        let _ = dropped.wait_for(|d| *d).await;
    }

    /// Whether a reply has been discarded yet.
    pub fn is_dropped(&self) -> bool {
        *self.state.dropped.borrow()
    }

    /// Lets the proxy reset the frozen connection now (the same as dropping the handle,
    /// written out so a test says what it means).
    pub fn release(self) {
        drop(self);
    }
}

impl Drop for ReplyDrop {
    fn drop(&mut self) {
        self.state.released.send_replace(true);
    }
}

impl fmt::Debug for ReplyDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyDrop")
            .field("dropped", &self.is_dropped())
            .finish()
    }
}
