//! Runs operations on a backend and on the model, and says where they first disagree.

use std::fmt;
use std::time::Duration;

use state_core::{Entry, ErrorKind, FencingToken, StateBackend, Ttl};

use super::ops::{Blob, Expected, Op};
use super::reference::Model;

/// What one step observably returned.
#[derive(Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write that returns nothing.
    Done,
    /// A single value (`get`, `get_and_delete`).
    Value(Option<Blob>),
    /// A yes/no answer (`delete`, `set_if_not_exists`, `compare_and_swap`).
    Flag(bool),
    /// A number (`count`, `clear`, `batch_delete`).
    Number(u64),
    /// Several values (`batch_get`).
    Values(Vec<Option<Blob>>),
    /// Entries in key order (`scan`).
    Entries(Vec<(Blob, Blob)>),
    /// `put_fenced` was rejected with `ErrorKind::Fenced`.
    Fenced,
    /// `ttl`: missing.
    Missing,
    /// `ttl`: persistent.
    Persistent,
    /// `ttl`: remaining, at most this long (the model gives the TTL it was written with).
    Remaining(Duration),
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done => f.write_str("Ok(())"),
            Outcome::Value(v) => write!(f, "{v:?}"),
            Outcome::Flag(b) => write!(f, "{b}"),
            Outcome::Number(n) => write!(f, "{n}"),
            Outcome::Values(v) => write!(f, "{v:?}"),
            Outcome::Entries(e) => write!(f, "{e:?}"),
            Outcome::Fenced => f.write_str("Err(Fenced)"),
            Outcome::Missing => f.write_str("Ttl::Missing"),
            Outcome::Persistent => f.write_str("Ttl::Persistent"),
            Outcome::Remaining(d) => write!(f, "Ttl::Remaining({d:?})"),
        }
    }
}

impl Outcome {
    /// Whether the backend's `actual` outcome satisfies the model's `self`. Equal, except
    /// that a remaining TTL must be positive and at most the model's.
    pub fn admits(&self, actual: &Outcome) -> bool {
        match (self, actual) {
            (Outcome::Remaining(at_most), Outcome::Remaining(left)) => {
                !left.is_zero() && left <= at_most
            }
            _ => self == actual,
        }
    }
}

fn blob(v: Option<impl AsRef<[u8]>>) -> Option<Blob> {
    v.map(|v| Blob(v.as_ref().to_vec()))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The `expected` argument of a `compare_and_swap`, resolved against the model.
pub fn resolve(model: &Model, key: &Blob, expected: &Expected) -> Option<Vec<u8>> {
    match expected {
        Expected::Current => model.get(&key.0),
        Expected::Absent => None,
        Expected::Value(v) => Some(v.0.clone()),
    }
}

/// Applies `op` to the model; returns what the backend must answer.
pub fn apply_model(model: &mut Model, op: &Op) -> Outcome {
    match op {
        Op::Put { key, value } => {
            model.put(&key.0, &value.0, None);
            Outcome::Done
        }
        Op::PutWithTtl {
            key,
            value,
            ttl_secs,
        } => {
            model.put(&key.0, &value.0, Some(secs(*ttl_secs)));
            Outcome::Done
        }
        Op::Get { key } => Outcome::Value(blob(model.get(&key.0))),
        Op::Delete { key } => Outcome::Flag(model.delete(&key.0).is_some()),
        Op::GetAndDelete { key } => Outcome::Value(blob(model.delete(&key.0))),
        Op::SetIfNotExists {
            key,
            value,
            ttl_secs,
        } => Outcome::Flag(model.set_if_not_exists(&key.0, &value.0, ttl_secs.map(secs))),
        Op::CompareAndSwap { key, expected, new } => {
            let expected = resolve(model, key, expected);
            Outcome::Flag(model.compare_and_swap(&key.0, expected.as_deref(), &new.0))
        }
        Op::BatchPut { entries } => {
            for (k, v) in entries {
                model.put(&k.0, &v.0, None);
            }
            Outcome::Done
        }
        Op::BatchGet { keys } => {
            Outcome::Values(keys.iter().map(|k| blob(model.get(&k.0))).collect())
        }
        Op::BatchDelete { keys } => {
            Outcome::Number(keys.iter().filter(|k| model.delete(&k.0).is_some()).count() as u64)
        }
        Op::Count { prefix } => Outcome::Number(model.count(&prefix.0)),
        Op::Scan { prefix } => Outcome::Entries(
            model
                .scan(&prefix.0)
                .into_iter()
                .map(|(k, v)| (Blob(k), Blob(v)))
                .collect(),
        ),
        Op::Clear { prefix } => Outcome::Number(model.clear(&prefix.0)),
        Op::PutFenced { key, value, token } => match model.put_fenced(&key.0, &value.0, *token) {
            Ok(()) => Outcome::Done,
            Err(_) => Outcome::Fenced,
        },
        Op::Ttl { key } => match model.ttl(&key.0) {
            None => Outcome::Missing,
            Some(None) => Outcome::Persistent,
            Some(Some(ttl)) => Outcome::Remaining(ttl),
        },
    }
}

/// Applies `op` to the backend. `expected` is the resolved argument of a
/// `compare_and_swap` (ignored otherwise). An error other than a fenced rejection is
/// returned as a message.
pub async fn apply_backend(
    b: &dyn StateBackend,
    ordered_scan: bool,
    op: &Op,
    expected: Option<&[u8]>,
) -> Result<Outcome, String> {
    let out = match op {
        Op::Put { key, value } => b.put(&key.0, &value.0).await.map(|()| Outcome::Done),
        Op::PutWithTtl {
            key,
            value,
            ttl_secs,
        } => b
            .put_with_ttl(&key.0, &value.0, secs(*ttl_secs))
            .await
            .map(|()| Outcome::Done),
        Op::Get { key } => b.get(&key.0).await.map(|v| Outcome::Value(blob(v))),
        Op::Delete { key } => b.delete(&key.0).await.map(Outcome::Flag),
        Op::GetAndDelete { key } => b
            .get_and_delete(&key.0)
            .await
            .map(|v| Outcome::Value(blob(v))),
        Op::SetIfNotExists {
            key,
            value,
            ttl_secs,
        } => b
            .set_if_not_exists(&key.0, &value.0, ttl_secs.map(secs))
            .await
            .map(Outcome::Flag),
        Op::CompareAndSwap { key, new, .. } => b
            .compare_and_swap(&key.0, expected, &new.0)
            .await
            .map(Outcome::Flag),
        Op::BatchPut { entries } => {
            let refs: Vec<(&[u8], &[u8])> =
                entries.iter().map(|(k, v)| (&k.0[..], &v.0[..])).collect();
            b.batch_put(&refs).await.map(|()| Outcome::Done)
        }
        Op::BatchGet { keys } => {
            let refs: Vec<&[u8]> = keys.iter().map(|k| &k.0[..]).collect();
            b.batch_get(&refs)
                .await
                .map(|vs| Outcome::Values(vs.into_iter().map(blob).collect()))
        }
        Op::BatchDelete { keys } => {
            let refs: Vec<&[u8]> = keys.iter().map(|k| &k.0[..]).collect();
            b.batch_delete(&refs).await.map(Outcome::Number)
        }
        Op::Count { prefix } => b.count(&prefix.0).await.map(Outcome::Number),
        Op::Scan { prefix } => {
            return scan(b, &prefix.0, ordered_scan).await.map(|entries| {
                Outcome::Entries(
                    entries
                        .into_iter()
                        .map(|e| (Blob(e.key.to_vec()), Blob(e.value.to_vec())))
                        .collect(),
                )
            });
        }
        Op::Clear { prefix } => b.clear(&prefix.0).await.map(Outcome::Number),
        Op::PutFenced { key, value, token } => {
            match b.put_fenced(&key.0, &value.0, FencingToken(*token)).await {
                Err(e) if e.kind() == ErrorKind::Fenced => Ok(Outcome::Fenced),
                other => other.map(|()| Outcome::Done),
            }
        }
        Op::Ttl { key } => b.ttl(&key.0).await.map(|t| match t {
            Ttl::Missing => Outcome::Missing,
            Ttl::Persistent => Outcome::Persistent,
            Ttl::Remaining(d) => Outcome::Remaining(d),
        }),
    };
    out.map_err(|e| format!("the backend returned an error: {e} [kind {:?}]", e.kind()))
}

/// Collects a scan in key order: an ordered backend must already be in order; an
/// unordered one may repeat identical entries, which are dropped.
pub async fn scan(
    b: &dyn StateBackend,
    prefix: &[u8],
    ordered: bool,
) -> Result<Vec<Entry>, String> {
    collect(b.scan(prefix), ordered, "scan").await
}

/// Collects an export the same way; repeats are never allowed.
pub async fn export(b: &dyn StateBackend, ordered: bool) -> Result<Vec<Entry>, String> {
    let entries = collect(b.export(b""), ordered, "export").await?;
    Ok(entries)
}

async fn collect(
    stream: state_core::BoxStream<'_, state_core::Result<Entry>>,
    ordered: bool,
    what: &str,
) -> Result<Vec<Entry>, String> {
    let mut entries = state_core::stream::try_collect(stream)
        .await
        .map_err(|e| format!("{what} failed: {e}"))?;
    if ordered
        && entries
            .windows(2)
            .any(|w| matches!(w, [a, b] if a.key >= b.key))
    {
        return Err(format!(
            "{what} claims ordered_scan but returned keys out of order"
        ));
    }
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    // A scan hands out each key once (RELIABILITY 16): a repeat is a failure, even with the
    // same contents, never something to drop here.
    match entries.windows(2).find_map(|w| match w {
        [a, b] if a.key == b.key => Some(crate::harness::show(&a.key)),
        _ => None,
    }) {
        Some(key) => Err(format!("{what} returned {key} more than once")),
        None => Ok(entries),
    }
}

/// Runs `ops` on the backend and the model, comparing every step and the final state.
/// Returns the first disagreement, naming the step.
pub async fn run_sequence(b: &dyn StateBackend, ops: &[Op]) -> Result<(), String> {
    let ordered = b.capabilities().ordered_scan;
    let mut model = Model::new();
    for (step, op) in ops.iter().enumerate() {
        let expected = match op {
            Op::CompareAndSwap { key, expected, .. } => resolve(&model, key, expected),
            _ => None,
        };
        let want = apply_model(&mut model, op);
        let got = apply_backend(b, ordered, op, expected.as_deref())
            .await
            .map_err(|e| format!("step {step} {op:?}: {e}"))?;
        if !want.admits(&got) {
            return Err(format!(
                "step {step} {op:?}: the model answers {want:?}, the backend {got:?}"
            ));
        }
    }
    let want: Vec<(Vec<u8>, Vec<u8>)> = model.scan(b"");
    let got: Vec<(Vec<u8>, Vec<u8>)> = scan(b, b"", ordered)
        .await?
        .into_iter()
        .map(|e| (e.key.to_vec(), e.value.to_vec()))
        .collect();
    if want != got {
        let show = |v: &[(Vec<u8>, Vec<u8>)]| -> Vec<(Blob, Blob)> {
            v.iter()
                .map(|(k, v)| (Blob(k.clone()), Blob(v.clone())))
                .collect()
        };
        return Err(format!(
            "after the last step the model holds {:?}, the backend {:?}",
            show(&want),
            show(&got)
        ));
    }
    Ok(())
}
