//! One key's check: the search walks the segments between cuts in order,
//! carrying every configuration the history so far can end in, so a violation deep in a
//! long history costs no more than one near its start.

use super::list::segments;
use super::partition::KeyHistory;
use super::render;
use super::search::{Config, Found, Placed, Search, Snapshot};
use super::{Report, Verdict};
use crate::history::record::History;

/// At most this many configurations are carried across a quiescent point.
const MAX_CONFIGS: usize = 4096;

pub(super) fn check_key(history: &History, kh: &KeyHistory, max_steps: u64) -> Verdict {
    let mut search = Search::new(kh);
    // Per segment done, each end configuration's start (an index into the previous
    // segment's ends) and path, to rebuild the prefix of a violation.
    let mut layers: Vec<Vec<(usize, Vec<Placed>)>> = Vec::new();
    let mut configs: Vec<Config> = vec![search.initial()];
    for segment in segments(&kh.timed) {
        match search.run_segment(&segment, &configs, max_steps, None) {
            Found::Through(mut through) => {
                if through.len() > MAX_CONFIGS {
                    return Verdict::Unknown(format!(
                        "key k{}: {} configurations after {} search steps, more than the \
                         {MAX_CONFIGS} the checker carries",
                        kh.key,
                        through.len(),
                        search.steps()
                    ));
                }
                // Less consumption first, so that the next segment's cache prunes more.
                through.sort_by_key(|t| t.end.consumed());
                configs = through.iter().map(|t| t.end.clone()).collect();
                layers.push(through.into_iter().map(|t| (t.start, t.path)).collect());
            }
            Found::Stuck { at_step } => {
                // The search is deterministic: run the segment again to its deepest dead
                // end, so that the first run never pays for copying its stack.
                return match search.run_segment(&segment, &configs, u64::MAX, Some(at_step)) {
                    Found::Snapshot { start, snapshot } => {
                        let prefix = prefix(&layers, start);
                        Verdict::NotLinearizable(report(history, kh, prefix, snapshot))
                    }
                    _ => Verdict::Unknown(format!(
                        "key k{}: not linearizable, but the window could not be rebuilt",
                        kh.key
                    )),
                };
            }
            Found::OutOfBudget | Found::Snapshot { .. } => {
                return Verdict::Unknown(format!(
                    "key k{}: no verdict within {} search steps ({} operations with a known \
                     outcome, {} of unknown outcome); raise CheckConfig::max_steps",
                    kh.key,
                    search.steps(),
                    kh.timed.len(),
                    kh.forever.len()
                ));
            }
        }
    }
    Verdict::Linearizable
}

/// The operations placed before the segment where the search got stuck, on the way to
/// its configuration `start`.
fn prefix(layers: &[Vec<(usize, Vec<Placed>)>], start: usize) -> Vec<Placed> {
    let mut parts = Vec::new();
    let mut at = start;
    for layer in layers.iter().rev() {
        let Some((parent, path)) = layer.get(at) else {
            break;
        };
        parts.push(path);
        at = *parent;
    }
    let mut placed = Vec::new();
    for part in parts.into_iter().rev() {
        placed.extend(part.iter().cloned());
    }
    placed
}

fn report(history: &History, kh: &KeyHistory, prefix: Vec<Placed>, mut snap: Snapshot) -> Report {
    let mut placed = prefix;
    placed.append(&mut snap.placed);
    snap.placed = placed;
    Report {
        key: kh.key,
        placed: snap.placed.len(),
        ops: kh.timed.len(),
        stuck: kh.timed[snap.stuck].op,
        concurrent: snap.candidates.iter().map(|&c| kh.timed[c].op).collect(),
        window: render::window(history, kh, &snap),
    }
}
