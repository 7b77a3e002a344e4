use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::error::{ErrorKind, Result};
use crate::memory::MemoryBackend;
use crate::types::Limits;

fn memory() -> Arc<dyn StateBackend> {
    Arc::new(MemoryBackend::new())
}

/// Writes its name into a shared log before and after each call, and can hold calls back.
#[derive(Debug, Clone)]
struct Tracer {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    delay: Duration,
}

impl Hook for Tracer {
    fn around<T: Outcome>(
        &self,
        op: Op<'_>,
        call: impl Future<Output = Result<T>> + Send,
    ) -> impl Future<Output = Result<T>> + Send {
        let kind = op.kind;
        async move {
            self.note(format!("{} enters {kind}", self.name));
            tokio::time::sleep(self.delay).await;
            let out = call.await;
            self.note(format!("{} leaves {kind}", self.name));
            out
        }
    }
}

impl Tracer {
    fn note(&self, line: String) {
        if let Ok(mut log) = self.log.lock() {
            log.push(line);
        }
    }
}

impl Layer for Tracer {
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        Arc::new(Layered::new(self.clone(), inner))
    }
}

/// A tracer that holds every call back for 30 s: longer than any deadline in these tests.
fn slow_tracer(log: &Arc<Mutex<Vec<String>>>) -> Tracer {
    Tracer {
        delay: Duration::from_secs(30),
        ..tracer("slow", log)
    }
}

fn tracer(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Tracer {
    Tracer {
        name,
        log: Arc::clone(log),
        delay: Duration::ZERO,
    }
}

#[tokio::test]
async fn the_first_layer_named_sees_the_call_first_and_its_result_last() -> Result<()> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let backend = Stack::new()
        .layer(tracer("outer", &log))
        .layer(tracer("inner", &log))
        .apply(memory());
    backend.get(b"k").await?;
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    assert_eq!(
        log,
        [
            "outer enters get",
            "inner enters get",
            "inner leaves get",
            "outer leaves get"
        ]
    );
    Ok(())
}

#[tokio::test]
async fn an_empty_stack_returns_the_backend_itself() {
    let backend = memory();
    let same = Stack::new().apply(Arc::clone(&backend));
    assert!(Arc::ptr_eq(&backend, &same));
    assert!(Stack::new().is_empty());
}

#[tokio::test]
async fn stats_count_each_call_once_with_hits_bytes_and_errors() -> Result<()> {
    let backend = Stack::new().layer(StatsLayer::new()).apply(memory());
    assert_eq!(backend.stats().await, Stats::default());
    backend.put(b"a", b"12345").await?;
    backend.get(b"a").await?;
    backend.get(b"missing").await?;
    backend.batch_get(&[b"a", b"missing"]).await?;
    backend.delete(b"a").await?;
    let _ = backend.get(b"").await; // invalid input: a call that failed
    let s = backend.stats().await;
    assert_eq!((s.operations, s.errors), (6, 1), "{s:?}");
    assert_eq!((s.hits, s.misses), (2, 2), "{s:?}");
    assert_eq!(s.hit_rate(), 0.5);
    assert_eq!(s.error_rate(), 1.0 / 6.0);
    assert_eq!((s.bytes_read, s.bytes_written), (10, 6), "{s:?}");
    assert!(s.max_latency_us >= s.avg_latency_us);

    // A whole scan, a dropped scan, a checkpoint and a clear are one call each.
    backend.put(b"b", b"xy").await?;
    let _ = crate::stream::try_collect(backend.scan(b"")).await?;
    drop(backend.export(b""));
    backend.checkpoint().await?;
    backend.clear(b"").await?;
    let s = backend.stats().await;
    assert_eq!(s.operations, 11, "{s:?}");
    assert_eq!(
        s.bytes_read,
        10 + 2 + 2,
        "the scan and the checkpoint read `xy`"
    );
    Ok(())
}

#[tokio::test]
async fn stats_pass_through_outer_layers_and_each_wrap_counts_alone() -> Result<()> {
    let stats = StatsLayer::new();
    let first = Stack::new()
        .layer(LimitsLayer::new(Limits::DEFAULT))
        .layer(stats)
        .apply(memory());
    let second = Stack::new().layer(stats).apply(memory());
    first.put(b"k", b"v").await?;
    assert_eq!(first.stats().await.operations, 1);
    assert_eq!(second.stats().await.operations, 0);
    Ok(())
}

#[tokio::test]
async fn limits_refuse_before_the_backend_sees_the_call() -> Result<()> {
    let limits = Limits {
        max_key_len: 4,
        max_value_len: 8,
    };
    let backend = Stack::new()
        .layer(StatsLayer::new())
        .layer(LimitsLayer::new(limits))
        .apply(memory());
    let caps = backend.capabilities();
    assert_eq!((caps.max_key_len, caps.max_value_len), (4, 8));
    let refused = [
        backend.put(b"12345", b"v").await.err(),
        backend.put(b"k", b"123456789").await.err(),
        backend
            .batch_put(&[(b"k", b"v"), (b"12345", b"v")])
            .await
            .err(),
        backend
            .compare_and_swap(b"k", Some(b"123456789"), b"v")
            .await
            .err(),
        backend.get(b"").await.err(),
    ];
    for err in refused {
        let err = err.map(|e| e.kind());
        assert_eq!(err, Some(ErrorKind::InvalidInput));
    }
    assert_eq!(
        backend.count(b"").await?,
        0,
        "the refused batch wrote nothing"
    );
    assert_eq!(backend.count(b"a-prefix-longer-than-keys").await?, 0);
    backend.put(b"1234", b"12345678").await?;

    // Wider than the backend's own: the backend's limits stand.
    let wide = LimitsLayer::new(Limits {
        max_key_len: usize::MAX,
        max_value_len: usize::MAX,
    })
    .layer(memory());
    assert_eq!(
        wide.capabilities().limits(),
        memory().capabilities().limits()
    );
    Ok(())
}

#[tokio::test]
async fn a_write_cut_short_by_the_deadline_may_have_been_applied() -> Result<()> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let slow = slow_tracer(&log);
    let backend = Stack::new()
        .layer(TimeoutLayer::new(Duration::from_millis(20)))
        .layer(slow)
        .apply(memory());
    let write = backend.put(b"k", b"v").await.err();
    let write = write.as_ref();
    assert_eq!(write.map(|e| e.kind()), Some(ErrorKind::Timeout));
    assert_eq!(write.map(|e| e.outcome_unknown()), Some(true), "{write:?}");
    assert!(write.is_some_and(|e| e.to_string().contains("may have been applied")));
    let read = backend.get(b"k").await.err();
    assert_eq!(read.as_ref().map(|e| e.kind()), Some(ErrorKind::Timeout));
    assert_eq!(read.map(|e| e.outcome_unknown()), Some(false));

    let quick = Stack::new()
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .apply(memory());
    quick.put(b"k", b"v").await?;
    assert_eq!(quick.get(b"k").await?.as_deref(), Some(&b"v"[..]));
    Ok(())
}

#[test]
fn every_kind_is_listed_at_its_index() {
    for (i, kind) in OpKind::ALL.iter().enumerate() {
        assert_eq!(kind.index(), i, "{kind}");
    }
    for (i, kind) in crate::ErrorKind::ALL.iter().enumerate() {
        assert_eq!(*kind as usize, i, "{kind}");
    }
}

/// An observer that writes what it is told into a shared log.
#[derive(Debug, Clone)]
struct Watcher {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    fn note(&self, line: String) {
        if let Ok(mut log) = self.log.lock() {
            log.push(line);
        }
    }
}

impl Observer for Watcher {
    fn started(&self, op: &Op<'_>) -> Option<Box<dyn Scope>> {
        self.note(format!("{} starts {}", self.name, op.kind));
        None
    }

    fn finished(&self, call: &Finished) {
        let status = call.error.map_or("ok", |kind| kind.name());
        let seen = call.observed;
        self.note(format!(
            "{} saw {} {status} entries={} hits={} misses={} read={} written={}",
            self.name,
            call.kind,
            call.entries,
            seen.hits,
            seen.misses,
            seen.bytes_read,
            call.bytes_written
        ));
    }

    fn abandoned(&self, kind: OpKind) {
        self.note(format!("{} abandoned {kind}", self.name));
    }
}

impl Layer for Watcher {
    fn layer(&self, inner: Arc<dyn StateBackend>) -> Arc<dyn StateBackend> {
        watch(Arc::new(self.clone()), inner)
    }

    fn observer(&self, _inner: &Arc<dyn StateBackend>) -> Option<Arc<dyn Observer>> {
        Some(Arc::new(self.clone()))
    }
}

fn watcher(name: &'static str, log: &Arc<Mutex<Vec<String>>>) -> Watcher {
    Watcher {
        name,
        log: Arc::clone(log),
    }
}

fn taken(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    log.lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
}

#[tokio::test]
async fn neighbouring_observers_share_a_layer_and_are_told_as_separate_layers_would() -> Result<()>
{
    let log = Arc::new(Mutex::new(Vec::new()));
    let backend = Stack::new()
        .layer(tracer("outer", &log))
        .layer(watcher("a", &log))
        .layer(watcher("b", &log))
        .layer(tracer("middle", &log))
        .layer(watcher("c", &log))
        .apply(memory());
    let shown = format!("{backend:?}");
    assert_eq!(shown.matches("Watched").count(), 2, "{shown}");
    backend.get(b"k").await?;
    let ok = "ok entries=1 hits=0 misses=1 read=0 written=0";
    assert_eq!(
        taken(&log),
        [
            "outer enters get".to_string(),
            "a starts get".into(),
            "b starts get".into(),
            "middle enters get".into(),
            "c starts get".into(),
            format!("c saw get {ok}"),
            "middle leaves get".into(),
            format!("b saw get {ok}"),
            format!("a saw get {ok}"),
            "outer leaves get".into(),
        ]
    );
    Ok(())
}

#[tokio::test]
async fn observers_see_what_each_call_did() -> Result<()> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let backend = Stack::new().layer(watcher("w", &log)).apply(memory());
    backend.batch_put(&[(b"a", b"123"), (b"bb", b"4")]).await?;
    backend.batch_get(&[b"a", b"zz"]).await?;
    let _ = backend.get(b"").await;
    let _ = crate::stream::try_collect(backend.scan(b"")).await?;
    let seen: Vec<String> = taken(&log)
        .into_iter()
        .filter(|line| line.contains(" saw "))
        .collect();
    assert_eq!(
        seen,
        [
            "w saw batch_put ok entries=2 hits=0 misses=0 read=0 written=7",
            "w saw batch_get ok entries=2 hits=1 misses=1 read=3 written=0",
            "w saw get invalid_input entries=1 hits=0 misses=0 read=0 written=0",
            "w saw scan ok entries=0 hits=0 misses=0 read=4 written=0",
        ]
    );
    Ok(())
}

#[tokio::test]
async fn a_call_dropped_before_it_ends_is_abandoned_not_finished() -> Result<()> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let slow = slow_tracer(&log);
    let backend = Stack::new()
        .layer(TimeoutLayer::new(Duration::from_millis(20)))
        .layer(watcher("w", &log))
        .layer(slow)
        .apply(memory());
    let err = backend.get(b"k").await.err().map(|e| e.kind());
    assert_eq!(err, Some(ErrorKind::Timeout));
    let log = taken(&log);
    assert!(log.contains(&"w abandoned get".to_string()), "{log:?}");
    assert!(!log.iter().any(|line| line.starts_with("w saw")), "{log:?}");
    Ok(())
}
