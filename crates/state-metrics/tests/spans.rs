//! The tracing layer seen by a real subscriber: one `state` span per call, inside the
//! caller's span, with the documented fields and never a key; none without a subscriber.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use state_core::{MemoryBackend, Stack, StateBackend, StatsLayer};
use state_metrics::{MetricsLayer, TracingLayer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Instrument, Metadata, Subscriber};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// One span as the subscriber saw it.
#[derive(Debug, Clone, Default)]
struct SeenSpan {
    name: String,
    parent: Option<u64>,
    fields: BTreeMap<String, String>,
    entered: usize,
}

/// A subscriber that keeps every span, its fields, its parent and how often it was entered.
#[derive(Clone, Default)]
struct Keeper {
    spans: Arc<Mutex<Vec<SeenSpan>>>,
    current: Arc<Mutex<Vec<u64>>>,
    next: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(
            field.name().to_string(),
            format!("{value:?}").replace('"', ""),
        );
    }
}

impl Keeper {
    fn with_span(&self, id: &Id, f: impl FnOnce(&mut SeenSpan)) {
        let index = (id.into_u64() - 1) as usize;
        if let Some(span) = self
            .spans
            .lock()
            .ok()
            .as_mut()
            .and_then(|s| s.get_mut(index))
        {
            f(span);
        }
    }

    fn seen(&self) -> Vec<SeenSpan> {
        self.spans.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Subscriber for Keeper {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let parent = match attrs.parent() {
            Some(parent) => Some(parent.into_u64()),
            None if attrs.is_contextual() => {
                self.current.lock().ok().and_then(|c| c.last().copied())
            }
            None => None,
        };
        let mut span = SeenSpan {
            name: attrs.metadata().name().to_string(),
            parent,
            ..SeenSpan::default()
        };
        attrs.record(&mut Fields(&mut span.fields));
        if let Ok(mut spans) = self.spans.lock() {
            spans.push(span);
        }
        Id::from_u64(id)
    }

    fn record(&self, id: &Id, values: &Record<'_>) {
        self.with_span(id, |span| values.record(&mut Fields(&mut span.fields)));
    }

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, _: &Event<'_>) {}

    fn enter(&self, id: &Id) {
        self.with_span(id, |span| span.entered += 1);
        if let Ok(mut current) = self.current.lock() {
            current.push(id.into_u64());
        }
    }

    fn exit(&self, _: &Id) {
        if let Ok(mut current) = self.current.lock() {
            current.pop();
        }
    }
}

/// The stack the URL switches build: tracing, metrics and stats, sharing one layer.
fn observed() -> Arc<dyn StateBackend> {
    Stack::new()
        .layer(TracingLayer::new())
        .layer(MetricsLayer::new())
        .layer(StatsLayer::new())
        .apply(Arc::new(MemoryBackend::new()))
}

#[test]
fn each_call_is_a_state_span_inside_the_callers_span_without_its_key() -> TestResult {
    let keeper = Keeper::default();
    let _default = tracing::subscriber::set_default(keeper.clone());
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let backend = observed();
    runtime.block_on(
        async {
            backend.put(b"secret-key", b"secret-value").await?;
            backend.batch_get(&[b"secret-key", b"other-secret"]).await?;
            let _ = backend.get(b"").await;
            Ok::<_, state_core::StateError>(())
        }
        .instrument(tracing::info_span!("request")),
    )?;

    let spans = keeper.seen();
    let request = spans.iter().position(|s| s.name == "request");
    let request_id = request.map(|i| i as u64 + 1);
    let state: Vec<&SeenSpan> = spans.iter().filter(|s| s.name == "state").collect();
    assert_eq!(state.len(), 3, "{spans:?}");
    for span in &state {
        assert_eq!(span.parent, request_id, "{span:?}");
        assert!(
            span.entered >= 1,
            "entered around the call's polls: {span:?}"
        );
        assert_eq!(
            span.fields.get("backend").map(String::as_str),
            Some("memory")
        );
        for value in span.fields.values() {
            assert!(!value.contains("secret"), "{span:?}");
        }
    }
    let field = |i: usize, name: &str| state[i].fields.get(name).cloned();
    assert_eq!(field(0, "operation").as_deref(), Some("put"));
    assert_eq!(field(0, "key_len").as_deref(), Some("10"));
    assert_eq!(field(0, "outcome").as_deref(), Some("ok"));
    assert_eq!(field(1, "operation").as_deref(), Some("batch_get"));
    assert_eq!(field(1, "entries").as_deref(), Some("2"));
    assert_eq!(field(1, "key_len"), None);
    assert_eq!(field(2, "outcome").as_deref(), Some("invalid_input"));
    Ok(())
}

#[test]
fn a_subscriber_installed_after_the_layer_sees_the_calls_made_after_it() -> TestResult {
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let backend = observed();
    runtime.block_on(backend.put(b"k", b"v"))?;
    // The layer asks at each call, not once when it was applied.
    let keeper = Keeper::default();
    let _default = tracing::subscriber::set_default(keeper.clone());
    runtime.block_on(backend.get(b"k"))?;
    let names: Vec<String> = keeper.seen().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["state"]);
    Ok(())
}
