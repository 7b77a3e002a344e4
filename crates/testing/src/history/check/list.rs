//! The call and return entries of one key's operations with a known return, sorted by
//! time, in a doubly linked list that lifts an operation's two entries when it is
//! linearized and puts them back, in O(1), when the search backtracks.

use super::partition::Timed;

/// No entry.
pub(super) const NIL: u32 = u32::MAX;

/// Call (`false`) and return (`true`) entries as (time, is return, op), sorted; calls
/// come before returns at equal times, so touching intervals count as concurrent.
fn sorted(entries: impl Iterator<Item = (u64, bool, u32)>) -> Vec<(u64, bool, u32)> {
    let mut entries: Vec<_> = entries.collect();
    entries.sort_unstable();
    entries
}

/// Cut wherever at most this many operations are in flight...
const MAX_OPEN: usize = 2;
/// ...and, once a segment has this many operations, wherever at most [`MAX_OPEN_LONG`]
/// are: long operations (a request stuck for seconds, then answered) must not turn the
/// rest of the history into one segment, whose every configuration would be explored.
const LONG_SEGMENT: usize = 128;
const MAX_OPEN_LONG: usize = 8;

/// The operations between two cuts, with whether each returns before the second cut.
#[derive(Debug, Clone, Default)]
pub(super) struct Segment {
    /// (index into `timed`, returns in this segment). Operations still in flight at the
    /// first cut come first; those in flight at the second may stay unplaced.
    pub ops: Vec<(usize, bool)>,
}

/// Splits the operations at cuts: points where few operations are in flight. Every
/// linearization has then placed exactly the operations returned before the
/// cut plus some of those in flight, so the search goes on from the possible
/// configurations there without revisiting the past: a long history costs the sum of its
/// segments, also when it is not linearizable.
pub(super) fn segments(timed: &[Timed]) -> Vec<Segment> {
    let calls = timed
        .iter()
        .enumerate()
        .map(|(i, t)| (t.call, false, i as u32));
    let rets = timed
        .iter()
        .enumerate()
        .map(|(i, t)| (t.ret, true, i as u32));
    let mut segments = Vec::new();
    let (mut open, mut carried, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    for (_, ret, i) in sorted(calls.chain(rets)) {
        let i = i as usize;
        if !ret {
            open.push(i);
            fresh.push(i);
            continue;
        }
        open.retain(|&o| o != i);
        if open.len() <= MAX_OPEN || (fresh.len() >= LONG_SEGMENT && open.len() <= MAX_OPEN_LONG) {
            let ops = carried.iter().chain(&fresh);
            let ops = ops.map(|&o| (o, !open.contains(&o))).collect();
            segments.push(Segment { ops });
            carried.clone_from(&open);
            fresh.clear();
        }
    }
    segments
}

#[derive(Debug)]
pub(super) struct EntryList {
    op: Vec<u32>,
    ret: Vec<bool>,
    time: Vec<u64>,
    /// The other entry of the same operation ([`NIL`] for the call of an operation that
    /// returns after the segment).
    partner: Vec<u32>,
    /// The call entry of each operation.
    call_at: std::collections::HashMap<usize, u32>,
    /// How many return entries are listed.
    returns: u32,
    next: Vec<u32>,
    prev: Vec<u32>,
    head: u32,
}

impl EntryList {
    /// The list of a segment's operations (see [`Segment::ops`]).
    pub(super) fn new(timed: &[Timed], ops: &[(usize, bool)]) -> EntryList {
        let calls = ops.iter().map(|&(i, _)| (timed[i].call, false, i as u32));
        let rets = ops.iter().filter(|o| o.1);
        let rets = rets.map(|&(i, _)| (timed[i].ret, true, i as u32));
        let entries = sorted(calls.chain(rets));
        let m = entries.len() as u32;
        let mut call_at = std::collections::HashMap::with_capacity(ops.len());
        let mut partner = vec![NIL; entries.len()];
        for (e, &(_, ret, i)) in entries.iter().enumerate() {
            if ret {
                let c = call_at.get(&(i as usize)).copied().unwrap_or(NIL);
                partner[e] = c;
                if let Some(p) = partner.get_mut(c as usize) {
                    *p = e as u32;
                }
            } else {
                call_at.insert(i as usize, e as u32);
            }
        }
        // Entry e links to e + 1; the head (index m) to entry 0.
        let mut next: Vec<u32> = (1..=m).collect();
        next.push(if m == 0 { NIL } else { 0 });
        if m > 0 {
            next[m as usize - 1] = NIL;
        }
        let mut prev: Vec<u32> = (0..m).map(|e| if e == 0 { m } else { e - 1 }).collect();
        prev.push(NIL);
        EntryList {
            op: entries.iter().map(|e| e.2).collect(),
            ret: entries.iter().map(|e| e.1).collect(),
            time: entries.iter().map(|e| e.0).collect(),
            partner,
            call_at,
            returns: entries.iter().filter(|e| e.1).count() as u32,
            next,
            prev,
            head: m,
        }
    }

    /// Whether every operation that returns in the segment is linearized.
    pub(super) fn done(&self) -> bool {
        self.returns == 0
    }

    /// The call entry of operation `op`, if it is in the segment.
    pub(super) fn call_entry(&self, op: usize) -> Option<u32> {
        self.call_at.get(&op).copied()
    }

    /// The first listed entry, or [`NIL`] when every operation is linearized.
    pub(super) fn first(&self) -> u32 {
        self.next[self.head as usize]
    }

    /// The entry after `e`.
    pub(super) fn next(&self, e: u32) -> u32 {
        self.next[e as usize]
    }

    /// Whether `e` is a return entry.
    pub(super) fn is_return(&self, e: u32) -> bool {
        self.ret[e as usize]
    }

    /// The operation (index into `timed`) of entry `e`.
    pub(super) fn op(&self, e: u32) -> usize {
        self.op[e as usize] as usize
    }

    /// The time of the first listed return entry: nothing can be linearized after it
    /// before its operation is.
    pub(super) fn frontier(&self) -> u64 {
        let mut e = self.first();
        while e != NIL {
            if self.ret[e as usize] {
                return self.time[e as usize];
            }
            e = self.next(e);
        }
        u64::MAX
    }

    fn unlink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        self.next[p as usize] = n;
        if n != NIL {
            self.prev[n as usize] = p;
        }
    }

    fn relink(&mut self, e: u32) {
        let (p, n) = (self.prev[e as usize], self.next[e as usize]);
        self.next[p as usize] = e;
        if n != NIL {
            self.prev[n as usize] = e;
        }
    }

    /// Removes the operation of call entry `e`, with its return entry.
    pub(super) fn lift(&mut self, e: u32) {
        self.unlink(e);
        let r = self.partner[e as usize];
        if r != NIL {
            self.unlink(r);
            self.returns -= 1;
        }
    }

    /// Puts back the operation of call entry `e`, the one lifted last.
    pub(super) fn unlift(&mut self, e: u32) {
        let r = self.partner[e as usize];
        if r != NIL {
            self.relink(r);
            self.returns += 1;
        }
        self.relink(e);
    }
}
