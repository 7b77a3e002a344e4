//! `statectl bench`: the shared workloads (see `bench_plan::plan`) through the
//! `StateBackend` API, measured the same way as the raw reference runner.
//!
//! C tokio tasks share one `Arc<dyn StateBackend>`, the calls split between them. Each task
//! keeps one HDR histogram, so memory does not grow with `--ops`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Instant;

use bench_plan::plan::{self, MIXED_PUT_PERCENT, Op, Shape, ShapeArgs, Worker};
use bench_plan::report::{Latencies, OpResult, Report, process_cpu_time};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use state_core::{StateBackend, StateError, StateUrl};
use tokio::sync::Barrier;
use tokio::task::JoinSet;

use crate::cli::BenchArgs;
use crate::error::CliError;

/// How many calls a task makes between progress-bar updates.
const PROGRESS_EVERY: u64 = 256;

/// Runs the workload and removes its keys, whatever happened (error, Ctrl-C); the caller
/// prints the report.
pub async fn run(
    backend: Arc<dyn StateBackend>,
    url: &StateUrl,
    bench: &BenchArgs,
) -> Result<Report, CliError> {
    let args = &bench.shape;
    let shape = args.shape();
    let run = Run {
        backend,
        prefix: Arc::from(plan::run_prefix()),
        value: Arc::from(shape.value()),
        alt_value: Arc::from(shape.alt_value()),
        template: Latencies::new().map_err(CliError::Backend)?,
        progress: std::io::stderr().is_terminal().then(progress_bar),
        fail_fast: bench.fail_fast,
    };
    let outcome = tokio::select! {
        outcome = run.all(&shape, args) => outcome,
        _ = tokio::signal::ctrl_c() => Err(CliError::Interrupted(
            "interrupted; the benchmark's keys were removed".into(),
        )),
    };
    if let Some(bar) = &run.progress {
        bar.finish_and_clear();
    }
    if let Err(e) = run.backend.clear(run.prefix.as_bytes()).await {
        return Err(CliError::Backend(format!(
            "the benchmark's keys under `{}` could not be removed ({e}){}",
            run.prefix,
            outcome
                .err()
                .and_then(|first| first.message().map(|m| format!("; before that: {m}")))
                .unwrap_or_default()
        )));
    }
    Ok(Report {
        tool: "statectl".into(),
        url: url.redacted(),
        shape,
        execution: format!("{} tokio tasks", shape.concurrency),
        results: outcome?,
    })
}

fn progress_bar() -> ProgressBar {
    let style =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} calls ({rate}, {eta} left)")
            .map(|s| {
                s.progress_chars("=> ").with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{}/s", humanize(state.per_sec()));
                    },
                )
            })
            .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(0).with_style(style)
}

/// A rate for people: `950`, `12.3k`, `1.11M` (indicatif's own shows `1,109,466.7801`).
fn humanize(rate: f64) -> String {
    match rate {
        r if !r.is_finite() || r < 0.0 => "–".to_string(),
        r if r < 1_000.0 => format!("{r:.0}"),
        r if r < 1_000_000.0 => format!("{:.1}k", r / 1_000.0),
        r => format!("{:.2}M", r / 1_000_000.0),
    }
}

struct Run {
    backend: Arc<dyn StateBackend>,
    prefix: Arc<str>,
    value: Arc<[u8]>,
    alt_value: Arc<[u8]>,
    template: Latencies,
    progress: Option<ProgressBar>,
    /// End the run at the first failed call instead of counting it and going on.
    fail_fast: bool,
}

impl Run {
    async fn all(&self, shape: &Shape, args: &ShapeArgs) -> Result<Vec<OpResult>, CliError> {
        let mut results = Vec::new();
        let mut filled = false;
        for op in args.workload.ops() {
            if op.needs_fill() && !filled {
                self.fill(shape).await?;
                filled = true;
            }
            results.push(self.measure(op, shape).await?);
        }
        Ok(results)
    }

    fn show(&self, message: &'static str, len: u64) {
        if let Some(bar) = &self.progress {
            bar.set_message(message);
            bar.set_length(len);
            bar.reset();
        }
    }

    /// Writes every key of the keyspace (with `batch_put`, not measured).
    async fn fill(&self, shape: &Shape) -> Result<(), CliError> {
        self.show("fill", shape.keyspace.div_ceil(plan::FILL_CHUNK));
        for chunk in shape.fill_chunks() {
            let keys: Vec<String> = chunk.map(|i| plan::key(&self.prefix, i)).collect();
            let entries: Vec<(&[u8], &[u8])> =
                keys.iter().map(|k| (k.as_bytes(), &*self.value)).collect();
            self.backend.batch_put(&entries).await?;
            if let Some(bar) = &self.progress {
                bar.inc(1);
            }
        }
        Ok(())
    }

    async fn measure(&self, op: Op, shape: &Shape) -> Result<OpResult, CliError> {
        self.show(op.name(), shape.calls(op));
        let workers = shape.workers(op);
        let start_line = Arc::new(Barrier::new(workers.len() + 1));
        let mut tasks = JoinSet::new();
        for worker in workers {
            let task = Task {
                backend: self.backend.clone(),
                prefix: self.prefix.clone(),
                value: self.value.clone(),
                alt_value: self.alt_value.clone(),
                progress: self.progress.clone(),
            };
            let mut latencies = self.template.clone();
            let start_line = start_line.clone();
            let fail_fast = self.fail_fast;
            tasks.spawn(async move {
                start_line.wait().await;
                task.calls(op, worker, &mut latencies, fail_fast)
                    .await
                    .map(|errors| (latencies, errors))
            });
        }
        let cpu_before = process_cpu_time();
        start_line.wait().await;
        let started = Instant::now();
        let mut latencies = self.template.clone();
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (task_latencies, task_errors) = joined
                .map_err(|e| CliError::Backend(format!("a benchmark task failed ({e})")))??;
            latencies
                .merge(&task_latencies)
                .map_err(CliError::Backend)?;
            for (kind, n) in task_errors {
                *errors.entry(kind).or_insert(0) += n;
            }
        }
        let elapsed = started.elapsed();
        if let Some(bar) = &self.progress {
            bar.println(format!("{:>10} done in {:.2?}", op.name(), elapsed));
        }
        Ok(OpResult::new(op, shape, elapsed, latencies, cpu_before).with_errors(errors))
    }
}

/// What one task needs; owned so the task is `'static`.
struct Task {
    backend: Arc<dyn StateBackend>,
    prefix: Arc<str>,
    value: Arc<[u8]>,
    alt_value: Arc<[u8]>,
    progress: Option<ProgressBar>,
}

impl Task {
    /// Makes worker `w`'s calls of `op`, recording each successful call's latency in `lat`.
    /// A failed call is counted by kind and the worker goes on, or with `fail_fast` ends the
    /// run with that error; returns the counts.
    async fn calls(
        &self,
        op: Op,
        mut w: Worker,
        lat: &mut Latencies,
        fail_fast: bool,
    ) -> Result<BTreeMap<String, u64>, StateError> {
        let mut errors = BTreeMap::new();
        let mut key = String::new();
        let mut keys: Vec<String> = vec![String::new(); w.keys_per_call as usize];
        for call in 0..w.calls {
            let t = Instant::now();
            match self.call(op, &mut w, &mut key, &mut keys).await {
                Ok(()) => lat.record(t.elapsed()),
                Err(e) if fail_fast => return Err(e),
                Err(e) => *errors.entry(error_label(&e)).or_insert(0) += 1,
            }
            if let Some(bar) = &self.progress
                && (call + 1) % PROGRESS_EVERY == 0
            {
                bar.inc(PROGRESS_EVERY);
            }
        }
        Ok(errors)
    }

    /// One call of `op`.
    async fn call(
        &self,
        op: Op,
        w: &mut Worker,
        key: &mut String,
        keys: &mut [String],
    ) -> Result<(), StateError> {
        let backend = &*self.backend;
        let value = &*self.value;
        match op {
            Op::Put => {
                plan::key_into(key, &self.prefix, w.picker.next_index());
                backend.put(key.as_bytes(), value).await?;
            }
            Op::Get => {
                plan::key_into(key, &self.prefix, w.picker.next_index());
                black_box(backend.get(key.as_bytes()).await?);
            }
            Op::Mixed => {
                let is_put = w.picker.chance(MIXED_PUT_PERCENT);
                plan::key_into(key, &self.prefix, w.picker.next_index());
                if is_put {
                    backend.put(key.as_bytes(), value).await?;
                } else {
                    black_box(backend.get(key.as_bytes()).await?);
                }
            }
            Op::BatchPut => {
                for k in keys.iter_mut() {
                    plan::key_into(k, &self.prefix, w.picker.next_index());
                }
                let entries: Vec<(&[u8], &[u8])> =
                    keys.iter().map(|k| (k.as_bytes(), value)).collect();
                backend.batch_put(&entries).await?;
            }
            Op::BatchGet => {
                for k in keys.iter_mut() {
                    plan::key_into(k, &self.prefix, w.picker.next_index());
                }
                let refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
                black_box(backend.batch_get(&refs).await?);
            }
            Op::Cas => {
                let Some((index, flipped)) = w.next_cas() else {
                    return Err(StateError::new(
                        state_core::ErrorKind::Backend,
                        "a cas worker has no keys",
                    ));
                };
                plan::key_into(key, &self.prefix, index);
                let alt = &*self.alt_value;
                let (old, new) = if flipped { (alt, value) } else { (value, alt) };
                let swapped = backend
                    .compare_and_swap(key.as_bytes(), Some(old), new)
                    .await;
                // Each task owns its keys, so a failed swap means the key does not hold what
                // this task last wrote: a swap of unknown outcome, or a write lost in a
                // failover. The key is read to learn what the next swap must expect.
                if !matches!(swapped, Ok(true)) {
                    match backend.get(key.as_bytes()).await? {
                        Some(current) => w.resync_cas(index, *current == *alt),
                        None => {
                            backend.put(key.as_bytes(), value).await?;
                            w.resync_cas(index, false);
                        }
                    }
                }
                if !swapped? {
                    return Err(StateError::new(
                        state_core::ErrorKind::Conflict,
                        format!(
                            "compare_and_swap of {key} found an unexpected value (a swap of \
                             unknown outcome, or a write lost in a failover)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// How a failed call is counted: its kind, and whether its outcome is unknown.
fn error_label(e: &StateError) -> String {
    let kind = format!("{:?}", e.kind()).to_lowercase();
    if e.outcome_unknown() {
        format!("{kind} (outcome unknown)")
    } else {
        kind
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_read_at_a_glance() {
        assert_eq!(super::humanize(950.4), "950");
        assert_eq!(super::humanize(12_345.0), "12.3k");
        assert_eq!(super::humanize(1_109_466.780_1), "1.11M");
        assert_eq!(super::humanize(f64::NAN), "–");
    }
}
