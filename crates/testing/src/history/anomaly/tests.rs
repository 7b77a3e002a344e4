use super::*;
use crate::history::op::UNDECODABLE;

fn done() -> Outcome {
    Outcome::Ok(Output::Done)
}
fn value(v: Option<ValueId>) -> Outcome {
    Outcome::Ok(Output::Value(v))
}
fn put(h: &mut History, at: (u64, u64), v: ValueId, outcome: Outcome) {
    h.push(1, Op::Put { key: 0, value: v }, at.0, Some(at.1), outcome);
}
fn get(h: &mut History, at: (u64, u64), v: ValueId) {
    h.push(2, Op::Get { key: 0 }, at.0, Some(at.1), value(Some(v)));
}

#[test]
fn values_from_nowhere() {
    let mut h = History::new();
    put(&mut h, (0, 1), 1, Outcome::Failed);
    put(&mut h, (0, 1), 2, Outcome::Unknown);
    let cas = Op::Cas {
        key: 0,
        expected: None,
        new: 3,
    };
    h.push(3, cas, 0, Some(1), Outcome::Ok(Output::Bool(false)));
    put(&mut h, (20, 21), 4, done());
    h.push(1, Op::Put { key: 1, value: 5 }, 0, Some(1), done());
    get(&mut h, (2, 3), 1); // its only write failed
    get(&mut h, (4, 5), 2); // unknown write: fine
    get(&mut h, (6, 7), 3); // the cas did not swap
    get(&mut h, (8, 9), 4); // written only later
    get(&mut h, (10, 11), 5); // written to another key
    get(&mut h, (12, 13), UNDECODABLE);
    get(&mut h, (14, 15), 99);
    let a = anomalies(&h);
    assert_eq!(a.values_from_nowhere, 6, "{a}");
    assert_eq!((a.stale_reads, a.resurrections), (0, 0), "{a}");
    assert!(!a.is_clean());
    assert_eq!(
        a.by_kind[&OpKind::Put],
        Counts {
            ok: 2,
            failed: 1,
            unknown: 1
        }
    );
    assert_eq!(a.total.total(), h.len());
}

#[test]
fn stale_reads_and_lost_writes() {
    let mut h = History::new();
    put(&mut h, (0, 1), 1, done());
    put(&mut h, (2, 3), 2, done());
    put(&mut h, (2, 4), 3, done());
    put(&mut h, (2, 30), 4, done()); // acknowledged after the reads began: not a witness
    get(&mut h, (10, 11), 1);
    get(&mut h, (12, 13), 1);
    let entries = vec![(0, 5)];
    h.push(1, Op::BatchGet { keys: vec![0] }, 14, Some(15), value(None));
    h.push(1, Op::BatchPut { entries }, 16, Some(17), done());
    let values = Outcome::Ok(Output::Values(vec![Some(1)]));
    h.push(1, Op::BatchGet { keys: vec![0] }, 18, Some(19), values);
    let a = anomalies(&h);
    assert_eq!((a.stale_reads, a.lost_writes), (3, 3), "{a}");
    assert_eq!((a.values_from_nowhere, a.resurrections), (0, 0), "{a}");
    assert!(
        a.examples.iter().any(|e| e.contains("stale read: #4")),
        "{a}"
    );
}

#[test]
fn resurrections() {
    let mut h = History::new();
    put(&mut h, (0, 1), 1, done());
    h.push(
        3,
        Op::Delete { key: 0 },
        2,
        Some(3),
        Outcome::Ok(Output::Bool(true)),
    );
    get(&mut h, (4, 5), 1);
    put(&mut h, (6, 7), 2, done());
    h.push(3, Op::GetAndDelete { key: 0 }, 8, Some(20), value(Some(2)));
    get(&mut h, (10, 11), 2); // the get_and_delete was not acknowledged yet
    put(&mut h, (21, 22), 3, done());
    let count = Outcome::Ok(Output::Count(1));
    h.push(3, Op::BatchDelete { keys: vec![0, 1] }, 23, Some(24), count);
    h.push(3, Op::GetAndDelete { key: 0 }, 25, Some(26), value(Some(3)));
    let a = anomalies(&h);
    assert_eq!(a.resurrections, 2, "{a}");
    assert_eq!((a.stale_reads, a.values_from_nowhere), (0, 0), "{a}");
}

#[test]
fn a_clean_history_is_clean() {
    let mut h = History::new();
    put(&mut h, (0, 3), 1, done());
    get(&mut h, (1, 2), 1);
    put(&mut h, (4, 9), 2, done());
    get(&mut h, (5, 6), 1);
    get(&mut h, (7, 8), 2);
    let a = anomalies(&h);
    assert!(a.is_clean(), "{a}");
    assert_eq!(a.lost_writes, 0);
}
