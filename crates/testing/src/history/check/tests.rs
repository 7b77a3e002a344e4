//! The checker on hand-written histories, and against a brute-force search on random
//! small ones.

use std::collections::HashSet;

use super::*;
use crate::history::op::{Op, Outcome, Output, ValueId};
use crate::history::rng::Rng;

fn ok(v: Option<ValueId>) -> Outcome {
    Outcome::Ok(Output::Value(v))
}
fn done() -> Outcome {
    Outcome::Ok(Output::Done)
}
fn yes(b: bool) -> Outcome {
    Outcome::Ok(Output::Bool(b))
}
fn get(h: &mut History, at: (u64, u64), v: Option<ValueId>) -> OpId {
    h.push(9, Op::Get { key: 0 }, at.0, Some(at.1), ok(v))
}
fn put(h: &mut History, at: (u64, Option<u64>), value: ValueId, outcome: Outcome) -> OpId {
    h.push(1, Op::Put { key: 0, value }, at.0, at.1, outcome)
}

fn report(verdict: Verdict) -> Report {
    match verdict {
        Verdict::NotLinearizable(report) => report,
        other => panic!("expected a violation, got {other}"),
    }
}

#[test]
fn a_stale_read_is_caught_and_reported() {
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    put(&mut h, (2, Some(3)), 2, done());
    let stale = get(&mut h, (4, 5), Some(1));
    let r = report(check(&h));
    assert_eq!((r.key, r.stuck, r.placed, r.ops), (0, stale, 2, 3));
    let text = r.to_string();
    assert!(text.contains("key k0"), "{text}");
    assert!(text.contains("get(k0) -> ok v1"), "{text}");
    assert!(text.contains("=> v2"), "{text}");
}

#[test]
fn concurrent_put_and_gets_are_linearizable() {
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    put(&mut h, (2, Some(9)), 2, done());
    get(&mut h, (3, 4), Some(2));
    get(&mut h, (3, 10), Some(2));
    get(&mut h, (5, 6), Some(2));
    get(&mut h, (10, 11), Some(2));
    assert_eq!(check(&h), Verdict::Linearizable);
    // Reading the new value, then the old one, while the put is still running is not.
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    put(&mut h, (2, Some(9)), 2, done());
    get(&mut h, (3, 4), Some(2));
    get(&mut h, (5, 6), Some(1));
    report(check(&h));
}

#[test]
fn an_unknown_put_may_appear_late_or_never() {
    for reads in [vec![1, 1, 1], vec![1, 2, 2], vec![2, 2, 2]] {
        let mut h = History::new();
        put(&mut h, (0, Some(1)), 1, done());
        put(&mut h, (2, Some(3)), 2, Outcome::Unknown);
        for (i, v) in reads.iter().enumerate() {
            get(&mut h, (10 + 2 * i as u64, 11 + 2 * i as u64), Some(*v));
        }
        assert_eq!(check(&h), Verdict::Linearizable, "reads {reads:?}");
    }
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    put(&mut h, (2, None), 2, Outcome::Unknown);
    get(&mut h, (10, 11), Some(2));
    get(&mut h, (12, 13), Some(1));
    report(check(&h));
}

#[test]
fn a_failed_put_must_not_appear() {
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    put(&mut h, (2, Some(3)), 2, Outcome::Failed);
    let read = get(&mut h, (4, 5), Some(2));
    assert_eq!(report(check(&h)).stuck, read);
}

#[test]
fn cas_swaps_only_from_its_expectation() {
    let cas = |expected, new| Op::Cas {
        key: 0,
        expected,
        new,
    };
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    h.push(2, cas(Some(1), 2), 2, Some(3), yes(true));
    h.push(3, cas(Some(1), 3), 4, Some(5), yes(false));
    h.push(3, cas(None, 4), 4, Some(5), yes(false));
    get(&mut h, (6, 7), Some(2));
    assert_eq!(check(&h), Verdict::Linearizable);
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    h.push(2, cas(Some(1), 2), 2, Some(3), yes(true));
    h.push(3, cas(Some(1), 3), 4, Some(5), yes(true));
    report(check(&h));
}

#[test]
fn get_and_delete_consumes_a_value_once() {
    let gad = Op::GetAndDelete { key: 0 };
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    h.push(2, gad.clone(), 2, Some(6), ok(Some(1)));
    h.push(3, gad.clone(), 3, Some(7), ok(Some(1)));
    report(check(&h));
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    h.push(2, gad.clone(), 2, Some(6), ok(Some(1)));
    h.push(3, gad, 3, Some(7), ok(None));
    assert_eq!(check(&h), Verdict::Linearizable);
}

#[test]
fn batches_split_per_key() {
    let mut h = History::new();
    let both = vec![0, 1];
    h.push(
        1,
        Op::BatchPut {
            entries: vec![(0, 1), (1, 2)],
        },
        0,
        Some(1),
        done(),
    );
    let values = Outcome::Ok(Output::Values(vec![Some(1), Some(2)]));
    h.push(2, Op::BatchGet { keys: both.clone() }, 2, Some(3), values);
    let count = Outcome::Ok(Output::Count(2));
    h.push(3, Op::BatchDelete { keys: both.clone() }, 4, Some(5), count);
    get(&mut h, (6, 7), None);
    // A failed batch write may be partly applied.
    let entries = vec![(0, 3), (1, 4)];
    h.push(4, Op::BatchPut { entries }, 8, Some(9), Outcome::Failed);
    get(&mut h, (10, 11), Some(3));
    h.push(5, Op::Get { key: 1 }, 10, Some(11), ok(None));
    assert_eq!(check(&h), Verdict::Linearizable);
    // Key 1 read back after the acknowledged batch_delete.
    h.push(5, Op::Get { key: 1 }, 12, Some(13), ok(Some(2)));
    assert_eq!(report(check(&h)).key, 1);
}

#[test]
fn unknown_operations_chain() {
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    let cas = |expected, new| Op::Cas {
        key: 0,
        expected: Some(expected),
        new,
    };
    h.push(2, cas(2, 3), 2, None, Outcome::Unknown);
    h.push(3, cas(1, 2), 3, Some(4), Outcome::Unknown);
    h.push(4, Op::Delete { key: 0 }, 5, None, Outcome::Unknown);
    get(&mut h, (6, 7), Some(3));
    get(&mut h, (8, 9), None);
    assert_eq!(check(&h), Verdict::Linearizable);
    get(&mut h, (10, 11), Some(1));
    report(check(&h));
}

#[test]
fn an_unread_unknown_write_explains_presence() {
    let mut h = History::new();
    put(&mut h, (0, None), 1, Outcome::Unknown);
    let sine = Op::SetIfNotExists { key: 0, value: 2 };
    h.push(2, sine, 2, Some(3), yes(false));
    h.push(3, Op::Delete { key: 0 }, 4, Some(5), yes(true));
    h.push(3, Op::Delete { key: 0 }, 6, Some(7), yes(false));
    assert_eq!(check(&h), Verdict::Linearizable);
    h.push(3, Op::Delete { key: 0 }, 8, Some(9), yes(true));
    report(check(&h));
}

#[test]
fn hundreds_of_pending_unknown_writes_stay_cheap() {
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    let mut t = 2;
    for v in 0..300 {
        put(&mut h, (t, None), 100 + v, Outcome::Unknown);
        h.push(2, Op::Delete { key: 0 }, t, None, Outcome::Unknown);
        get(&mut h, (t + 1, t + 2), Some(1));
        t += 3;
    }
    get(&mut h, (t, t + 1), Some(250));
    get(&mut h, (t + 2, t + 3), None);
    assert_eq!(check(&h), Verdict::Linearizable);
    get(&mut h, (t + 4, t + 5), Some(1));
    let budget = CheckConfig {
        max_steps: 100_000,
        threads: 1,
    };
    report(check_with(&h, &budget));
}

#[test]
fn malformed_histories_and_budgets_give_unknown() {
    let mut h = History::new();
    put(&mut h, (0, Some(1)), 1, done());
    put(&mut h, (2, Some(3)), 1, done());
    assert!(matches!(check(&h), Verdict::Unknown(r) if r.contains("written by")));
    let mut h = History::new();
    h.push(0, Op::Get { key: 0 }, 0, Some(1), yes(true));
    assert!(matches!(check(&h), Verdict::Unknown(r) if r.contains("does not fit")));
    let mut h = History::new();
    for i in 0..50 {
        put(&mut h, (0, Some(100)), i, done());
    }
    get(&mut h, (101, 102), Some(1000));
    let tiny = CheckConfig {
        max_steps: 10,
        threads: 1,
    };
    assert!(matches!(check_with(&h, &tiny), Verdict::Unknown(r) if r.contains("max_steps")));
}

/// A random single-key history from a simulated execution, with some outcomes hidden or
/// failed and, sometimes, one output corrupted: up to `max_ops` operations invoked in
/// `0..span`, each up to `2 * len` ticks long.
fn random_history(rng: &mut Rng, max_ops: u64, span: u64, len: u64) -> History {
    let n = 2 + rng.below(max_ops - 1) as usize;
    let mut ops: Vec<(u64, u64, u64, Op)> = Vec::new();
    let mut next_value = 1;
    for _ in 0..n {
        let invoke = rng.below(span);
        let point = invoke + rng.below(len);
        let complete = point + rng.below(len);
        let expected = match rng.below(3) {
            0 => None,
            _ => Some(1 + rng.below(next_value)),
        };
        let mut fresh = || {
            next_value += 1;
            next_value
        };
        let op = match rng.below(9) {
            0 => Op::Get { key: 0 },
            1 => Op::Put {
                key: 0,
                value: fresh(),
            },
            2 => Op::Delete { key: 0 },
            3 => Op::Cas {
                key: 0,
                expected,
                new: fresh(),
            },
            4 => Op::SetIfNotExists {
                key: 0,
                value: fresh(),
            },
            5 => Op::GetAndDelete { key: 0 },
            6 => Op::BatchGet { keys: vec![0] },
            7 => Op::BatchPut {
                entries: vec![(0, fresh())],
            },
            _ => Op::BatchDelete { keys: vec![0] },
        };
        ops.push((invoke, point, complete, op));
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (ops[i].1, i));
    let mut state = None;
    let mut outcomes = vec![Outcome::Unknown; n];
    for i in order {
        let batch_write = matches!(ops[i].3, Op::BatchPut { .. } | Op::BatchDelete { .. });
        let fate = rng.below(10);
        let coin = rng.below(2) == 0;
        let applies = fate < 8 || (fate == 8 && coin) || (fate == 9 && batch_write && coin);
        if applies {
            outcomes[i] = Outcome::Ok(apply(&ops[i].3, &mut state));
        }
        if fate == 9 {
            outcomes[i] = Outcome::Failed;
        } else if fate == 8 {
            outcomes[i] = Outcome::Unknown;
        }
    }
    if rng.below(3) == 0 {
        let i = rng.below(n as u64) as usize;
        outcomes[i] = match &outcomes[i] {
            Outcome::Ok(Output::Value(_)) => ok(Some(1 + rng.below(next_value))),
            Outcome::Ok(Output::Bool(b)) => yes(!b),
            other => other.clone(),
        };
    }
    let mut h = History::new();
    for (i, (invoke, _, complete, op)) in ops.into_iter().enumerate() {
        let complete = (outcomes[i] != Outcome::Unknown || rng.below(2) == 0).then_some(complete);
        h.push(i as u32, op, invoke, complete, outcomes[i].clone());
    }
    h
}

/// The register semantics, applied to one key.
fn apply(op: &Op, state: &mut Option<ValueId>) -> Output {
    let old = *state;
    match op {
        Op::Get { .. } => Output::Value(old),
        Op::BatchGet { .. } => Output::Values(vec![old]),
        Op::Put { value, .. } => {
            *state = Some(*value);
            Output::Done
        }
        Op::BatchPut { entries } => {
            *state = entries.first().map(|e| e.1);
            Output::Done
        }
        Op::Delete { .. } => {
            *state = None;
            Output::Bool(old.is_some())
        }
        Op::BatchDelete { .. } => {
            *state = None;
            Output::Count(u64::from(old.is_some()))
        }
        Op::GetAndDelete { .. } => {
            *state = None;
            Output::Value(old)
        }
        Op::Cas { expected, new, .. } => {
            let ok = old == *expected;
            if ok {
                *state = Some(*new);
            }
            Output::Bool(ok)
        }
        Op::SetIfNotExists { value, .. } => {
            let ok = old.is_none();
            if ok {
                *state = Some(*value);
            }
            Output::Bool(ok)
        }
    }
}

/// Every order of every subset, straight from the definition: an Ok op takes effect once
/// with its output; an Unknown op (or a failed batch) at most once, output ignored; a
/// failed single op never. Exponential, for tiny histories only.
fn brute_force(h: &History) -> bool {
    let rs = h.records();
    let must: u32 = (0..rs.len())
        .filter(|&i| matches!(rs[i].outcome, Outcome::Ok(_)))
        .fold(0, |m, i| m | 1 << i);
    let may = |i: usize| match rs[i].outcome {
        Outcome::Ok(_) | Outcome::Unknown => true,
        Outcome::Failed => matches!(rs[i].op, Op::BatchPut { .. } | Op::BatchDelete { .. }),
    };
    let ret = |i: usize| match rs[i].outcome {
        Outcome::Ok(_) => rs[i].complete.unwrap_or(u64::MAX),
        _ => u64::MAX,
    };
    let mut seen = HashSet::new();
    let mut stack = vec![(0u32, None::<ValueId>)];
    while let Some((done, state)) = stack.pop() {
        if done & must == must {
            return true;
        }
        if !seen.insert((done, state)) {
            continue;
        }
        for i in (0..rs.len()).filter(|&i| done & 1 << i == 0 && may(i)) {
            let blocked = (0..rs.len()).any(|j| {
                done & 1 << j == 0 && j != i && must & 1 << j != 0 && ret(j) < rs[i].invoke
            });
            if blocked {
                continue;
            }
            let mut next = state;
            let out = apply(&rs[i].op, &mut next);
            let fits = match &rs[i].outcome {
                Outcome::Ok(Output::Count(_)) => true,
                Outcome::Ok(expected) => *expected == out,
                _ => true,
            };
            if fits {
                stack.push((done | 1 << i, next));
            }
        }
    }
    false
}

/// Compares the checker with [`brute_force`] on `rounds` random histories; both verdicts
/// must come up often.
fn agrees_with_brute_force(seed: u64, rounds: usize, max_ops: u64, span: u64, len: u64) {
    let mut rng = Rng::new(seed);
    let (mut yes_count, mut no_count) = (0, 0);
    for round in 0..rounds {
        let h = random_history(&mut rng, max_ops, span, len);
        let expected = brute_force(&h);
        let got = check_with(
            &h,
            &CheckConfig {
                max_steps: 1_000_000,
                threads: 1,
            },
        );
        assert!(
            !matches!(got, Verdict::Unknown(_)),
            "round {round}: {got}\n{h}"
        );
        assert_eq!(got.is_linearizable(), expected, "round {round}: {got}\n{h}");
        if expected {
            yes_count += 1;
        } else {
            no_count += 1;
        }
    }
    assert!(
        yes_count > rounds / 20 && no_count > rounds / 20,
        "{yes_count} / {no_count}"
    );
}

#[test]
fn agrees_with_brute_force_on_random_small_histories() {
    agrees_with_brute_force(42, 20_000, 7, 16, 4);
}

#[test]
fn agrees_with_brute_force_on_random_long_overlapping_histories() {
    // Up to 14 operations, long enough to leave operations in flight at most cuts.
    agrees_with_brute_force(43, 5_000, 14, 30, 8);
}
