//! The workload driver: concurrent clients issuing a weighted mix of every key-value
//! operation on a few keys, each recorded, optionally alongside a fault injector.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use state_core::{StateBackend, StateError};
use tokio::time::Instant;

use super::op::{ClientId, Key, Op, Outcome, Output, UNDECODABLE, ValueId};
use super::record::{History, Recorder};
use super::rng::Rng;

/// Relative weights of the operations a client draws (any scale; all zero means `get`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)] // one weight per operation of the same name
pub struct Weights {
    pub get: u32,
    pub put: u32,
    pub delete: u32,
    pub cas: u32,
    pub set_if_not_exists: u32,
    pub get_and_delete: u32,
    pub batch_get: u32,
    pub batch_put: u32,
    pub batch_delete: u32,
}

impl Weights {
    /// Draws an operation's index in field order (0 = get … 8 = batch_delete) with these
    /// weights; all zero gives 0.
    pub(crate) fn pick(&self, rng: &mut Rng) -> usize {
        let weights = [
            self.get,
            self.put,
            self.delete,
            self.cas,
            self.set_if_not_exists,
            self.get_and_delete,
            self.batch_get,
            self.batch_put,
            self.batch_delete,
        ];
        let total: u64 = weights.iter().map(|&x| u64::from(x)).sum();
        let mut pick = rng.below(total);
        for (i, &x) in weights.iter().enumerate() {
            if pick < u64::from(x) {
                return i;
            }
            pick -= u64::from(x);
        }
        0
    }
}

impl Default for Weights {
    /// Reads 30%, writes 20%, CAS 15%, deletes and claims 10% each, batches 5%.
    fn default() -> Self {
        Weights {
            get: 30,
            put: 20,
            delete: 10,
            cas: 15,
            set_if_not_exists: 10,
            get_and_delete: 10,
            batch_get: 2,
            batch_put: 2,
            batch_delete: 1,
        }
    }
}

/// What [`run_workload`] runs.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Concurrent clients, one tokio task each.
    pub clients: u32,
    /// Keys, named `{prefix}k{index}`.
    pub keys: u32,
    /// Prepended to every key name: pass a fresh one (or a backend already namespaced),
    /// since the checker assumes every key starts absent.
    pub prefix: String,
    /// How long clients keep issuing operations.
    pub duration: Duration,
    /// At most this many operations per client, whichever of the two limits comes first.
    pub max_ops_per_client: u64,
    /// The operation mix.
    pub weights: Weights,
    /// A client pauses uniformly in `0..pace` between operations; zero only yields.
    pub pace: Duration,
    /// A client gives up on an operation after this long, drops its future and records
    /// it as [`Outcome::Unknown`].
    pub op_timeout: Duration,
    /// Seeds every client's choices.
    pub seed: u64,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        WorkloadConfig {
            clients: 8,
            keys: 4,
            prefix: String::new(),
            duration: Duration::from_secs(10),
            max_ops_per_client: 1_000_000,
            weights: Weights::default(),
            pace: Duration::from_millis(1),
            op_timeout: Duration::from_secs(10),
            seed: 0x5EED,
        }
    }
}

/// How many times the driver tries the final read of a key before recording it as
/// failed.
const FINAL_READ_ATTEMPTS: usize = 3;

/// The bytes stored for value `id`.
pub fn encode_value(id: ValueId) -> Vec<u8> {
    format!("v{id}").into_bytes()
}

/// The value id of stored bytes, or [`UNDECODABLE`] if they are not ones
/// [`encode_value`] makes.
pub fn decode_value(bytes: &[u8]) -> ValueId {
    let id = std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.strip_prefix('v'))
        .and_then(|digits| digits.parse::<ValueId>().ok());
    match id {
        // Re-encoding rejects `v+7` and `v007`: only the driver's own spelling decodes.
        Some(id) if encode_value(id) == bytes && id != UNDECODABLE => id,
        _ => UNDECODABLE,
    }
}

/// Runs the workload on `backend` and returns its history (see [`run_workload_with`]).
pub async fn run_workload(backend: Arc<dyn StateBackend>, config: WorkloadConfig) -> History {
    run_workload_with(backend, config, std::future::pending()).await
}

/// Runs the workload while `faults` runs alongside (a fault injector: kill connections,
/// pause a server…); `faults` is dropped as soon as the clients finish, if it has not
/// ended by itself. Must run inside a tokio runtime with timers enabled.
///
/// Afterwards one final read per key is recorded (up to three tries each, as client id
/// `config.clients`), then the keys are deleted, unrecorded.
pub async fn run_workload_with<F>(
    backend: Arc<dyn StateBackend>,
    config: WorkloadConfig,
    faults: F,
) -> History
where
    F: Future<Output = ()>,
{
    let shared = Arc::new(Shared {
        names: (0..config.keys)
            .map(|k| format!("{}k{k}", config.prefix).into_bytes())
            .collect(),
        recorder: Recorder::new(),
        next_value: AtomicU64::new(1),
        backend,
        config,
    });
    let deadline = Instant::now() + shared.config.duration;
    let tasks: Vec<_> = (0..shared.config.clients)
        .map(|client| tokio::spawn(run_client(Arc::clone(&shared), client, deadline)))
        .collect();
    let results = {
        let mut clients = std::pin::pin!(futures_util::future::join_all(tasks));
        let mut faults = std::pin::pin!(faults);
        let mut faults_running = true;
        loop {
            tokio::select! {
                results = &mut clients => break results,
                () = &mut faults, if faults_running => faults_running = false,
            }
        }
    };
    for result in results {
        if let Err(e) = result
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    shared.final_reads().await;
    shared.cleanup().await;
    match Arc::try_unwrap(shared) {
        Ok(shared) => shared.recorder.into_history(),
        Err(shared) => shared.recorder.history(),
    }
}

struct Shared {
    names: Vec<Vec<u8>>,
    recorder: Recorder,
    next_value: AtomicU64,
    backend: Arc<dyn StateBackend>,
    config: WorkloadConfig,
}

impl Shared {
    fn fresh(&self) -> ValueId {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    fn name(&self, key: Key) -> &[u8] {
        self.names.get(key as usize).map_or(&[], Vec::as_slice)
    }

    /// Sends `op`, recording it; a timeout drops the request and records Unknown.
    async fn issue(&self, client: ClientId, op: Op) -> Outcome {
        let id = self.recorder.invoke(client, op.clone());
        let outcome = match tokio::time::timeout(self.config.op_timeout, self.send(&op)).await {
            Ok(Ok(output)) => Outcome::Ok(output),
            Ok(Err(e)) if e.outcome_unknown() => Outcome::Unknown,
            Ok(Err(_)) => Outcome::Failed,
            Err(_elapsed) => Outcome::Unknown,
        };
        self.recorder.complete(id, outcome.clone());
        outcome
    }

    async fn send(&self, op: &Op) -> Result<Output, StateError> {
        let b = &*self.backend;
        let decode = |v: Option<Bytes>| v.map(|bytes| decode_value(&bytes));
        Ok(match op {
            Op::Get { key } => Output::Value(decode(b.get(self.name(*key)).await?)),
            Op::Put { key, value } => {
                b.put(self.name(*key), &encode_value(*value)).await?;
                Output::Done
            }
            Op::Delete { key } => Output::Bool(b.delete(self.name(*key)).await?),
            Op::Cas { key, expected, new } => {
                let expected = expected.map(encode_value);
                let swapped = b
                    .compare_and_swap(self.name(*key), expected.as_deref(), &encode_value(*new))
                    .await?;
                Output::Bool(swapped)
            }
            Op::SetIfNotExists { key, value } => {
                let name = self.name(*key);
                Output::Bool(
                    b.set_if_not_exists(name, &encode_value(*value), None)
                        .await?,
                )
            }
            Op::GetAndDelete { key } => {
                Output::Value(decode(b.get_and_delete(self.name(*key)).await?))
            }
            Op::BatchGet { keys } => {
                let names: Vec<&[u8]> = keys.iter().map(|k| self.name(*k)).collect();
                let values = b.batch_get(&names).await?;
                Output::Values(values.into_iter().map(decode).collect())
            }
            Op::BatchPut { entries } => {
                let values: Vec<Vec<u8>> = entries.iter().map(|(_, v)| encode_value(*v)).collect();
                let pairs: Vec<(&[u8], &[u8])> = entries
                    .iter()
                    .zip(&values)
                    .map(|((k, _), v)| (self.name(*k), v.as_slice()))
                    .collect();
                b.batch_put(&pairs).await?;
                Output::Done
            }
            Op::BatchDelete { keys } => {
                let names: Vec<&[u8]> = keys.iter().map(|k| self.name(*k)).collect();
                Output::Count(b.batch_delete(&names).await?)
            }
        })
    }

    /// One read per key after the clients stopped, so that a lost write shows up even if
    /// nobody read the key again.
    async fn final_reads(&self) {
        let client = self.config.clients;
        for key in 0..self.config.keys {
            for _ in 0..FINAL_READ_ATTEMPTS {
                if let Outcome::Ok(_) = self.issue(client, Op::Get { key }).await {
                    break;
                }
            }
        }
    }

    /// Best effort: a backend still failing after the run keeps its keys, which are
    /// under the caller's fresh prefix anyway.
    async fn cleanup(&self) {
        let names: Vec<&[u8]> = self.names.iter().map(Vec::as_slice).collect();
        let timeout = self.config.op_timeout;
        if !matches!(
            tokio::time::timeout(timeout, self.backend.batch_delete(&names)).await,
            Ok(Ok(_))
        ) {
            for name in names {
                let _ = tokio::time::timeout(timeout, self.backend.delete(name)).await;
            }
        }
    }

    /// Draws the next operation of a client that last saw `seen` in each key.
    fn draw(&self, rng: &mut Rng, seen: &[Option<ValueId>]) -> Op {
        let w = &self.config.weights;
        let kind = w.pick(rng);
        let keys = u64::from(self.config.keys.max(1));
        let key = rng.below(keys) as Key;
        match kind {
            1 => Op::Put {
                key,
                value: self.fresh(),
            },
            2 => Op::Delete { key },
            // The last value this client saw, so that some swaps succeed.
            3 => Op::Cas {
                key,
                expected: seen.get(key as usize).copied().flatten(),
                new: self.fresh(),
            },
            4 => Op::SetIfNotExists {
                key,
                value: self.fresh(),
            },
            5 => Op::GetAndDelete { key },
            6 => Op::BatchGet {
                keys: batch_keys(rng, keys),
            },
            7 => Op::BatchPut {
                entries: batch_keys(rng, keys)
                    .into_iter()
                    .map(|k| (k, self.fresh()))
                    .collect(),
            },
            8 => Op::BatchDelete {
                keys: batch_keys(rng, keys),
            },
            _ => Op::Get { key },
        }
    }
}

/// Two or three distinct keys (fewer if there are fewer).
fn batch_keys(rng: &mut Rng, keys: u64) -> Vec<Key> {
    let want = (2 + rng.below(2)).min(keys);
    let mut chosen: Vec<Key> = Vec::new();
    while (chosen.len() as u64) < want {
        let k = rng.below(keys) as Key;
        if !chosen.contains(&k) {
            chosen.push(k);
        }
    }
    chosen
}

/// Updates what a client last saw in each key from an operation that succeeded.
fn learn(seen: &mut [Option<ValueId>], op: &Op, outcome: &Outcome) {
    let Outcome::Ok(output) = outcome else { return };
    let mut set = |key: Key, v: Option<ValueId>| {
        if let Some(slot) = seen.get_mut(key as usize) {
            *slot = v.filter(|&v| v != UNDECODABLE);
        }
    };
    match (op, output) {
        (Op::Get { key }, Output::Value(v)) => set(*key, *v),
        (Op::Put { key, value }, _) => set(*key, Some(*value)),
        (Op::Delete { key } | Op::GetAndDelete { key }, _) => set(*key, None),
        (Op::Cas { key, new, .. }, Output::Bool(true)) => set(*key, Some(*new)),
        (Op::SetIfNotExists { key, value }, Output::Bool(true)) => set(*key, Some(*value)),
        (Op::BatchGet { keys }, Output::Values(vs)) => {
            for (k, v) in keys.iter().zip(vs) {
                set(*k, *v);
            }
        }
        (Op::BatchPut { entries }, _) => {
            for (k, v) in entries {
                set(*k, Some(*v));
            }
        }
        (Op::BatchDelete { keys }, _) => {
            for k in keys {
                set(*k, None);
            }
        }
        _ => {}
    }
}

async fn run_client(shared: Arc<Shared>, client: ClientId, deadline: Instant) {
    let config = &shared.config;
    let mut rng = Rng::new(config.seed ^ (u64::from(client) + 1).wrapping_mul(0x9E37_79B9));
    let mut seen = vec![None; config.keys as usize];
    let pace = u64::try_from(config.pace.as_micros()).unwrap_or(u64::MAX);
    for _ in 0..config.max_ops_per_client {
        if Instant::now() >= deadline {
            break;
        }
        let op = shared.draw(&mut rng, &seen);
        let outcome = shared.issue(client, op.clone()).await;
        learn(&mut seen, &op, &outcome);
        let pause = rng.below(pace);
        if pause == 0 {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_micros(pause)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_foreign_bytes_do_not_decode() {
        assert_eq!(decode_value(&encode_value(12345)), 12345);
        for foreign in [&b"v007"[..], b"v+7", b"7", b"v", b"", b"\xffv1", b"v1 "] {
            assert_eq!(decode_value(foreign), UNDECODABLE, "{foreign:?}");
        }
    }
}
