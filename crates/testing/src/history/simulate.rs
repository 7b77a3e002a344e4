//! Linearizable histories of any size without a backend, to measure the checker and to
//! test it on histories too long to write by hand.
//!
//! Each client runs operations one after another; each operation gets an interval and a
//! point inside it where it takes effect on a sequential register per key. Unknown
//! outcomes take effect or not (half each); failed ones never do.

use super::op::{ClientId, Key, Op, Outcome, Output, ValueId};
use super::record::History;
use super::rng::Rng;
use super::workload::Weights;

/// The shape of a simulated history.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Concurrent clients.
    pub clients: u32,
    /// Keys.
    pub keys: u32,
    /// Stop once the per-key operations (a batch counts once per key) reach this many
    /// per key on average.
    pub ops_per_key: usize,
    /// Per mille of operations whose outcome is recorded as unknown.
    pub unknown_per_mille: u64,
    /// Per mille of operations that fail without taking effect.
    pub failed_per_mille: u64,
    /// Per mille of operations that are slow (up to 100 times longer), as under injected
    /// latency: they overlap many others and leave fewer quiescent points.
    pub slow_per_mille: u64,
    /// The operation mix, as for the workload.
    pub weights: Weights,
    /// Seeds every choice.
    pub seed: u64,
}

impl Default for SimConfig {
    /// The workload's shape: 8 clients, 4 keys, the default mix; 1,000 operations per key,
    /// 1% unknown, 1% failed, none slow.
    fn default() -> Self {
        SimConfig {
            clients: 8,
            keys: 4,
            ops_per_key: 1_000,
            unknown_per_mille: 10,
            failed_per_mille: 10,
            slow_per_mille: 0,
            weights: Weights::default(),
            seed: 1,
        }
    }
}

/// One operation's slot: who, and when it is invoked, takes effect and completes.
struct Slot {
    client: ClientId,
    invoke: u64,
    point: u64,
    complete: u64,
}

/// A linearizable history of the given shape.
pub fn simulate(config: &SimConfig) -> History {
    let mut rng = Rng::new(config.seed);
    let keys = config.keys.max(1);
    let wanted = config.ops_per_key.saturating_mul(keys as usize);
    // Batches touch two or three keys, so this many slots are always enough.
    let per_client = wanted / config.clients.max(1) as usize + 1;
    let mut slots = Vec::with_capacity(per_client * config.clients as usize);
    for client in 0..config.clients {
        let mut t = rng.below(20);
        for _ in 0..per_client {
            let stretch = if rng.below(1000) < config.slow_per_mille {
                1 + rng.below(100)
            } else {
                1
            };
            let point = t + 1 + rng.below(20 * stretch);
            let complete = point + 1 + rng.below(20 * stretch);
            slots.push(Slot {
                client,
                invoke: t,
                point,
                complete,
            });
            t = complete + 1 + rng.below(5);
        }
    }
    slots.sort_by_key(|s| (s.point, s.client));
    let mut state: Vec<Option<ValueId>> = vec![None; keys as usize];
    let mut seen: Vec<Vec<Option<ValueId>>> =
        vec![vec![None; keys as usize]; config.clients as usize];
    let mut next_value: ValueId = 1;
    let mut history = History::new();
    let mut done = 0;
    for slot in slots {
        if done >= wanted {
            break;
        }
        let seen = &mut seen[slot.client as usize];
        let op = draw(&mut rng, &config.weights, keys, seen, &mut next_value);
        done += op.keys().len();
        let fate = rng.below(1000);
        let (applies, outcome) = if fate < config.unknown_per_mille {
            (rng.below(2) == 0, Outcome::Unknown)
        } else if fate < config.unknown_per_mille + config.failed_per_mille {
            (false, Outcome::Failed)
        } else {
            (true, Outcome::Ok(Output::Done))
        };
        let output = if applies {
            apply(&op, &mut state)
        } else {
            Output::Done
        };
        let outcome = match outcome {
            Outcome::Ok(_) => {
                learn(seen, &op, &output);
                Outcome::Ok(output)
            }
            other => other,
        };
        let complete = (outcome != Outcome::Unknown || rng.below(2) == 0).then_some(slot.complete);
        history.push(slot.client, op, slot.invoke, complete, outcome);
    }
    history
}

fn draw(
    rng: &mut Rng,
    w: &Weights,
    keys: u32,
    seen: &[Option<ValueId>],
    next_value: &mut ValueId,
) -> Op {
    let kind = w.pick(rng);
    let mut fresh = || {
        *next_value += 1;
        *next_value
    };
    let key = rng.below(u64::from(keys)) as Key;
    let mut batch = || {
        let mut chosen: Vec<Key> = Vec::new();
        let want = (2 + rng.below(2)).min(u64::from(keys));
        while (chosen.len() as u64) < want {
            let k = rng.below(u64::from(keys)) as Key;
            if !chosen.contains(&k) {
                chosen.push(k);
            }
        }
        chosen
    };
    match kind {
        1 => Op::Put {
            key,
            value: fresh(),
        },
        2 => Op::Delete { key },
        3 => Op::Cas {
            key,
            expected: seen.get(key as usize).copied().flatten(),
            new: fresh(),
        },
        4 => Op::SetIfNotExists {
            key,
            value: fresh(),
        },
        5 => Op::GetAndDelete { key },
        6 => Op::BatchGet { keys: batch() },
        7 => Op::BatchPut {
            entries: batch().into_iter().map(|k| (k, fresh())).collect(),
        },
        8 => Op::BatchDelete { keys: batch() },
        _ => Op::Get { key },
    }
}

/// The register semantics on every key.
fn apply(op: &Op, state: &mut [Option<ValueId>]) -> Output {
    match op {
        Op::Get { key } => Output::Value(state.get(*key as usize).copied().flatten()),
        Op::Put { key, value } => {
            if let Some(s) = state.get_mut(*key as usize) {
                *s = Some(*value);
            }
            Output::Done
        }
        Op::Delete { key } => Output::Bool(
            state
                .get_mut(*key as usize)
                .and_then(Option::take)
                .is_some(),
        ),
        Op::GetAndDelete { key } => {
            Output::Value(state.get_mut(*key as usize).and_then(Option::take))
        }
        Op::Cas { key, expected, new } => Output::Bool(match state.get_mut(*key as usize) {
            Some(s) if *s == *expected => {
                *s = Some(*new);
                true
            }
            _ => false,
        }),
        Op::SetIfNotExists { key, value } => Output::Bool(match state.get_mut(*key as usize) {
            Some(s) if s.is_none() => {
                *s = Some(*value);
                true
            }
            _ => false,
        }),
        Op::BatchGet { keys } => Output::Values(
            keys.iter()
                .map(|k| state.get(*k as usize).copied().flatten())
                .collect(),
        ),
        Op::BatchPut { entries } => {
            for (k, v) in entries {
                if let Some(s) = state.get_mut(*k as usize) {
                    *s = Some(*v);
                }
            }
            Output::Done
        }
        Op::BatchDelete { keys } => Output::Count(
            keys.iter()
                .filter(|k| state.get_mut(**k as usize).and_then(Option::take).is_some())
                .count() as u64,
        ),
    }
}

/// What a client saw, as the workload's clients track it (so that some CASes succeed).
fn learn(seen: &mut [Option<ValueId>], op: &Op, output: &Output) {
    let mut set = |key: Key, v: Option<ValueId>| {
        if let Some(s) = seen.get_mut(key as usize) {
            *s = v;
        }
    };
    match (op, output) {
        (Op::Get { key }, Output::Value(v)) => set(*key, *v),
        (Op::Put { key, value }, _) => set(*key, Some(*value)),
        (Op::Cas { key, new, .. }, Output::Bool(true)) => set(*key, Some(*new)),
        (Op::SetIfNotExists { key, value }, Output::Bool(true)) => set(*key, Some(*value)),
        (Op::Delete { key } | Op::GetAndDelete { key }, _) => set(*key, None),
        _ => {}
    }
}
