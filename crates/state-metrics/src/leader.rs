//! [`watch_leadership`]: a [`LeaderElector`]'s leadership as metrics.

use metrics::{counter, gauge};
use state_core::{Result, StateError};
use state_lock::{LeaderElector, Leadership};

use crate::names;

/// Records the leadership `elector` sees, until the elector is dropped:
/// `state_leader_is_leader{election}` is 1 while it leads and 0 otherwise, and
/// `state_leader_changes_total{election}` counts every change (elected, stepped down,
/// lease lost).
///
/// Changes closer together than the watch task runs count once: the elector's watch keeps
/// only the latest state.
///
/// `election` names the election in the labels: use a fixed name (the lock's, such as
/// `"nightly-compaction"`), never one made from data, or the series multiply. Install the
/// recorder first; the watch runs on the current tokio runtime (a `Config` error outside
/// one).
pub fn watch_leadership(
    election: impl Into<String>,
    elector: &LeaderElector,
) -> Result<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| StateError::config("state_metrics::watch_leadership needs a tokio runtime"))?;
    let election = election.into();
    let leading = gauge!(names::LEADER_IS_LEADER, "election" => election.clone());
    let changes = counter!(names::LEADER_CHANGES_TOTAL, "election" => election);
    let mut updates = elector.subscribe();
    let show = move |leadership: &Leadership| {
        let is_leader = matches!(leadership, Leadership::Leader { .. });
        leading.set(if is_leader { 1.0 } else { 0.0 });
    };
    show(&updates.borrow_and_update());
    Ok(runtime.spawn(async move {
        // Ends when the elector (the sender) is dropped.
        while updates.changed().await.is_ok() {
            changes.increment(1);
            show(&updates.borrow_and_update());
        }
    }))
}
