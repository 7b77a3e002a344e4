//! The measuring loop: one round trip and several lock cycles against one server, timed in
//! alternating blocks so that every side sees the same machine noise.

use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{BLOCK, Options, Result};

/// Something timed once per iteration: a round trip, or one acquire + release.
#[async_trait(?Send)]
pub trait Timed {
    /// Runs once; `i` counts the calls (for a lock name per call, if one wants it).
    async fn run(&mut self, i: usize) -> Result<()>;
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
/// contender, in alternating blocks (round trips, then each contender in turn), and gives
/// one row per contender; all rows share the round trip.
pub async fn measure_group(
    group: &'static str,
    opts: &Options,
    round_trip: &mut dyn Timed,
    mut contenders: Vec<Contender>,
) -> Result<Vec<Row>> {
    let mut calls = vec![0usize; contenders.len() + 1];
    // Warm-up: connections, prepared statements, scripts.
    let mut warm = Vec::with_capacity(BLOCK);
    time_block(round_trip, BLOCK, &mut calls[0], &mut warm).await?;
    for (c, n) in contenders.iter_mut().zip(&mut calls[1..]) {
        time_block(c.cycle.as_mut(), BLOCK, n, &mut warm).await?;
    }
    let mut rounds: Vec<Rounds> = contenders.iter().map(|_| Rounds::default()).collect();
    for _ in 0..opts.rounds {
        let mut rts = Vec::with_capacity(opts.iterations);
        let mut cycles: Vec<Vec<Duration>> = contenders
            .iter()
            .map(|_| Vec::with_capacity(opts.iterations))
            .collect();
        while rts.len() < opts.iterations {
            time_block(round_trip, BLOCK, &mut calls[0], &mut rts).await?;
            for ((c, n), samples) in contenders.iter_mut().zip(&mut calls[1..]).zip(&mut cycles) {
                time_block(c.cycle.as_mut(), BLOCK, n, samples).await?;
            }
        }
        let rt = percentiles(rts);
        for (r, samples) in rounds.iter_mut().zip(cycles) {
            r.push(rt, percentiles(samples));
        }
    }
    Ok(contenders
        .into_iter()
        .zip(rounds)
        .map(|(c, r)| r.into_row(c.label, c.role, group))
        .collect())
}
