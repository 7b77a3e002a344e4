//! The measuring loop: one round trip and several lock cycles against one server, timed in
//! alternating blocks so that every side sees the same machine noise, on connections
//! opened afresh several times per round so that no side keeps a lucky or unlucky server
//! process for a whole run.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{BLOCK, Options, Result};

/// Sessions per round: every side reconnects at the start of each. A connection's server
/// process keeps its luck for as long as it lives (which core it shares with whom, what
/// it wakes from): with one connection per side for a whole run, two sides sending the
/// same statements measured 0.65 to 1.57 times each other's p50 from run to run.
pub const SESSIONS: usize = 5;

/// Untimed calls of every side after it reconnects: prepared statements, pools, scripts.
const WARM_UP: usize = 20;

/// Something timed once per iteration: a round trip, or one acquire + release.
#[async_trait(?Send)]
pub trait Timed {
    /// Runs once; `i` counts the calls (for a lock name per call, if one wants it).
    async fn run(&mut self, i: usize) -> Result<()>;

    /// Replaces its connections with new ones (new server processes), where it owns them;
    /// by default it keeps what it has.
    async fn reconnect(&mut self) -> Result<()> {
        Ok(())
    }
}

/// What a row measures, which decides the columns it gets.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// This library's lock: its cycle is held to the goals.
    Ours,
    /// The same statements or scripts sent on the raw driver: the floor of the ≤ 1.1 goal.
    DriverFloor,
    /// The same statements run by an outside tool (pgbench), measured on its own.
    ToolFloor,
    /// Another library's lock, for comparison.
    Peer,
}

/// One contender of a group: a lock cycle with its row label.
pub struct Contender {
    pub label: String,
    pub role: Role,
    pub cycle: Box<dyn Timed>,
}

impl Contender {
    pub fn new(label: impl Into<String>, role: Role, cycle: impl Timed + 'static) -> Contender {
        Contender {
            label: label.into(),
            role,
            cycle: Box::new(cycle),
        }
    }
}

/// p50 and p99 of one side of one round, in microseconds.
#[derive(Clone, Copy)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

pub fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One row: the round trip and the lock cycle, medians over rounds.
pub struct Row {
    pub label: String,
    pub role: Role,
    /// Rows of one server and mode share a group; ratios to a floor stay inside it.
    pub group: &'static str,
    pub round_trip: Percentiles,
    pub cycle: Percentiles,
    /// Each round's cycle p50, for ratios paired round by round.
    pub round_cycle_p50s: Vec<f64>,
}

/// Each round's p50 and p99 of both sides, summarised as a [`Row`] of medians.
#[derive(Default)]
pub struct Rounds {
    rt50: Vec<f64>,
    rt99: Vec<f64>,
    c50: Vec<f64>,
    c99: Vec<f64>,
}

impl Rounds {
    pub fn push(&mut self, round_trip: Percentiles, cycle: Percentiles) {
        self.rt50.push(round_trip.p50);
        self.rt99.push(round_trip.p99);
        self.c50.push(cycle.p50);
        self.c99.push(cycle.p99);
    }

    pub fn into_row(self, label: String, role: Role, group: &'static str) -> Row {
        Row {
            label,
            role,
            group,
            round_cycle_p50s: self.c50.clone(),
            round_trip: Percentiles {
                p50: median(self.rt50),
                p99: median(self.rt99),
            },
            cycle: Percentiles {
                p50: median(self.c50),
                p99: median(self.c99),
            },
        }
    }
}

/// Times `block` calls of `side`, appending each latency to `samples`.
async fn time_block(
    side: &mut dyn Timed,
    block: usize,
    next: &mut usize,
    samples: &mut Vec<Duration>,
) -> Result<()> {
    for _ in 0..block {
        let t = Instant::now();
        side.run(*next).await?;
        samples.push(t.elapsed());
        *next += 1;
    }
    Ok(())
}

/// Runs `rounds` rounds of `iterations` round trips and of `iterations` cycles of every
/// contender, and gives one row per contender; all rows share the round trip. A round is
/// [`SESSIONS`] sessions, each side on fresh connections where it can reconnect (see
/// [`Timed::reconnect`]); within one, blocks of every side alternate,
/// and the side that starts a pass rotates, so none always follows the same other.
pub async fn measure_group(
    group: &'static str,
    opts: &Options,
    round_trip: &mut (dyn Timed + 'static),
    mut contenders: Vec<Contender>,
) -> Result<Vec<Row>> {
    let mut sides: Vec<&mut (dyn Timed + 'static)> = std::iter::once(&mut *round_trip)
        .chain(contenders.iter_mut().map(|c| c.cycle.as_mut()))
        .collect();
    let mut calls = vec![0usize; sides.len()];
    let mut rounds: Vec<Rounds> = (1..sides.len()).map(|_| Rounds::default()).collect();
    for _ in 0..opts.rounds {
        let samples = measure_round(&mut sides, &mut calls, opts.iterations).await?;
        let mut samples = samples.into_iter();
        let rt = percentiles(samples.next().unwrap_or_default());
        for (r, side) in rounds.iter_mut().zip(samples) {
            r.push(rt, percentiles(side));
        }
    }
    Ok(contenders
        .into_iter()
        .zip(rounds)
        .map(|(c, r)| r.into_row(c.label, c.role, group))
        .collect())
}

/// One round: each side's `iterations` (rounded up to whole blocks) latencies, over
/// [`SESSIONS`] sessions.
async fn measure_round(
    sides: &mut [&mut (dyn Timed + 'static)],
    calls: &mut [usize],
    iterations: usize,
) -> Result<Vec<Vec<Duration>>> {
    let mut samples: Vec<Vec<Duration>> = sides
        .iter()
        .map(|_| Vec::with_capacity(iterations + BLOCK))
        .collect();
    let mut pass = 0;
    for session in 1..=SESSIONS {
        let mut warm = Vec::with_capacity(WARM_UP);
        for (side, n) in sides.iter_mut().zip(calls.iter_mut()) {
            side.reconnect().await?;
            time_block(&mut **side, WARM_UP, n, &mut warm).await?;
        }
        let until = iterations * session / SESSIONS;
        while samples[0].len() < until {
            for k in 0..sides.len() {
                let s = (pass + k) % sides.len();
                time_block(&mut *sides[s], BLOCK, &mut calls[s], &mut samples[s]).await?;
            }
            pass += 1;
        }
    }
    Ok(samples)
}
