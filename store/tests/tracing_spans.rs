//! Every store operation runs in an `anykv` span naming the backend, the
//! operation and the key, and a failure is recorded in it.

use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anykv::prelude::*;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// One line per span opened and per event: `span anykv backend=… op=… key=…`.
#[derive(Clone, Default)]
struct Recorder {
    lines: Arc<Mutex<Vec<String>>>,
    next: Arc<AtomicU64>,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.push_str(&format!(" {}={:?}", field.name(), value));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push_str(&format!(" {}={}", field.name(), value));
    }
}

impl Recorder {
    fn push(&self, line: String) {
        if let Ok(mut lines) = self.lines.lock() {
            lines.push(line);
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let mut fields = Fields(format!("span {}", span.metadata().name()));
        span.record(&mut fields);
        self.push(fields.0);
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields("event".to_owned());
        event.record(&mut fields);
        self.push(fields.0);
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[tokio::test(flavor = "current_thread")]
async fn operations_open_spans_and_failures_are_recorded() -> anykv::Result<()> {
    let recorder = Recorder::default();
    let _default = tracing::subscriber::set_default(recorder.clone());
    let store = anykv::open("memory://spans").await?;
    store.put("a/b", "1", PutOptions::new()).await?;
    assert!(store.get_opt("a/b").await?.is_some());
    assert!(store.create("a/b", "2", PutOptions::new()).await.is_err());
    store.list("a").await?;
    store.delete("a/b").await?;

    let lines = recorder.lines();
    for op in ["put", "get", "list", "delete"] {
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("span anykv") && l.contains(&format!("op={op}"))),
            "no span for {op}: {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l == "span anykv backend=memory op=put key=a/b"),
        "{lines:#?}"
    );
    // The refused create is recorded as a failure naming the key.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("event") && l.contains("error=") && l.contains("a/b")),
        "no failure event: {lines:#?}"
    );
    Ok(())
}
