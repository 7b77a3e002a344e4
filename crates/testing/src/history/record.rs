//! Recording a concurrent history: one logical clock orders every invocation and
//! completion, so "A completed before B was invoked" is exact, not a wall-clock guess.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::op::{ClientId, Key, Op, OpId, Outcome};

/// One operation of a history: who asked, what, when, and how it ended.
///
/// Times are ticks of the recorder's logical clock: the invoke tick is taken before the
/// request is sent and the completion tick after the reply arrived, so the real effect
/// lies between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its position in the history.
    pub id: OpId,
    /// The client that issued it.
    pub client: ClientId,
    /// What was asked.
    pub op: Op,
    /// The tick at which it was invoked.
    pub invoke: u64,
    /// The tick at which it completed; `None` if it never did (then the outcome is
    /// [`Outcome::Unknown`]).
    pub complete: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = self
            .complete
            .map_or_else(|| "never".to_string(), |t| t.to_string());
        write!(
            f,
            "{:>7} c{:<3} [{:>7}, {:>7}] {} -> {}",
            self.id.to_string(),
            self.client,
            self.invoke,
            end,
            self.op,
            self.outcome
        )
    }
}

/// A finished history: every operation with its interval and outcome, in invoke order
/// when recorded by a [`Recorder`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    records: Vec<Record>,
}

impl History {
    /// An empty history, for writing one by hand.
    pub fn new() -> History {
        History::default()
    }

    /// Appends an operation with explicit ticks. Without a completion tick the outcome is
    /// recorded as [`Outcome::Unknown`], whatever `outcome` says: an operation that never
    /// completed may still take effect.
    pub fn push(
        &mut self,
        client: ClientId,
        op: Op,
        invoke: u64,
        complete: Option<u64>,
        outcome: Outcome,
    ) -> OpId {
        let id = OpId(self.records.len());
        let outcome = if complete.is_some() {
            outcome
        } else {
            Outcome::Unknown
        };
        self.records.push(Record {
            id,
            client,
            op,
            invoke,
            complete,
            outcome,
        });
        id
    }

    /// A history of these records (to edit a recorded one: `into_records`, change,
    /// `from_records`). Ids are renumbered to positions; a record without a completion
    /// tick becomes [`Outcome::Unknown`].
    pub fn from_records(records: Vec<Record>) -> History {
        let mut history = History::new();
        for r in records {
            history.push(r.client, r.op, r.invoke, r.complete, r.outcome);
        }
        history
    }

    /// The records, by id.
    pub fn into_records(self) -> Vec<Record> {
        self.records
    }

    /// Every operation, by id.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The operation with this id.
    pub fn get(&self, id: OpId) -> Option<&Record> {
        self.records.get(id.0)
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Every key some operation touched.
    pub fn keys(&self) -> BTreeSet<Key> {
        self.records.iter().flat_map(|r| r.op.keys()).collect()
    }
}

impl fmt::Display for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.records {
            writeln!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Records the operations of concurrent clients; shared by reference (or `Arc`) between
/// them.
///
/// One atomic counter is the clock; the mutex only guards the vector, and is held for a
/// push or an update, never across a request.
#[derive(Debug, Default)]
pub struct Recorder {
    clock: AtomicU64,
    records: Mutex<Vec<Record>>,
}

impl Recorder {
    /// An empty recorder whose clock starts at 0.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Record>> {
        // A panicking client leaves the vector consistent: every update is one assignment.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that `client` is about to send `op`; call it before sending. The outcome
    /// stays [`Outcome::Unknown`] until [`complete`](Self::complete).
    pub fn invoke(&self, client: ClientId, op: Op) -> OpId {
        let mut records = self.lock();
        // Ticking under the lock keeps ids in invoke order, which makes reports readable.
        let invoke = self.clock.fetch_add(1, Ordering::SeqCst);
        let id = OpId(records.len());
        records.push(Record {
            id,
            client,
            op,
            invoke,
            complete: None,
            outcome: Outcome::Unknown,
        });
        id
    }

    /// Records how operation `id` ended; call it after the reply arrived (or the client gave
    /// up, with [`Outcome::Unknown`]). A second completion of the same id is ignored.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        // The tick is taken before the lock: it must not be earlier than the reply, and
        // taking it here already is later.
        let at = self.clock.fetch_add(1, Ordering::SeqCst);
        let mut records = self.lock();
        if let Some(record) = records.get_mut(id.0)
            && record.complete.is_none()
        {
            record.complete = Some(at);
            record.outcome = outcome;
        }
    }

    /// A copy of what has been recorded so far; operations not yet completed are Unknown.
    pub fn history(&self) -> History {
        History {
            records: self.lock().clone(),
        }
    }

    /// The recorded history.
    pub fn into_history(self) -> History {
        History {
            records: self
                .records
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::op::Output;

    #[test]
    fn ticks_order_invocations_and_completions() {
        let rec = Recorder::new();
        let a = rec.invoke(0, Op::Put { key: 0, value: 1 });
        let b = rec.invoke(1, Op::Get { key: 0 });
        rec.complete(a, Outcome::Ok(Output::Done));
        rec.complete(a, Outcome::Failed);
        let h = rec.into_history();
        let (ra, rb) = (&h.records()[a.0], &h.records()[b.0]);
        assert_eq!((ra.invoke, ra.complete), (0, Some(2)));
        assert_eq!(
            ra.outcome,
            Outcome::Ok(Output::Done),
            "second completion ignored"
        );
        assert_eq!((rb.complete, &rb.outcome), (None, &Outcome::Unknown));
    }

    #[test]
    fn push_without_completion_is_unknown() {
        let mut h = History::new();
        let id = h.push(
            0,
            Op::Delete { key: 3 },
            5,
            None,
            Outcome::Ok(Output::Bool(true)),
        );
        assert_eq!(h.records()[id.0].outcome, Outcome::Unknown);
        assert_eq!(h.keys().into_iter().collect::<Vec<_>>(), vec![3]);
    }
}
