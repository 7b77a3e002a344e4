//! The readable window a failed check prints, porcupine-style: the tail of the longest
//! linearizable prefix with the state after each step, the operation that could not be
//! placed, and what else could have gone next.

use std::fmt::Write as _;

use super::partition::{ANON, Code, Effect, KeyHistory, NONE};
use super::search::Snapshot;
use crate::history::op::{Key, OpId, ValueId};
use crate::history::record::History;

/// How many operations of the prefix the window shows.
const TAIL: usize = 12;
/// How many pending unknown operations it lists.
const PENDING: usize = 8;

/// The state as text: the search merges values nobody reads into one code, so the value
/// itself is tracked apart (`actual`) for display.
fn state(kh: &KeyHistory, s: Code, actual: Option<ValueId>) -> String {
    match (s, actual) {
        (NONE, _) => "absent".to_string(),
        (ANON, Some(v)) => format!("v{v}"),
        (ANON, None) => "a value no operation reads".to_string(),
        (c, _) => kh
            .observed
            .get(c as usize - 2)
            .map_or_else(|| format!("code {c}"), |v| format!("v{v}")),
    }
}

/// The value an operation of `history` writes to `key`, if it writes one.
fn written(history: &History, id: OpId, key: Key) -> Option<ValueId> {
    let record = history.get(id)?;
    record
        .op
        .writes()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Whether a placed operation with this effect wrote its value.
fn wrote(effect: Effect) -> bool {
    matches!(
        effect,
        Effect::Write(_) | Effect::Cas { ok: true, .. } | Effect::Sine { ok: true, .. }
    )
}

fn line(out: &mut String, history: &History, id: OpId, suffix: &str) {
    let text = history
        .get(id)
        .map_or_else(|| format!("{id} (missing)"), |r| r.to_string());
    let _ = writeln!(out, "    {text}{suffix}");
}

pub(super) fn window(history: &History, kh: &KeyHistory, snap: &Snapshot) -> String {
    let mut out = String::new();
    let skipped = snap.placed.len().saturating_sub(TAIL);
    let _ = writeln!(
        out,
        "longest linearizable prefix: {} of {} operations with a known outcome on k{}{}",
        snap.placed.len(),
        kh.timed.len(),
        kh.key,
        if skipped > 0 {
            format!("; its last {TAIL}, with the state after each:")
        } else {
            ", with the state after each:".to_string()
        }
    );
    if snap.placed.is_empty() {
        out.push_str("    (none: the first operation already does not fit)\n");
    }
    let mut actual = None;
    for (i, p) in snap.placed.iter().enumerate() {
        let show = i >= skipped;
        for &f in &p.chain {
            let op = kh.forever[f].op;
            // A chain applies only operations that change the state.
            actual = written(history, op, kh.key);
            if show {
                line(&mut out, history, op, "   [unknown outcome, applied here]");
            }
        }
        let t = &kh.timed[p.timed];
        if p.state == NONE {
            actual = None;
        } else if wrote(t.effect) {
            actual = written(history, t.op, kh.key);
        }
        if show {
            let after = format!("   => {}", state(kh, p.state, actual));
            line(&mut out, history, t.op, &after);
        }
    }
    let _ = writeln!(
        out,
        "state after the prefix: {}\nthen this operation returned before it could be placed:",
        state(kh, snap.state, actual)
    );
    line(&mut out, history, kh.timed[snap.stuck].op, "");
    if snap.candidates.is_empty() {
        out.push_str("and nothing else was called before it returned\n");
    } else {
        out.push_str("concurrent with it, and none could go next either:\n");
        for &c in &snap.candidates {
            line(&mut out, history, kh.timed[c].op, "");
        }
    }
    if !snap.pending.is_empty() {
        let _ = writeln!(
            out,
            "operations that could still have taken effect (unknown outcome, or a failed \
             batch write, which may be partly applied) ({}):",
            snap.pending.len()
        );
        for &f in snap.pending.iter().take(PENDING) {
            line(&mut out, history, kh.forever[f].op, "");
        }
        if snap.pending.len() > PENDING {
            let _ = writeln!(out, "    ... and {} more", snap.pending.len() - PENDING);
        }
    }
    out
}
