//! Property: inputs at and past the limits get the right answer or a clear error that
//! changes nothing (RELIABILITY.md case 25).
//!
//! A case is a short sequence of probes. Keys are empty, binary (0x00 and 0xFF included),
//! exactly [`Capabilities::max_key_len`] bytes or one byte more; values are empty, binary
//! or one byte over [`Capabilities::max_value_len`], and in a few cases exactly at it; TTLs
//! are zero, 1 ms, a few milliseconds, hours, [`MAX_TTL`] or just over it. Limits are read
//! from the backend's capabilities when the case runs, so the same case fits every backend.
//!
//! - A probe with any input over a limit (or an empty key, or a TTL of zero or over
//!   [`MAX_TTL`]) must fail with `InvalidInput` and a message, and write nothing: every
//!   valid key of the probe still reads as the model says, and the namespace holds as many
//!   keys as before.
//! - Any other probe must succeed with the model's answer, and its write reads back: the
//!   value, and for a TTL write a remaining TTL no longer than the one given and not far
//!   below it. A key with a TTL of a few milliseconds may be gone already when read back;
//!   the probe then waits past its expiry and checks that every read misses it.
//! - After the last probe a scan of the namespace equals the model.

use std::fmt;
use std::time::Duration;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use state_core::{Capabilities, ErrorKind, FencingToken, MAX_TTL, StateBackend, StateError, Ttl};

use super::exec::scan;
use super::ops::{Blob, key, value};
use super::reference::Model;
use crate::clock::Stopwatch;
use crate::harness::show;

/// Bytes of an edge input: given outright, or exactly the limit / one byte over it, of one
/// fill byte (the limit is the backend's, known only when the case runs).
#[derive(Clone, PartialEq, Eq)]
pub enum EdgeBytes {
    /// These bytes.
    Given(Blob),
    /// `limit` bytes, all this one.
    AtMax(u8),
    /// `limit + 1` bytes, all this one.
    OverMax(u8),
}

impl fmt::Debug for EdgeBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EdgeBytes::Given(blob) => write!(f, "{blob:?}"),
            EdgeBytes::AtMax(fill) => write!(f, "[{fill:#04x}; limit]"),
            EdgeBytes::OverMax(fill) => write!(f, "[{fill:#04x}; limit + 1]"),
        }
    }
}

impl EdgeBytes {
    /// The bytes, for a backend whose limit is `limit`.
    pub fn bytes(&self, limit: usize) -> Vec<u8> {
        match self {
            EdgeBytes::Given(blob) => blob.0.clone(),
            EdgeBytes::AtMax(fill) => vec![*fill; limit],
            EdgeBytes::OverMax(fill) => vec![*fill; limit.saturating_add(1)],
        }
    }
}

/// A TTL at or past an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EdgeTtl {
    /// Zero: invalid input.
    Zero,
    /// This many milliseconds (1 to 20): expires during the case.
    Millis(u64),
    /// This many hours: outlives the case.
    Hours(u64),
    /// [`MAX_TTL`], the longest accepted.
    Max,
    /// One millisecond over [`MAX_TTL`]: invalid input.
    OverMax,
}

impl EdgeTtl {
    /// The duration.
    pub fn duration(self) -> Duration {
        match self {
            EdgeTtl::Zero => Duration::ZERO,
            EdgeTtl::Millis(ms) => Duration::from_millis(ms),
            EdgeTtl::Hours(h) => Duration::from_secs(h * 3600),
            EdgeTtl::Max => MAX_TTL,
            EdgeTtl::OverMax => MAX_TTL + Duration::from_millis(1),
        }
    }

    fn is_valid(self) -> bool {
        !matches!(self, EdgeTtl::Zero | EdgeTtl::OverMax)
    }

    fn expires_during_the_case(self) -> bool {
        matches!(self, EdgeTtl::Millis(_))
    }
}

/// One step of an edge case.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the variants mirror the StateBackend methods of the same names
pub enum Probe {
    Put {
        key: EdgeBytes,
        value: EdgeBytes,
    },
    PutWithTtl {
        key: EdgeBytes,
        value: EdgeBytes,
        ttl: EdgeTtl,
    },
    SetIfNotExists {
        key: EdgeBytes,
        value: EdgeBytes,
        ttl: Option<EdgeTtl>,
    },
    /// Expects the model's current value, so that a valid swap succeeds.
    CompareAndSwap {
        key: EdgeBytes,
        new: EdgeBytes,
    },
    PutFenced {
        key: EdgeBytes,
        value: EdgeBytes,
        token: u64,
    },
    BatchPut {
        entries: Vec<(EdgeBytes, EdgeBytes)>,
    },
    Get {
        key: EdgeBytes,
    },
    Delete {
        key: EdgeBytes,
    },
    Ttl {
        key: EdgeBytes,
    },
    BatchGet {
        keys: Vec<EdgeBytes>,
    },
    BatchDelete {
        keys: Vec<EdgeBytes>,
    },
}

fn fill() -> impl Strategy<Value = u8> {
    select(vec![0x00, 0xFF, b'k'])
}

/// A key: mostly short ones that collide, some arbitrary bytes, and the empty, the longest
/// and the one-too-long key.
pub fn edge_key() -> impl Strategy<Value = EdgeBytes> {
    prop_oneof![
        1 => Just(EdgeBytes::Given(Blob(Vec::new()))),
        6 => key().prop_map(EdgeBytes::Given),
        2 => vec(any::<u8>(), 1..=24).prop_map(|b| EdgeBytes::Given(Blob(b))),
        1 => fill().prop_map(EdgeBytes::AtMax),
        1 => fill().prop_map(EdgeBytes::OverMax),
    ]
}

/// A value: short or empty, arbitrary bytes, now and then one byte over the limit (cheap:
/// it is refused before anything is sent). Values of exactly the limit come from
/// [`edge_cases`], in a few cases only.
pub fn edge_value() -> impl Strategy<Value = EdgeBytes> {
    prop_oneof![
        8 => value().prop_map(EdgeBytes::Given),
        4 => vec(any::<u8>(), 0..=64).prop_map(|b| EdgeBytes::Given(Blob(b))),
        1 => fill().prop_map(EdgeBytes::OverMax),
    ]
}

/// A TTL at an edge, or an ordinary one.
pub fn edge_ttl() -> impl Strategy<Value = EdgeTtl> {
    prop_oneof![
        1 => Just(EdgeTtl::Zero),
        2 => Just(EdgeTtl::Millis(1)),
        1 => (2u64..=20).prop_map(EdgeTtl::Millis),
        2 => (1u64..=2).prop_map(EdgeTtl::Hours),
        2 => Just(EdgeTtl::Max),
        1 => Just(EdgeTtl::OverMax),
    ]
}

/// One probe.
pub fn probe() -> impl Strategy<Value = Probe> {
    prop_oneof![
        3 => (edge_key(), edge_value()).prop_map(|(key, value)| Probe::Put { key, value }),
        3 => (edge_key(), edge_value(), edge_ttl())
            .prop_map(|(key, value, ttl)| Probe::PutWithTtl { key, value, ttl }),
        2 => (edge_key(), edge_value(), proptest::option::of(edge_ttl()))
            .prop_map(|(key, value, ttl)| Probe::SetIfNotExists { key, value, ttl }),
        2 => (edge_key(), edge_value()).prop_map(|(key, new)| Probe::CompareAndSwap { key, new }),
        1 => (edge_key(), edge_value(), 0u64..4)
            .prop_map(|(key, value, token)| Probe::PutFenced { key, value, token }),
        2 => vec((edge_key(), edge_value()), 0..4).prop_map(|entries| Probe::BatchPut { entries }),
        2 => edge_key().prop_map(|key| Probe::Get { key }),
        1 => edge_key().prop_map(|key| Probe::Delete { key }),
        2 => edge_key().prop_map(|key| Probe::Ttl { key }),
        1 => vec(edge_key(), 0..4).prop_map(|keys| Probe::BatchGet { keys }),
        1 => vec(edge_key(), 0..4).prop_map(|keys| Probe::BatchDelete { keys }),
    ]
}

/// A case: 1 to 11 probes, and in about one case in fifty first a write of a value of
/// exactly the limit (tens of MB for most backends: rare, so the suites stay quick).
pub fn edge_cases() -> impl Strategy<Value = (Option<Probe>, Vec<Probe>)> {
    let largest = (edge_key(), fill(), 0u8..3).prop_map(|(key, fill, how)| {
        let value = EdgeBytes::AtMax(fill);
        match how {
            0 => Probe::Put { key, value },
            1 => Probe::BatchPut {
                entries: vec![(key, value)],
            },
            _ => Probe::PutWithTtl {
                key,
                value,
                ttl: EdgeTtl::Hours(1),
            },
        }
    });
    (
        proptest::option::weighted(0.02, largest),
        vec(probe(), 1..12),
    )
}

/// Runs the probes of one case on `b`, checking each against the model.
pub async fn run_edges(b: &dyn StateBackend, probes: &[Probe]) -> Result<(), String> {
    let caps = b.capabilities();
    let mut model = Model::new();
    for (step, probe) in probes.iter().enumerate() {
        run_probe(b, &caps, &mut model, probe)
            .await
            .map_err(|e| format!("step {step} {probe:?}: {e}"))?;
    }
    let want = model.scan(b"");
    let got: Vec<(Vec<u8>, Vec<u8>)> = scan(b, b"", caps.ordered_scan)
        .await?
        .into_iter()
        .map(|e| (e.key.to_vec(), e.value.to_vec()))
        .collect();
    if want != got {
        return Err(format!(
            "after the last step the model holds keys {:?}, the backend {:?}",
            shown_keys(&want),
            shown_keys(&got)
        ));
    }
    Ok(())
}

fn shown_keys(entries: &[(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    entries.iter().map(|(k, _)| short(k)).collect()
}

/// Bytes shown in full when short, else by length and first bytes.
fn short(bytes: &[u8]) -> String {
    if bytes.len() <= 32 {
        show(bytes)
    } else {
        format!("{} bytes starting {}", bytes.len(), show(&bytes[..8]))
    }
}

/// A probe's inputs, made bytes for the backend's limits.
struct Inputs {
    keys: Vec<Vec<u8>>,
    values: Vec<Vec<u8>>,
    ttl: Option<EdgeTtl>,
}

impl Inputs {
    fn of(probe: &Probe, caps: &Capabilities) -> Inputs {
        let k = |e: &EdgeBytes| e.bytes(caps.max_key_len);
        let v = |e: &EdgeBytes| e.bytes(caps.max_value_len);
        let (keys, values, ttl) = match probe {
            Probe::Put { key, value } | Probe::PutFenced { key, value, .. } => {
                (vec![k(key)], vec![v(value)], None)
            }
            Probe::PutWithTtl { key, value, ttl } => (vec![k(key)], vec![v(value)], Some(*ttl)),
            Probe::SetIfNotExists { key, value, ttl } => (vec![k(key)], vec![v(value)], *ttl),
            Probe::CompareAndSwap { key, new } => (vec![k(key)], vec![v(new)], None),
            Probe::BatchPut { entries } => (
                entries.iter().map(|(key, _)| k(key)).collect(),
                entries.iter().map(|(_, value)| v(value)).collect(),
                None,
            ),
            Probe::Get { key } | Probe::Delete { key } | Probe::Ttl { key } => {
                (vec![k(key)], Vec::new(), None)
            }
            Probe::BatchGet { keys } | Probe::BatchDelete { keys } => {
                (keys.iter().map(k).collect(), Vec::new(), None)
            }
        };
        Inputs { keys, values, ttl }
    }

    /// Whether the backend must refuse the probe as invalid input.
    fn invalid(&self, caps: &Capabilities) -> bool {
        self.keys
            .iter()
            .any(|k| k.is_empty() || k.len() > caps.max_key_len)
            || self.values.iter().any(|v| v.len() > caps.max_value_len)
            || self.ttl.is_some_and(|t| !t.is_valid())
    }
}

/// What a probe observably returned.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Done,
    Fenced,
    Flag(bool),
    Number(u64),
    Values(Vec<Option<Vec<u8>>>),
    Ttl(Ttl),
}

async fn run_probe(
    b: &dyn StateBackend,
    caps: &Capabilities,
    model: &mut Model,
    probe: &Probe,
) -> Result<(), String> {
    let inputs = Inputs::of(probe, caps);
    let before = model.clone();
    let got = call(b, probe, &inputs, model).await;
    // The write was applied before its reply came: its expiry is at most a TTL from now.
    let replied = Stopwatch::start();
    if inputs.invalid(caps) {
        return refused_and_unchanged(b, caps, &before, &inputs, got).await;
    }
    let got = got.map_err(|e| {
        format!(
            "valid inputs were refused: {e} [kind {:?}]; keys {:?}",
            e.kind(),
            inputs.keys.iter().map(|k| short(k)).collect::<Vec<_>>()
        )
    })?;
    let want = expect(probe, &inputs, model);
    // Only a write that applied its TTL of milliseconds makes a short-lived key.
    let short_lived = inputs.ttl.filter(|t| {
        t.expires_during_the_case()
            && inputs
                .keys
                .first()
                .is_some_and(|k| model.ttl(k) == Some(Some(t.duration())))
    });
    match (&want, &got) {
        (Answer::Ttl(Ttl::Remaining(at_most)), Answer::Ttl(Ttl::Remaining(left)))
            if !left.is_zero() && left <= at_most => {}
        _ if want == got => {}
        _ => {
            return Err(format!(
                "the model answers {}, the backend {}",
                answer(&want),
                answer(&got)
            ));
        }
    }
    read_back(b, probe, &inputs, model, short_lived, replied).await
}

/// Calls the backend for `probe`. A compare-and-swap expects `model`'s current value.
async fn call(
    b: &dyn StateBackend,
    probe: &Probe,
    inputs: &Inputs,
    model: &Model,
) -> state_core::Result<Answer> {
    let (keys, values) = (&inputs.keys, &inputs.values);
    let key = keys.first().map(Vec::as_slice).unwrap_or_default();
    let value = values.first().map(Vec::as_slice).unwrap_or_default();
    let ttl = inputs.ttl.map(EdgeTtl::duration);
    match probe {
        Probe::Put { .. } => b.put(key, value).await.map(|()| Answer::Done),
        Probe::PutWithTtl { .. } => {
            let ttl = ttl.unwrap_or(Duration::ZERO);
            b.put_with_ttl(key, value, ttl).await.map(|()| Answer::Done)
        }
        Probe::SetIfNotExists { .. } => {
            b.set_if_not_exists(key, value, ttl).await.map(Answer::Flag)
        }
        Probe::CompareAndSwap { .. } => {
            let expected = model.get(key);
            b.compare_and_swap(key, expected.as_deref(), value)
                .await
                .map(Answer::Flag)
        }
        Probe::PutFenced { token, .. } => {
            match b.put_fenced(key, value, FencingToken(*token)).await {
                Err(e) if e.kind() == ErrorKind::Fenced => Ok(Answer::Fenced),
                other => other.map(|()| Answer::Done),
            }
        }
        Probe::BatchPut { .. } => {
            let entries: Vec<(&[u8], &[u8])> = keys
                .iter()
                .zip(values)
                .map(|(k, v)| (&k[..], &v[..]))
                .collect();
            b.batch_put(&entries).await.map(|()| Answer::Done)
        }
        Probe::Get { .. } => b
            .get(key)
            .await
            .map(|v| Answer::Values(vec![v.map(|v| v.to_vec())])),
        Probe::Delete { .. } => b.delete(key).await.map(Answer::Flag),
        Probe::Ttl { .. } => b.ttl(key).await.map(Answer::Ttl),
        Probe::BatchGet { .. } => {
            let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            b.batch_get(&refs)
                .await
                .map(|vs| Answer::Values(vs.into_iter().map(|v| v.map(|v| v.to_vec())).collect()))
        }
        Probe::BatchDelete { .. } => {
            let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            b.batch_delete(&refs).await.map(Answer::Number)
        }
    }
}

/// Applies a valid probe to the model; returns what the backend must answer.
fn expect(probe: &Probe, inputs: &Inputs, model: &mut Model) -> Answer {
    let (keys, values) = (&inputs.keys, &inputs.values);
    let key = keys.first().map(Vec::as_slice).unwrap_or_default();
    let value = values.first().map(Vec::as_slice).unwrap_or_default();
    let ttl = inputs.ttl.map(EdgeTtl::duration);
    match probe {
        Probe::Put { .. } => {
            model.put(key, value, None);
            Answer::Done
        }
        Probe::PutWithTtl { .. } => {
            model.put(key, value, ttl);
            Answer::Done
        }
        Probe::SetIfNotExists { .. } => Answer::Flag(model.set_if_not_exists(key, value, ttl)),
        Probe::CompareAndSwap { .. } => {
            let expected = model.get(key);
            Answer::Flag(model.compare_and_swap(key, expected.as_deref(), value))
        }
        Probe::PutFenced { token, .. } => match model.put_fenced(key, value, *token) {
            Ok(()) => Answer::Done,
            Err(_) => Answer::Fenced,
        },
        Probe::BatchPut { .. } => {
            for (k, v) in keys.iter().zip(values) {
                model.put(k, v, None);
            }
            Answer::Done
        }
        Probe::Get { .. } => Answer::Values(vec![model.get(key)]),
        Probe::Delete { .. } => Answer::Flag(model.delete(key).is_some()),
        Probe::Ttl { .. } => Answer::Ttl(match model.ttl(key) {
            None => Ttl::Missing,
            Some(None) => Ttl::Persistent,
            Some(Some(ttl)) => Ttl::Remaining(ttl),
        }),
        Probe::BatchGet { .. } => Answer::Values(keys.iter().map(|k| model.get(k)).collect()),
        Probe::BatchDelete { .. } => {
            Answer::Number(keys.iter().filter(|k| model.delete(k).is_some()).count() as u64)
        }
    }
}

/// An answer with long values shown short.
fn answer(a: &Answer) -> String {
    match a {
        Answer::Values(vs) => {
            let vs: Vec<String> = vs
                .iter()
                .map(|v| v.as_deref().map_or("None".to_string(), short))
                .collect();
            format!("Values({vs:?})")
        }
        other => format!("{other:?}"),
    }
}

/// An invalid probe: the backend must have refused it with `InvalidInput` and a message,
/// and every valid key it names must still read as before, the namespace holding as many
/// keys as before.
async fn refused_and_unchanged(
    b: &dyn StateBackend,
    caps: &Capabilities,
    before: &Model,
    inputs: &Inputs,
    got: state_core::Result<Answer>,
) -> Result<(), String> {
    match got {
        Ok(answer) => {
            return Err(format!(
                "invalid input was accepted (answer {answer:?}); keys of {:?} bytes, values \
                 of {:?} bytes, TTL {:?}",
                inputs.keys.iter().map(Vec::len).collect::<Vec<_>>(),
                inputs.values.iter().map(Vec::len).collect::<Vec<_>>(),
                inputs.ttl
            ));
        }
        Err(e) if e.kind() != ErrorKind::InvalidInput || e.message().is_empty() => {
            return Err(format!(
                "invalid input gave a {:?} error, not InvalidInput: {e}",
                e.kind()
            ));
        }
        Err(_) => {}
    }
    for key in inputs
        .keys
        .iter()
        .filter(|k| !k.is_empty() && k.len() <= caps.max_key_len)
    {
        let now = b.get(key).await.map_err(|e| read_failed(key, &e))?;
        if now.as_deref() != before.get(key).as_deref() {
            return Err(format!(
                "the refused write changed {}: it now holds {}",
                short(key),
                now.as_deref().map_or("nothing".to_string(), short)
            ));
        }
    }
    let count = b
        .count(b"")
        .await
        .map_err(|e| format!("count failed: {e}"))?;
    let want = before.count(b"");
    if count != want {
        return Err(format!(
            "the refused write left {count} keys in the namespace instead of {want}"
        ));
    }
    Ok(())
}

fn read_failed(key: &[u8], e: &StateError) -> String {
    format!("reading back {} failed: {e}", short(key))
}

/// Reads back what a valid write wrote. A key with a TTL of milliseconds may be gone at
/// once; after its expiry every read must miss it, and the model forgets it.
async fn read_back(
    b: &dyn StateBackend,
    probe: &Probe,
    inputs: &Inputs,
    model: &mut Model,
    short_lived: Option<EdgeTtl>,
    replied: Stopwatch,
) -> Result<(), String> {
    let writes = !matches!(
        probe,
        Probe::Get { .. } | Probe::Ttl { .. } | Probe::BatchGet { .. }
    );
    if !writes {
        return Ok(());
    }
    for key in &inputs.keys {
        let want = model.get(key);
        let now = b.get(key).await.map_err(|e| read_failed(key, &e))?;
        let fine = now.as_deref() == want.as_deref() || (short_lived.is_some() && now.is_none());
        if !fine {
            return Err(format!(
                "{} reads back as {}, the model holds {}",
                short(key),
                now.as_deref().map_or("nothing".to_string(), short),
                want.as_deref().map_or("nothing".to_string(), short)
            ));
        }
        let ttl = b.ttl(key).await.map_err(|e| read_failed(key, &e))?;
        check_ttl(key, ttl, model.ttl(key), short_lived.is_some())?;
    }
    let (Some(ttl), [key]) = (short_lived, &inputs.keys[..]) else {
        return Ok(());
    };
    // Slack for servers that count whole milliseconds and expire only past the last one.
    replied
        .wait_until(ttl.duration() + Duration::from_millis(3))
        .await;
    let now = b.get(key).await.map_err(|e| read_failed(key, &e))?;
    let ttl_now = b.ttl(key).await.map_err(|e| read_failed(key, &e))?;
    let listed = b
        .batch_get(&[key])
        .await
        .map_err(|e| read_failed(key, &e))?;
    if now.is_some() || ttl_now != Ttl::Missing || listed.first().is_some_and(Option::is_some) {
        return Err(format!(
            "{} outlived its TTL of {ttl:?}: get {:?}, ttl {ttl_now:?}",
            short(key),
            now.map(|v| v.len())
        ));
    }
    model.delete(key);
    Ok(())
}

/// A remaining TTL must be positive, at most the one written and, for one of hours or
/// more, not far below it (a truncated or wrapped expiry); a short one may be gone.
fn check_ttl(
    key: &[u8],
    got: Ttl,
    want: Option<Option<Duration>>,
    short_lived: bool,
) -> Result<(), String> {
    let fine = match (want, got) {
        (None, Ttl::Missing) | (Some(None), Ttl::Persistent) => true,
        (Some(Some(_)), Ttl::Missing) => short_lived,
        (Some(Some(at_most)), Ttl::Remaining(left)) => {
            !left.is_zero() && left <= at_most && left + Duration::from_secs(600) >= at_most
        }
        _ => false,
    };
    if fine {
        Ok(())
    } else {
        Err(format!(
            "ttl of {} is {got:?}; the model says {want:?}",
            short(key)
        ))
    }
}
