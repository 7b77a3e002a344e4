//! The Wing–Gong search with Lowe's memoisation, as porcupine runs it, over one key.
//!
//! The search runs one segment (the operations between two quiescent points) at a time,
//! from every configuration the previous segment can end in, and collects every
//! configuration this one can end in. Within a segment, operations with a known return sit
//! in a list of call and return entries sorted by time; an explicit stack (no recursion: a
//! segment can hold thousands of operations) linearizes the first call entry that fits
//! the register state in a configuration not explored before, lifting its entries from the
//! list; reaching a return entry means that operation cannot go first, so it backtracks.
//!
//! Operations of unknown outcome have no return (it is +infinity): each may take effect
//! once, any time after its call, or never. Trying them eagerly, as porcupine does, makes
//! the search exponential in their number. They are applied lazily instead: only right
//! before an operation that does not fit the current state, as the shortest chain that
//! makes it fit. Any linearization can be reordered into that form (an unknown operation
//! can always move later; moved past an operation that fits either way it is overwritten
//! or commutes), so none is missed. Interchangeable unknown operations (every deleter;
//! every writer of a value nobody observes) are consumed in call order, so one choice
//! stands for all of them.

mod moves;

use super::cache::Cache;
use super::list::{EntryList, NIL, Segment};
use super::partition::{ANON, Class, Code, KeyHistory, NONE};
use crate::history::rng::{Rng, mix};

/// The interchangeable pools of unknown operations, as indices of `Search::pools`.
const DELETERS: usize = 0;
const ANON_PUTS: usize = 1;
const ANON_FROM_NONE: usize = 2;

/// One unknown operation applied in a chain: the next of a pool, or a specific one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Pool(usize),
    Specific(u32),
}

/// A way to linearize the next operation: apply `chain`, then the operation, reaching
/// `state`.
#[derive(Debug)]
struct Move {
    chain: Vec<Step>,
    state: Code,
}

#[derive(Debug)]
struct Frame {
    entry: u32,
    mv: u32,
    /// Whether it was placed in the pass over placements that need unknown operations.
    chains: bool,
    prev_state: Code,
    /// The chain, with the `forever` index each step consumed.
    chain: Vec<(Step, u32)>,
}

/// A configuration at a cut: the register state, which of the operations in flight there
/// are placed, and which unknown operations were consumed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Config {
    pub state: Code,
    pub open: Vec<usize>,
    pub used: [u32; 3],
    pub spec: Vec<u64>,
}

impl Config {
    /// How many unknown operations it consumed.
    pub fn consumed(&self) -> u32 {
        self.used.iter().sum::<u32>() + self.spec.iter().map(|w| w.count_ones()).sum::<u32>()
    }

    /// Whether every future of `other` is one of `self`'s: the same state and placements,
    /// and no more consumed.
    fn covers(&self, other: &Config) -> bool {
        self.state == other.state
            && self.open == other.open
            && self.used.iter().zip(&other.used).all(|(a, b)| a <= b)
            && self.spec.iter().zip(&other.spec).all(|(a, b)| a & !b == 0)
    }
}

/// A way through a segment: from `starts[start]`, placing `path`, ending in `end`.
#[derive(Debug)]
pub(super) struct Through {
    pub start: usize,
    pub path: Vec<Placed>,
    pub end: Config,
}

/// What the search of one segment found.
#[derive(Debug)]
pub(super) enum Found {
    /// Every configuration the segment can end in (none covering another).
    Through(Vec<Through>),
    /// No way through; the deepest dead end was reached after `at_step` steps.
    Stuck {
        at_step: u64,
    },
    OutOfBudget,
    /// The dead end asked for, reached from `starts[start]`.
    Snapshot {
        start: usize,
        snapshot: Snapshot,
    },
}

/// One operation of the longest linearizable prefix.
#[derive(Debug, Clone)]
pub(super) struct Placed {
    /// Unknown operations applied just before it (indices into `forever`).
    pub chain: Vec<usize>,
    /// Index into `timed`.
    pub timed: usize,
    /// The state after it.
    pub state: Code,
}

/// The search at its deepest dead end.
#[derive(Debug)]
pub(super) struct Snapshot {
    pub placed: Vec<Placed>,
    pub state: Code,
    /// The operation whose return was reached before it could be placed.
    pub stuck: usize,
    /// Other operations that could have gone next (called before `stuck` returned).
    pub candidates: Vec<usize>,
    /// Unknown operations that could still have been applied.
    pub pending: Vec<usize>,
}

fn state_key(s: Code) -> u128 {
    let lo = mix(u64::from(s) ^ 0x5851_F42D_4C95_7F2D);
    (u128::from(lo) << 64) | u128::from(mix(lo))
}

/// The search over one key's history.
#[derive(Debug)]
pub(super) struct Search<'a> {
    kh: &'a KeyHistory,
    list: EntryList,
    /// Steps within the current segment, for finding a dead end again.
    local: u64,
    /// Which operations with a known return are placed.
    placed: Vec<bool>,
    /// The current segment's operations that may stay unplaced.
    optional: Vec<usize>,
    /// Interchangeable unknown operations by pool, in call order; `used` of each consumed.
    pools: [Vec<u32>; 3],
    used: [u32; 3],
    /// The other unknown operations, in call order, and which are consumed (a bitset by
    /// position in `specifics`).
    specifics: Vec<u32>,
    spec_pos: Vec<u32>,
    spec_used: Vec<u64>,
    /// The unknown operation that writes each observed value, if any.
    writer_of: Vec<u32>,
    timed_keys: Vec<u128>,
    fp: u128,
    state: Code,
    stack: Vec<Frame>,
    cache: Cache,
    scratch: Vec<u64>,
    steps: u64,
    best_depth: Option<usize>,
    best_step: u64,
}

impl<'a> Search<'a> {
    pub(super) fn new(kh: &'a KeyHistory) -> Search<'a> {
        let mut by_call: Vec<u32> = (0..kh.forever.len() as u32).collect();
        by_call.sort_by_key(|&f| (kh.forever[f as usize].call, f));
        let pool = |class: Class| -> Vec<u32> {
            let of_class = |f: &u32| kh.forever[*f as usize].class == class;
            by_call.iter().copied().filter(of_class).collect()
        };
        let mut writer_of = vec![NIL; kh.codes()];
        let mut specifics = Vec::new();
        let mut spec_pos = vec![NIL; kh.forever.len()];
        for &f in &by_call {
            if let Class::Specific { value, .. } = kh.forever[f as usize].class {
                spec_pos[f as usize] = specifics.len() as u32;
                specifics.push(f);
                if value != ANON {
                    writer_of[value as usize] = f;
                }
            }
        }
        let mut rng = Rng::new(0x0DDB_1A5E_5BAD_5EED ^ u64::from(kh.key));
        Search {
            kh,
            list: EntryList::new(&kh.timed, &[]),
            local: 0,
            placed: vec![false; kh.timed.len()],
            optional: Vec::new(),
            pools: [
                pool(Class::Deleter),
                pool(Class::AnonPut),
                pool(Class::AnonFromNone),
            ],
            used: [0; 3],
            spec_used: vec![0; specifics.len().div_ceil(64)],
            specifics,
            spec_pos,
            writer_of,
            timed_keys: (0..kh.timed.len()).map(|_| rng.next_u128()).collect(),
            fp: 0,
            state: NONE,
            stack: Vec::new(),
            cache: Cache::default(),
            scratch: Vec::new(),
            steps: 0,
            best_depth: None,
            best_step: 0,
        }
    }

    /// Steps taken so far (each placement and each backtrack is one).
    pub(super) fn steps(&self) -> u64 {
        self.steps
    }

    /// The configuration before the first operation: absent, nothing consumed.
    pub(super) fn initial(&self) -> Config {
        Config {
            state: NONE,
            open: Vec::new(),
            used: [0; 3],
            spec: vec![0; self.spec_used.len()],
        }
    }

    fn config(&self) -> Config {
        let open = self.optional.iter().filter(|&&o| self.placed[o]);
        Config {
            state: self.state,
            open: open.copied().collect(),
            used: self.used,
            spec: self.spec_used.clone(),
        }
    }

    /// Searches `segment` from each of `starts`, until done, `budget` steps in all, or
    /// (when `snapshot_at` is set) the dead end reached after that many steps of this
    /// segment.
    pub(super) fn run_segment(
        &mut self,
        segment: &Segment,
        starts: &[Config],
        budget: u64,
        snapshot_at: Option<u64>,
    ) -> Found {
        self.list = EntryList::new(&self.kh.timed, &segment.ops);
        let optional = segment.ops.iter().filter(|o| !o.1);
        self.optional = optional.map(|o| o.0).collect();
        // The cache is shared by every start: a configuration reached again from another
        // start, consuming no less, can only end where the first visit already recorded.
        self.cache = Cache::default();
        self.local = 0;
        self.best_depth = None;
        self.best_step = 0;
        let mut through: Vec<Through> = Vec::new();
        for (i, start) in starts.iter().enumerate() {
            self.state = start.state;
            self.used = start.used;
            self.spec_used.clone_from(&start.spec);
            self.fp = 0;
            self.stack.clear();
            // Operations in flight at the cut that the start already placed.
            let mut lifted = Vec::new();
            for &x in &start.open {
                if let Some(e) = self.list.call_entry(x) {
                    self.list.lift(e);
                    self.placed[x] = true;
                    self.fp ^= self.timed_keys[x];
                    lifted.push((x, e));
                }
            }
            let found = self.explore(i, budget, snapshot_at, &mut through);
            for &(x, e) in lifted.iter().rev() {
                self.list.unlift(e);
                self.placed[x] = false;
            }
            if let Some(found) = found {
                return found;
            }
        }
        if through.is_empty() {
            return Found::Stuck {
                at_step: self.best_step,
            };
        }
        // Keep only the ends no other end covers (equal ones: the first).
        let mut kept: Vec<Through> = Vec::new();
        for t in through {
            if !kept.iter().any(|k| k.end.covers(&t.end)) {
                kept.retain(|k| !t.end.covers(&k.end));
                kept.push(t);
            }
        }
        Found::Through(kept)
    }

    /// The depth-first search from one start; `None` once it is exhausted.
    fn explore(
        &mut self,
        start: usize,
        budget: u64,
        snapshot_at: Option<u64>,
        through: &mut Vec<Through>,
    ) -> Option<Found> {
        let mut entry = self.list.first();
        let mut resume = 0usize;
        // Two passes over the candidates: first placements that need no unknown operation,
        // then those that do. Exploring less consumption first lets the cache prune the
        // configurations that consume more.
        let mut chains = false;
        let mut frontier = self.list.frontier();
        let mut moves = Vec::new();
        loop {
            if self.steps >= budget {
                return Some(Found::OutOfBudget);
            }
            if self.list.done() {
                through.push(Through {
                    start,
                    path: self.path(),
                    end: self.config(),
                });
            } else if entry != NIL && !self.list.is_return(entry) {
                let x = self.list.op(entry);
                moves.clear();
                self.moves(self.kh.timed[x].effect, frontier, &mut moves);
                let mut placed = false;
                for (mi, mv) in moves.iter().enumerate().skip(resume) {
                    if mv.chain.is_empty() != chains && self.visit(x, mv) {
                        self.apply(entry, mi, mv, chains);
                        placed = true;
                        break;
                    }
                }
                resume = 0;
                if placed {
                    self.steps += 1;
                    self.local += 1;
                    entry = self.list.first();
                    chains = false;
                    frontier = self.list.frontier();
                } else {
                    entry = self.list.next(entry);
                }
                continue;
            } else if !chains {
                chains = true;
                entry = self.list.first();
                continue;
            } else {
                if self.best_depth.is_none_or(|d| self.stack.len() > d) {
                    self.best_depth = Some(self.stack.len());
                    self.best_step = self.local;
                }
                if snapshot_at == Some(self.local) {
                    let snapshot = self.snapshot(entry, frontier);
                    return Some(Found::Snapshot { start, snapshot });
                }
            }
            // Done, or a dead end: backtrack.
            let frame = self.stack.pop()?;
            self.undo(&frame);
            entry = frame.entry;
            resume = frame.mv as usize + 1;
            chains = frame.chains;
            frontier = self.list.frontier();
            self.steps += 1;
            self.local += 1;
        }
    }

    /// The operations placed so far in this segment.
    fn path(&self) -> Vec<Placed> {
        let stack = &self.stack;
        let placed = stack.iter().enumerate().map(|(i, frame)| Placed {
            chain: frame.chain.iter().map(|&(_, f)| f as usize).collect(),
            timed: self.list.op(frame.entry),
            state: stack.get(i + 1).map_or(self.state, |n| n.prev_state),
        });
        placed.collect()
    }

    /// Records the configuration `mv` on `x` leads to; false if it was explored already.
    fn visit(&mut self, x: usize, mv: &Move) -> bool {
        let key = self.fp ^ self.timed_keys[x] ^ state_key(mv.state);
        let mut used = self.used;
        let mut spec = &self.spec_used;
        if !mv.chain.is_empty() {
            self.scratch.clone_from(&self.spec_used);
            for step in &mv.chain {
                match *step {
                    Step::Pool(p) => used[p] += 1,
                    Step::Specific(f) => {
                        let pos = self.spec_pos[f as usize] as usize;
                        self.scratch[pos / 64] |= 1 << (pos % 64);
                    }
                }
            }
            spec = &self.scratch;
        }
        self.cache.visit(key, used, spec)
    }

    fn consume(&mut self, step: Step, undo: bool) -> u32 {
        match step {
            Step::Pool(p) => {
                if undo {
                    self.used[p] -= 1;
                }
                let f = self.pools[p][self.used[p] as usize];
                if !undo {
                    self.used[p] += 1;
                }
                f
            }
            Step::Specific(f) => {
                let pos = self.spec_pos[f as usize] as usize;
                self.spec_used[pos / 64] ^= 1 << (pos % 64);
                f
            }
        }
    }

    fn apply(&mut self, entry: u32, mv: usize, m: &Move, chains: bool) {
        let x = self.list.op(entry);
        let chain = m
            .chain
            .iter()
            .map(|&s| (s, self.consume(s, false)))
            .collect();
        self.fp ^= self.timed_keys[x];
        self.stack.push(Frame {
            entry,
            mv: mv as u32,
            chains,
            prev_state: self.state,
            chain,
        });
        self.state = m.state;
        self.placed[x] = true;
        self.list.lift(entry);
    }

    fn undo(&mut self, frame: &Frame) {
        let x = self.list.op(frame.entry);
        self.list.unlift(frame.entry);
        self.placed[x] = false;
        self.state = frame.prev_state;
        self.fp ^= self.timed_keys[x];
        for &(step, _) in frame.chain.iter().rev() {
            self.consume(step, true);
        }
    }

    fn snapshot(&self, e: u32, frontier: u64) -> Snapshot {
        let stuck = self.list.op(e);
        let mut candidates = Vec::new();
        let mut c = self.list.first();
        while c != NIL && c != e {
            if !self.list.is_return(c) && self.list.op(c) != stuck {
                candidates.push(self.list.op(c));
            }
            c = self.list.next(c);
        }
        let mut pending: Vec<usize> = Vec::new();
        for (p, pool) in self.pools.iter().enumerate() {
            let rest = pool.get(self.used[p] as usize..).unwrap_or_default();
            pending.extend(rest.iter().map(|&f| f as usize));
        }
        let free = self.specifics.iter().filter(|&&f| self.spec_free(f));
        pending.extend(free.map(|&f| f as usize));
        pending.retain(|&f| self.kh.forever[f].call <= frontier);
        pending.sort_unstable();
        Snapshot {
            placed: self.path(),
            state: self.state,
            stuck,
            candidates,
            pending,
        }
    }
}
