//! The statements of coalesced groups: the coalescer's dispatcher (`coalesce.rs`) hands
//! each group of concurrent calls to one of these, which runs it as one statement and
//! answers every caller.

use bytes::Bytes;
use state_core::{ErrorKind, Idempotency, Result, StateError};

use crate::coalescer::{CasCall, PutCall, ReadCall, reject};
use crate::driver::PostgresStateBackend;
use crate::values::{last_per_key, take_bytes};

impl PostgresStateBackend {
    /// Point gets and batch_get chunks, read in one statement.
    pub(crate) async fn get_group(&self, calls: Vec<ReadCall>) {
        let mut keys: Vec<&[u8]> = Vec::with_capacity(calls.len());
        for call in &calls {
            match call {
                ReadCall::Get(call) => keys.push(&call.key),
                ReadCall::Batch(call) => keys.extend(call.keys.slices()),
            }
        }
        match self.read_many(&keys).await {
            Ok(values) => {
                // One value per key, in the keys' order (`read_values` checks the count).
                let mut values = values.into_iter();
                for call in calls {
                    // A caller that left does not need its answer.
                    match call {
                        ReadCall::Get(call) => {
                            let _ = call.reply.send(Ok(values.next().flatten()));
                        }
                        ReadCall::Batch(call) => {
                            let chunk = values.by_ref().take(call.keys.len()).collect();
                            let _ = call.reply.send(Ok(chunk));
                        }
                    }
                }
            }
            Err(err) => share(err, calls, ReadCall::fail),
        }
    }

    /// One statement reading `keys` (full keys, duplicates allowed), in order.
    async fn read_many(&self, keys: &[&[u8]]) -> Result<Vec<Option<Bytes>>> {
        if let [key] = keys {
            // A lone call takes the point statement, cheaper for the server than a join.
            let value = self
                .run("get", Idempotency::Idempotent, || self.read_one(key))
                .await?;
            return Ok(vec![value]);
        }
        self.read_values("get", keys).await
    }

    pub(crate) async fn put_group(&self, calls: Vec<PutCall>) {
        // Every call is answered only once the statement has committed (autocommit).
        match self.write_many(&calls).await {
            Ok(()) => {
                for call in calls {
                    let _ = call.reply.send(Ok(()));
                }
            }
            Err(err) => share(err, calls.into_iter().map(|call| call.reply), reject),
        }
    }

    /// One statement writing every call, as `put` writes one row.
    async fn write_many(&self, calls: &[PutCall]) -> Result<()> {
        if let [call] = calls {
            return self
                .run("put", Idempotency::NotIdempotent, || {
                    self.write_one("put", &call.key, &call.value, &None, call.ttl_ms)
                })
                .await;
        }
        // The later call of a key wins. Sorted keys lock rows in one order, so concurrent
        // statements (and batch_put, sorted too) cannot deadlock one another.
        let latest = last_per_key(calls.iter(), |call| &call.key);
        let keys: Vec<&[u8]> = latest.iter().map(|call| &call.key[..]).collect();
        let values: Vec<&[u8]> = latest.iter().map(|call| &call.value[..]).collect();
        let ttls: Vec<Option<f64>> = latest.iter().map(|call| call.ttl_ms).collect();
        let (keys, values, ttls) = (&keys, &values, &ttls);
        self.run("put", Idempotency::NotIdempotent, move || async move {
            let mut c = self.checkout().await?;
            let query = sqlx::query(self.inner.sql.batch_put_ttl.clone())
                .bind(keys)
                .bind(values)
                .bind(ttls);
            c.execute("put", query).await?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn cas_group(&self, mut calls: Vec<CasCall>) {
        // Keys sorted: rows are locked in one order, so concurrent statements cannot
        // deadlock one another (see `set_if_absent_many`).
        calls.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        match self.cas_many(&calls).await {
            Ok(written) => {
                for (call, written) in calls.into_iter().zip(written) {
                    let _ = call.reply.send(Ok(written));
                }
            }
            // The server refused the whole statement (a deadlock with a statement whose
            // plan took its rows in another order, a serialization failure): it applied
            // nothing, so each call runs as its own statement, as it would uncoalesced.
            Err(err) if err.kind() == ErrorKind::Conflict && !err.outcome_unknown() => {
                for call in calls {
                    let result = self.cas_one(&call.key, call.expected.as_deref(), &call.new);
                    let _ = call.reply.send(result.await);
                }
            }
            Err(err) => share(err, calls.into_iter().map(|call| call.reply), reject),
        }
    }

    /// One statement for `calls` (distinct keys, sorted; all swaps or all inserts): for
    /// each call, in order, whether it wrote.
    async fn cas_many(&self, calls: &[CasCall]) -> Result<Vec<bool>> {
        if let [call] = calls {
            let written = self.cas_one(&call.key, call.expected.as_deref(), &call.new);
            return Ok(vec![written.await?]);
        }
        let keys: Vec<&[u8]> = calls.iter().map(|call| &call.key[..]).collect();
        let news: Vec<&[u8]> = calls.iter().map(|call| &call.new[..]).collect();
        let expected: Option<Vec<&[u8]>> =
            calls.iter().map(|call| call.expected.as_deref()).collect();
        let ttl_ms = self.inner.default_ttl_ms;
        let (keys, news, expected) = (&keys, &news, &expected);
        let rows = self
            .run(
                "compare_and_swap",
                Idempotency::NotIdempotent,
                move || async move {
                    let mut c = self.checkout().await?;
                    let query = match expected {
                        None => sqlx::query(self.inner.sql.set_if_absent_many.clone())
                            .bind(keys)
                            .bind(news)
                            .bind(ttl_ms),
                        Some(expected) => sqlx::query(self.inner.sql.swap_many.clone())
                            .bind(keys)
                            .bind(news)
                            .bind(expected)
                            .bind(ttl_ms),
                    };
                    c.fetch_all("compare_and_swap", query).await
                },
            )
            .await?;
        let mut written = vec![false; calls.len()];
        for row in rows {
            let key = take_bytes(row, 0, "compare_and_swap")?;
            let i = keys.binary_search(&&key[..]).map_err(|_| {
                StateError::corrupt(
                    "compare_and_swap: the server returned a key outside the request",
                )
            })?;
            written[i] = true;
        }
        Ok(written)
    }
}

/// Gives every caller of a failed statement the error: the original to one, copies with
/// the same kind, message and outcome to the others (the driver's source is not `Clone`).
fn share<C>(err: StateError, calls: impl IntoIterator<Item = C>, fail: impl Fn(C, StateError)) {
    let mut calls = calls.into_iter().peekable();
    while let Some(call) = calls.next() {
        if calls.peek().is_none() {
            fail(call, err);
            return;
        }
        let mut copy = StateError::new(err.kind(), err.message());
        if err.outcome_unknown() {
            copy = copy.with_outcome_unknown();
        }
        fail(call, copy);
    }
}
