//! Slow-poll warnings through `tracing` (feature `tracing`), seen by a
//! capturing subscriber: one WARN event per slow poll, with the task, file,
//! line and duration as fields, none for fast polls.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Every event: (level, target, "field=value ..." with the message first).
static EVENTS: Mutex<Vec<(Level, String, String)>> = Mutex::new(Vec::new());

struct Capture;

struct Fields(String);
impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, "{}={} ", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut f = Fields(String::new());
        e.record(&mut f);
        EVENTS.lock().unwrap_or_else(|p| p.into_inner()).push((
            *e.metadata().level(),
            e.metadata().target().to_string(),
            f.0,
        ));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

#[test]
fn slow_polls_are_tracing_warnings_with_fields_and_fast_ones_are_silent() {
    tracing::subscriber::set_global_default(Capture).expect("the only subscriber");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let slow = aiodebug::tokio::spawn_named_with_threshold(
            "orders",
            Duration::from_millis(30),
            async {
                std::thread::sleep(Duration::from_millis(80));
            },
        );
        let fast = aiodebug::tokio::spawn_named_with_threshold(
            "quick",
            Duration::from_millis(30),
            async {},
        );
        slow.await.expect("slow task");
        fast.await.expect("fast task");
    });
    let events = EVENTS.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ours: Vec<_> = events
        .iter()
        .filter(|(_, target, _)| target == "aiodebug::slow")
        .collect();
    assert_eq!(ours.len(), 1, "{events:?}");
    let (level, _, fields) = ours[0];
    assert_eq!(*level, Level::WARN);
    assert!(
        fields.starts_with("message=Executing task 'orders' (spawned at ")
            && fields.contains("task=orders ")
            && fields.contains("file=")
            && fields.contains("slow_tracing.rs")
            && fields.contains("line="),
        "{fields}"
    );
    let took: f64 = fields
        .split("took_s=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("took_s");
    assert!(took >= 0.07, "{fields}");
}
