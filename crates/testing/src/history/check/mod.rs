//! Linearizability of a history against a per-key register model.
//!
//! A history is linearizable iff each key's sub-history is (P-compositionality), so keys
//! are checked apart, in parallel. Per key the model state is absent or the id of the
//! value present. Each key's operations are split at cuts, points where few are in flight
//! (`list::segments`), and walked segment by segment carrying every configuration the
//! prefix can end in (`walk`); the `search` module says how one segment is searched and
//! how operations of unknown outcome are treated.
//!
//! How operations become per-key operations:
//! - failed (an error without `outcome_unknown`): dropped, they did not take effect;
//! - unknown: they may take effect once, any time after their call, with any output; a
//!   read of unknown outcome does nothing and is dropped;
//! - batches: one operation per key with the batch's interval; a batch_delete's per-key
//!   answer is unknown (only a total is returned); a failed batch write may be partly
//!   applied, so each of its keys is treated as unknown.
//!
//! Every key starts absent: the caller runs the workload on fresh keys.

mod cache;
mod list;
mod partition;
mod render;
mod search;
#[cfg(test)]
mod tests;
mod walk;

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use self::partition::partition;
use self::walk::check_key;
use super::op::{Key, OpId};
use super::record::History;

/// Limits of a check.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// Search steps (one per placement or backtrack) allowed per key; past it the verdict
    /// is [`Verdict::Unknown`]. The memo cache lives for one segment at a time.
    pub max_steps: u64,
    /// How many keys to check at once; 0 means one per available core.
    pub threads: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            max_steps: 5_000_000,
            threads: 0,
        }
    }
}

/// Why a history is not linearizable, for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The key whose sub-history has no linearization.
    pub key: Key,
    /// How many of its operations with a known outcome the longest linearizable prefix
    /// placed.
    pub placed: usize,
    /// How many operations with a known outcome it has.
    pub ops: usize,
    /// The operation that returned before the search could place it, at the end of the
    /// longest prefix.
    pub stuck: OpId,
    /// The operations that could have gone next instead, none of which fit either.
    pub concurrent: Vec<OpId>,
    /// The window around `stuck`, one operation per line, ready to print.
    pub window: String,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key k{} is not linearizable: {} cannot be placed\n{}",
            self.key, self.stuck, self.window
        )
    }
}

/// The result of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// Some key's has none (the lowest such key is reported).
    NotLinearizable(Report),
    /// The check could not decide: the step budget ran out, or the history is malformed
    /// (a value written twice, an output that does not fit its operation). Never an "ok".
    Unknown(String),
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => f.write_str("linearizable"),
            Verdict::NotLinearizable(report) => write!(f, "NOT linearizable: {report}"),
            Verdict::Unknown(reason) => write!(f, "unknown: {reason}"),
        }
    }
}

/// Checks `history` with the default [`CheckConfig`].
pub fn check(history: &History) -> Verdict {
    check_with(history, &CheckConfig::default())
}

/// Checks `history` against the per-key register model.
pub fn check_with(history: &History, config: &CheckConfig) -> Verdict {
    let keys = match partition(history) {
        Ok(keys) => keys,
        Err(reason) => return Verdict::Unknown(format!("malformed history: {reason}")),
    };
    let threads = match config.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, keys.len().max(1));
    if threads == 1 {
        return merge(
            keys.iter()
                .map(|kh| check_key(history, kh, config.max_steps)),
        );
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Verdict)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(kh) = keys.get(i) else { break };
                    let verdict = check_key(history, kh, config.max_steps);
                    results
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push((i, verdict));
                }
            });
        }
    });
    let mut results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    results.sort_by_key(|(i, _)| *i);
    merge(results.into_iter().map(|(_, verdict)| verdict))
}

/// The first violation, in key order; else every reason for not deciding; else a pass.
fn merge(verdicts: impl Iterator<Item = Verdict>) -> Verdict {
    let mut unknown = Vec::new();
    for verdict in verdicts {
        match verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable(report) => return Verdict::NotLinearizable(report),
            Verdict::Unknown(reason) => unknown.push(reason),
        }
    }
    if unknown.is_empty() {
        Verdict::Linearizable
    } else {
        Verdict::Unknown(unknown.join("; "))
    }
}
