//! `import` and `restore`: stage every entry under temporary keys, then switch them in.
//!
//! 1. Stage: each entry is written to `{T}\0state-stage\0ID\0` + its key (same hash slot
//!    as the key), with a TTL of at most 24 h so that a crash leaves nothing forever. An
//!    error here (a bad entry, a broken stream, a lost connection) deletes the staged keys
//!    and leaves the namespace as it was.
//! 2. Switch: one `MULTI … EXEC` that deletes the old keys and fencing marks (Replace),
//!    `RENAME`s each staged key onto its key (RENAME keeps the value without copying it)
//!    and sets its final absolute expiry (`PEXPIREAT`) or none (`PERSIST`). Standalone and
//!    Sentinel send it as one transaction: readers see the old state or the new one. In
//!    Cluster a transaction cannot span slots, so there is one per slot: each slot switches
//!    atomically, the namespace as a whole does not.
//!
//! Keys written by other clients between the scan of the old keys and the switch survive a
//! Replace. The switch holds the key names (not the values) in memory.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use redis::{Cmd, Value};
use state_core::{
    BoxStream, Entry, ErrorKind, Idempotency, ImportMode, Result, StateError, stream,
};

use crate::driver::{BATCH_CONCURRENCY, RedisStateBackend};
use crate::keys;
use crate::reply::first_error;

/// The longest a staged key lives if a restore dies half-way.
const STAGE_TTL: Duration = Duration::from_secs(24 * 3600);

/// What the switch does for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Rename the staged key in, then expire it at this Unix time in ms (None: persist).
    Live(Option<u64>),
    /// The last entry for this key had expired: delete the key (and any staged copy).
    Expired,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn restore_id() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "{:016x}",
        RandomState::new().hash_one((std::process::id(), SystemTime::now()))
    )
}

impl RedisStateBackend {
    pub(crate) async fn import_staged(
        &self,
        entries: BoxStream<'_, Result<Entry>>,
        mode: ImportMode,
    ) -> Result<u64> {
        let id = restore_id();
        let mut plans: HashMap<Vec<u8>, Plan> = HashMap::new();
        let staged = self.stage(entries, id.as_bytes(), &mut plans).await;
        if let Err(e) = staged {
            self.drop_staged(id.as_bytes(), &plans).await;
            return Err(e);
        }
        let switched = self.switch(id.as_bytes(), &plans, mode).await;
        if switched.is_err() {
            self.drop_staged(id.as_bytes(), &plans).await;
        }
        switched?;
        Ok(plans
            .values()
            .filter(|p| matches!(p, Plan::Live(_)))
            .count() as u64)
    }

    async fn stage(
        &self,
        mut entries: BoxStream<'_, Result<Entry>>,
        id: &[u8],
        plans: &mut HashMap<Vec<u8>, Plan>,
    ) -> Result<()> {
        let mut batch: Vec<Cmd> = Vec::new();
        let mut batch_keys: Vec<Vec<u8>> = Vec::new();
        while let Some(entry) = stream::next(&mut entries).await {
            let entry = entry?;
            if entry.metadata.is_some() {
                return Err(StateError::new(
                    ErrorKind::Unsupported,
                    "the redis backend does not store entry metadata; strip it before \
                     importing, or use a backend with metadata",
                ));
            }
            let full = self.full_key(&entry.key)?;
            self.check_value(&entry.value)?;
            let now = SystemTime::now();
            if entry.is_expired_at(now) {
                plans.insert(full, Plan::Expired);
                continue;
            }
            let stage_px = match entry.expires_at {
                Some(at) => {
                    let left = at.duration_since(now).unwrap_or_default();
                    state_core::ttl_millis(left.min(STAGE_TTL).max(Duration::from_millis(1)))?
                }
                None => state_core::ttl_millis(STAGE_TTL)?,
            };
            let staged = keys::stage_key(id, &full);
            batch.push(
                redis::cmd("SET")
                    .arg(&staged)
                    .arg(&entry.value[..])
                    .arg("PX")
                    .arg(stage_px)
                    .clone(),
            );
            batch_keys.push(staged);
            plans.insert(full, Plan::Live(entry.expires_at.map(unix_ms)));
            if batch.len() >= self.batch_size() * BATCH_CONCURRENCY {
                self.send_batch(std::mem::take(&mut batch), std::mem::take(&mut batch_keys))
                    .await?;
            }
        }
        self.send_batch(batch, batch_keys).await
    }

    /// Sends independent writes (each touching one key) grouped by slot, concurrently.
    async fn send_batch(&self, cmds: Vec<Cmd>, route_keys: Vec<Vec<u8>>) -> Result<()> {
        let groups = self.groups(&route_keys);
        let results = futures_util::stream::iter(groups.into_iter().map(|group| {
            let cmds = &cmds;
            async move {
                let mut pipe = redis::pipe();
                for &i in &group {
                    if let Some(cmd) = cmds.get(i) {
                        pipe.add_command(cmd.clone());
                    }
                }
                // Staging keys belong to this restore alone (its id is in their names):
                // writing one twice cannot be observed by anyone.
                let replies = self
                    .pipeline_retry("restore staging", Idempotency::Idempotent, &pipe)
                    .await?;
                first_error("restore staging", self.target(), &replies)
            }
        }))
        .buffer_unordered(BATCH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    async fn switch(
        &self,
        id: &[u8],
        plans: &HashMap<Vec<u8>, Plan>,
        mode: ImportMode,
    ) -> Result<()> {
        // (routing key, command): the routing key decides the slot of the transaction.
        let mut ops: Vec<(Vec<u8>, Cmd)> = Vec::new();
        if mode == ImportMode::Replace {
            let prefix = self.prefix().to_vec();
            let mut old = self.scan_keys(keys::prefix_pattern(&prefix));
            while let Some(page) = stream::next(&mut old).await {
                for key in page? {
                    if !plans.contains_key(&key) {
                        ops.push((key.clone(), redis::cmd("DEL").arg(&key).clone()));
                    }
                }
            }
            drop(old);
            let mut fences = self.scan_raw(keys::fence_pattern(&prefix));
            while let Some(page) = stream::next(&mut fences).await {
                for key in page? {
                    if let Some(data) = keys::fenced_data_key(&key)
                        && data.starts_with(&prefix)
                    {
                        ops.push((data.to_vec(), redis::cmd("DEL").arg(&key).clone()));
                    }
                }
            }
        }
        for (full, plan) in plans {
            let staged = keys::stage_key(id, full);
            match plan {
                Plan::Live(at) => {
                    ops.push((
                        full.clone(),
                        redis::cmd("RENAME").arg(&staged).arg(full).clone(),
                    ));
                    let fix = match at {
                        Some(ms) => redis::cmd("PEXPIREAT").arg(full).arg(*ms).clone(),
                        None => redis::cmd("PERSIST").arg(full).clone(),
                    };
                    ops.push((full.clone(), fix));
                }
                Plan::Expired => {
                    ops.push((
                        full.clone(),
                        redis::cmd("DEL").arg(full).arg(&staged).clone(),
                    ));
                }
            }
        }
        let groups: Vec<Vec<usize>> = if self.is_cluster() {
            let mut by_slot: HashMap<u16, Vec<usize>> = HashMap::new();
            for (i, (key, _)) in ops.iter().enumerate() {
                by_slot.entry(keys::slot(key)).or_default().push(i);
            }
            by_slot.into_values().collect()
        } else {
            vec![(0..ops.len()).collect()]
        };
        let results = futures_util::stream::iter(groups.into_iter().map(|group| {
            let ops = &ops;
            async move { self.transaction(ops, &group, plans).await }
        }))
        .buffer_unordered(BATCH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
        results.into_iter().collect::<Result<Vec<()>>>().map(|_| ())
    }

    /// `MULTI`, the commands, `EXEC` (then `WAIT` if configured) as one pipeline.
    async fn transaction(
        &self,
        ops: &[(Vec<u8>, Cmd)],
        group: &[usize],
        plans: &HashMap<Vec<u8>, Plan>,
    ) -> Result<()> {
        if group.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI");
        for &i in group {
            if let Some((_, cmd)) = ops.get(i) {
                pipe.add_command(cmd.clone());
            }
        }
        pipe.cmd("EXEC");
        let wait = self.inner.config.wait;
        if let Some(w) = wait {
            pipe.cmd("WAIT")
                .arg(w.replicas)
                .arg(u64::try_from(w.timeout.as_millis()).unwrap_or(u64::MAX));
        }
        // Not retried: a lost reply leaves it unknown whether the switch happened.
        let mut replies = self
            .pipeline_retry("restore switch", Idempotency::NotIdempotent, &pipe)
            .await?;
        if wait.is_some() {
            replies.pop();
        }
        let exec = replies.pop().unwrap_or(Value::Nil);
        first_error("restore switch (MULTI)", self.target(), &replies)?;
        let results = match exec {
            Value::Array(results) => results,
            Value::ServerError(e) => {
                return Err(crate::error::to_state(
                    "restore switch (EXEC)",
                    self.target(),
                    crate::error::Failure::after_send(e.into()),
                ));
            }
            other => return Err(crate::reply::unexpected("restore switch", &other)),
        };
        for (&i, result) in group.iter().zip(results) {
            let Value::ServerError(e) = result else {
                continue;
            };
            // A staged copy that expired before the switch is simply absent, as the entry.
            let expired_meanwhile = ops.get(i).and_then(|(key, _)| plans.get(key)).is_some_and(
                |p| matches!(p, Plan::Live(Some(ms)) if *ms <= unix_ms(SystemTime::now())),
            );
            if !expired_meanwhile {
                return Err(StateError::new(
                    ErrorKind::Backend,
                    format!(
                        "restore switch on {}: a command failed inside the transaction ({}); \
                         the other keys of this transaction were switched",
                        self.target(),
                        e.code()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Best-effort removal of staged keys after a failed restore (they expire anyway).
    async fn drop_staged(&self, id: &[u8], plans: &HashMap<Vec<u8>, Plan>) {
        let staged: Vec<Vec<u8>> = plans.keys().map(|k| keys::stage_key(id, k)).collect();
        let _ = self.delete_keys(&staged).await;
    }
}
