//! The `tracing` feature: every event a green thread logs is inside that thread's
//! `green_thread` span, on whichever worker it runs after each wait, and a thread's span
//! descends from its spawner's. Run with `--features tracing`.

#![cfg(feature = "tracing")]

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};
use tracing_core::span::Current;

/// A subscriber that keeps each OS thread's stack of entered spans, the `id` field and
/// parent of every span, and, for each event, the `me` it carries and the `id` of the span
/// that was current when it was logged.
#[derive(Default)]
struct Recorder {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, SpanSeen>>,
    events: Mutex<Vec<(u64, Option<u64>)>>,
}

/// A span's `id` field (the green thread's id) and its parent span.
type SpanSeen = (Option<u64>, Option<u64>);

thread_local! {
    static STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct Fields {
    id: Option<u64>,
    me: Option<u64>,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "id" => self.id = Some(value),
            "me" => self.me = Some(value),
            _ => {}
        }
    }
    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let mut f = Fields::default();
        attrs.record(&mut f);
        let parent = if attrs.is_contextual() {
            STACK.with(|s| s.borrow().last().copied())
        } else {
            attrs.parent().map(Id::into_u64)
        };
        let key = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.spans.lock().unwrap().insert(key, (f.id, parent));
        Id::from_u64(key)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let Some(me) = f.me else { return };
        let current = STACK.with(|s| s.borrow().last().copied());
        let span_id = current.and_then(|k| self.spans.lock().unwrap().get(&k).and_then(|s| s.0));
        self.events.lock().unwrap().push((me, span_id));
    }
    fn enter(&self, span: &Id) {
        STACK.with(|s| s.borrow_mut().push(span.into_u64()));
    }
    fn exit(&self, span: &Id) {
        STACK.with(|s| {
            let mut s = s.borrow_mut();
            let top = s.pop();
            assert_eq!(
                top,
                Some(span.into_u64()),
                "spans exited out of order on one OS thread"
            );
        });
    }
    fn current_span(&self) -> Current {
        match STACK.with(|s| s.borrow().last().copied()) {
            Some(k) => Current::new(
                Id::from_u64(k),
                // Every span here has the same metadata shape; the test never reads it.
                META.get().copied().unwrap(),
            ),
            None => Current::none(),
        }
    }
}

static META: std::sync::OnceLock<&'static Metadata<'static>> = std::sync::OnceLock::new();

#[test]
fn each_event_is_in_its_green_threads_span_on_every_worker() {
    let _watchdog = common::watchdog(Duration::from_secs(60));
    let recorder: &'static Recorder = Box::leak(Box::default());
    tracing::subscriber::set_global_default(Shared(recorder)).unwrap();
    META.set(tracing::info_span!("probe").metadata().unwrap())
        .unwrap();

    let threads: Vec<_> = (0..200)
        .map(|_| {
            greenhub::spawn(|| {
                let me = greenhub::current().unwrap().id();
                for round in 0..10 {
                    tracing::info!(me, round, "tick");
                    if round % 2 == 0 {
                        greenhub::sleep(Duration::from_micros(100)).unwrap();
                    } else {
                        greenhub::yield_now();
                    }
                }
                // A child's span descends from this thread's.
                greenhub::spawn(|| greenhub::current().unwrap().id())
                    .wait()
                    .unwrap()
            })
        })
        .collect();
    let mut parents = Vec::new();
    for t in threads {
        let parent = t.id();
        let child = t.wait().unwrap();
        parents.push((child, parent));
    }
    let events = recorder.events.lock().unwrap();
    assert_eq!(events.len(), 2_000);
    for &(me, span) in events.iter() {
        assert_eq!(
            span,
            Some(me),
            "an event of green thread #{me} was logged in another span"
        );
    }
    let spans = recorder.spans.lock().unwrap();
    let by_thread: HashMap<u64, Option<u64>> = spans
        .values()
        .filter_map(|&(id, parent)| id.map(|id| (id, parent)))
        .collect();
    for (child, parent) in parents {
        let parent_span = by_thread[&child].expect("a child's span has a parent");
        assert_eq!(spans[&parent_span].0, Some(parent));
    }
}

/// The recorder as a `'static` subscriber.
struct Shared(&'static Recorder);

impl Subscriber for Shared {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, a: &Attributes<'_>) -> Id {
        self.0.new_span(a)
    }
    fn record(&self, s: &Id, r: &Record<'_>) {
        self.0.record(s, r)
    }
    fn record_follows_from(&self, s: &Id, f: &Id) {
        self.0.record_follows_from(s, f)
    }
    fn event(&self, e: &Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, s: &Id) {
        self.0.enter(s)
    }
    fn exit(&self, s: &Id) {
        self.0.exit(s)
    }
    fn current_span(&self) -> Current {
        self.0.current_span()
    }
}
