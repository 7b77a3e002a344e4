//! Which moves can place an operation next: as it is, or after the chain of unknown
//! operations that makes it fit (see the parent module for why only those).

use super::{ANON_FROM_NONE, ANON_PUTS, DELETERS, Move, Search, Step};
use crate::history::check::list::NIL;
use crate::history::check::partition::{ANON, Class, Code, Effect, NONE};

impl Search<'_> {
    pub(super) fn ready(&self, f: u32, frontier: u64) -> bool {
        self.kh.forever[f as usize].call <= frontier
    }

    /// The next unknown operation of `pool`, if it was called before the frontier.
    pub(super) fn pool_next(&self, pool: usize, frontier: u64) -> Option<u32> {
        let next = self.pools[pool].get(self.used[pool] as usize).copied();
        next.filter(|&f| self.ready(f, frontier))
    }

    pub(super) fn spec_free(&self, f: u32) -> bool {
        let pos = self.spec_pos[f as usize] as usize;
        self.spec_used[pos / 64] & (1 << (pos % 64)) == 0
    }

    /// Every way to linearize an operation with `effect` next, best first.
    pub(super) fn moves(&self, effect: Effect, frontier: u64, out: &mut Vec<Move>) {
        if let Some(state) = effect.accept(self.state) {
            let chain = Vec::new();
            out.push(Move { chain, state });
            return;
        }
        match effect.needs() {
            Some(target) => {
                if let Some(chain) = self.path_to(target, frontier)
                    && let Some(state) = effect.accept(target)
                {
                    out.push(Move { chain, state });
                }
            }
            None => self.leave(effect, frontier, out),
        }
    }

    /// The only minimal chain of unknown operations from the current state to `target`:
    /// values are written once, so each value has at most one writer.
    fn path_to(&self, target: Code, frontier: u64) -> Option<Vec<Step>> {
        let s = self.state;
        let mut chain = Vec::new();
        let mut t = target;
        for _ in 0..=self.kh.codes() {
            if t == s {
                chain.reverse();
                return Some(chain);
            }
            if t == NONE {
                if s == NONE || self.pool_next(DELETERS, frontier).is_none() {
                    return None;
                }
                chain.push(Step::Pool(DELETERS));
                chain.reverse();
                return Some(chain);
            }
            let f = *self.writer_of.get(t as usize)?;
            if f == NIL || !self.spec_free(f) || !self.ready(f, frontier) {
                return None;
            }
            chain.push(Step::Specific(f));
            match self.kh.forever[f as usize].class {
                Class::Specific { pre: Some(p), .. } => t = p,
                _ => {
                    chain.reverse();
                    return Some(chain);
                }
            }
        }
        None
    }

    /// One unknown operation that changes the current state, for an operation that needs
    /// any state but this one (a delete that found a value, a failed cas or
    /// set_if_not_exists).
    fn leave(&self, effect: Effect, frontier: u64, out: &mut Vec<Move>) {
        let s = self.state;
        let mut try_step = |step: Step, to: Code| {
            if let Some(state) = effect.accept(to) {
                out.push(Move {
                    chain: vec![step],
                    state,
                });
            }
        };
        if s != NONE && self.pool_next(DELETERS, frontier).is_some() {
            try_step(Step::Pool(DELETERS), NONE);
        }
        // Both give an unobserved value; using the weaker one (only from absent) leaves
        // strictly more futures open, so the other need not be tried.
        if s == NONE && self.pool_next(ANON_FROM_NONE, frontier).is_some() {
            try_step(Step::Pool(ANON_FROM_NONE), ANON);
        } else if self.pool_next(ANON_PUTS, frontier).is_some() {
            try_step(Step::Pool(ANON_PUTS), ANON);
        }
        for &f in &self.specifics {
            if let Class::Specific { pre, value } = self.kh.forever[f as usize].class
                && pre.is_none_or(|p| p == s)
                && value != s
                && self.spec_free(f)
                && self.ready(f, frontier)
            {
                try_step(Step::Specific(f), value);
            }
        }
    }
}
