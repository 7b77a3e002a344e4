//! The operations a property test draws, and the strategies that draw them.

use std::fmt;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

/// Bytes that print as an escaped byte string (`b"a\xff*"`) in failure reports.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Blob(pub Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::harness::show(&self.0))
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// What a `compare_and_swap` expects, resolved against the model when the step runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// The key's current value in the model (`None` if absent): the swap should succeed.
    Current,
    /// The key is absent.
    Absent,
    /// This value (usually not the current one).
    Value(Blob),
}

/// One step of a model-based test. TTLs are hours long, so nothing expires mid-test.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // the variants mirror the StateBackend methods of the same names
pub enum Op {
    Put {
        key: Blob,
        value: Blob,
    },
    PutWithTtl {
        key: Blob,
        value: Blob,
        ttl_secs: u64,
    },
    Get {
        key: Blob,
    },
    Delete {
        key: Blob,
    },
    GetAndDelete {
        key: Blob,
    },
    SetIfNotExists {
        key: Blob,
        value: Blob,
        ttl_secs: Option<u64>,
    },
    CompareAndSwap {
        key: Blob,
        expected: Expected,
        new: Blob,
    },
    BatchPut {
        entries: Vec<(Blob, Blob)>,
    },
    BatchGet {
        keys: Vec<Blob>,
    },
    BatchDelete {
        keys: Vec<Blob>,
    },
    Count {
        prefix: Blob,
    },
    Scan {
        prefix: Blob,
    },
    Clear {
        prefix: Blob,
    },
    PutFenced {
        key: Blob,
        value: Blob,
        token: u64,
    },
    Ttl {
        key: Blob,
    },
}

/// Key bytes: few, so keys collide and prefix one another often; 0x00, 0xFF and glob/LIKE
/// metacharacters included.
const KEY_BYTES: [u8; 6] = [b'a', b'b', 0x00, 0xFF, b'*', b'%'];

/// Value bytes; values may be empty.
const VALUE_BYTES: [u8; 3] = [0x00, 0xFF, b'x'];

/// A key of 1 to 3 bytes.
pub fn key() -> impl Strategy<Value = Blob> {
    vec(select(KEY_BYTES.to_vec()), 1..=3).prop_map(Blob)
}

/// A prefix of 0 to 2 bytes (empty: the whole namespace).
pub fn prefix() -> impl Strategy<Value = Blob> {
    vec(select(KEY_BYTES.to_vec()), 0..=2).prop_map(Blob)
}

/// A value of 0 to 3 bytes.
pub fn value() -> impl Strategy<Value = Blob> {
    vec(select(VALUE_BYTES.to_vec()), 0..=3).prop_map(Blob)
}

/// A TTL between one and two hours, in seconds.
pub fn ttl_secs() -> impl Strategy<Value = u64> {
    3600u64..=7200
}

fn expected() -> impl Strategy<Value = Expected> {
    prop_oneof![
        3 => Just(Expected::Current),
        1 => Just(Expected::Absent),
        2 => value().prop_map(Expected::Value),
    ]
}

/// One operation, weighted towards writes that interact.
pub fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (key(), value()).prop_map(|(key, value)| Op::Put { key, value }),
        2 => (key(), value(), ttl_secs()).prop_map(|(key, value, ttl_secs)| Op::PutWithTtl { key, value, ttl_secs }),
        3 => key().prop_map(|key| Op::Get { key }),
        2 => key().prop_map(|key| Op::Delete { key }),
        1 => key().prop_map(|key| Op::GetAndDelete { key }),
        2 => (key(), value(), proptest::option::of(ttl_secs()))
            .prop_map(|(key, value, ttl_secs)| Op::SetIfNotExists { key, value, ttl_secs }),
        3 => (key(), expected(), value()).prop_map(|(key, expected, new)| Op::CompareAndSwap { key, expected, new }),
        1 => vec((key(), value()), 0..5).prop_map(|entries| Op::BatchPut {
            entries,
        }),
        1 => vec(key(), 0..5).prop_map(|keys| Op::BatchGet { keys }),
        1 => vec(key(), 0..5).prop_map(|keys| Op::BatchDelete { keys }),
        2 => prefix().prop_map(|prefix| Op::Count { prefix }),
        2 => prefix().prop_map(|prefix| Op::Scan { prefix }),
        1 => prefix().prop_map(|prefix| Op::Clear { prefix }),
        2 => (key(), value(), 0u64..6).prop_map(|(key, value, token)| Op::PutFenced { key, value, token }),
        2 => key().prop_map(|key| Op::Ttl { key }),
    ]
}

/// A sequence of 1 to 39 operations.
pub fn ops() -> impl Strategy<Value = Vec<Op>> {
    vec(op(), 1..40)
}

/// How one entry of a snapshot property is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The key.
    pub key: Blob,
    /// The value.
    pub value: Blob,
    /// A TTL in seconds, if any.
    pub ttl_secs: Option<u64>,
    /// Metadata (a small number), written where the backend supports metadata.
    pub metadata: Option<u8>,
}

/// The entries a snapshot property writes before taking its snapshot.
pub fn seeds() -> impl Strategy<Value = Vec<Seed>> {
    let seed = (
        key(),
        value(),
        proptest::option::of(ttl_secs()),
        proptest::option::weighted(0.2, any::<u8>()),
    )
        .prop_map(|(key, value, ttl_secs, metadata)| Seed {
            key,
            value,
            ttl_secs,
            metadata,
        });
    vec(seed, 0..20)
}
