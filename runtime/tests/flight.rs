//! The flight recorder: a known sequence of events comes back in order, the Trace Event Format
//! it writes is well formed, and reading the rings while they wrap and are written gives whole
//! events only.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use greenhub::ext::{ObjectKind, WaitOn};
use greenhub::inspect::{Trace, TraceKind};
use greenhub::{Event, Queue};

fn trace() -> Trace {
    greenhub::inspect::trace(Duration::from_secs(600))
}

/// The recorder is off by default: every test turns it on first (none turns it off).
fn record() {
    greenhub::inspect::flight_recorder(true);
}

fn kinds_of(trace: &Trace, thread: u64) -> Vec<TraceKind> {
    trace
        .events
        .iter()
        .filter(|e| e.thread == thread)
        .map(|e| e.kind.clone())
        .collect()
}

#[test]
fn a_known_sequence_comes_back_in_order_with_who_woke_whom() {
    record();
    let go: Event = Event::new();
    let (go2, done) = (go.clone(), Arc::new(AtomicBool::new(false)));
    let parent = greenhub::spawn(move || {
        let me = greenhub::current().unwrap().id();
        let child = greenhub::thread::Builder::new()
            .name("flight-child")
            .spawn(move || go2.wait().unwrap())
            .unwrap();
        // Until the child waits: then the set below is what wakes it.
        while !greenhub::inspect::snapshot()
            .threads
            .iter()
            .any(|t| t.id == child.id() && t.waiting_on.is_some())
        {
            greenhub::sleep(Duration::from_millis(1)).unwrap();
        }
        go.set(()).unwrap();
        let id = child.id();
        child.wait().unwrap();
        (me, id)
    });
    let (parent_id, child_id) = parent.wait().unwrap();
    done.store(true, Ordering::Relaxed);
    let t = trace();
    let kinds = kinds_of(&t, child_id);
    // Spawn, run, wait on the event, woken by the parent, run, exit: in this order (other
    // events may come between, such as more runs).
    let spawn = kinds
        .iter()
        .position(|k| {
            *k == TraceKind::Spawn {
                parent: Some(parent_id),
            }
        })
        .unwrap_or_else(|| panic!("no spawn: {kinds:?}"));
    let wait = kinds
        .iter()
        .position(|k| {
            matches!(k, TraceKind::Wait { on: WaitOn::Object { object, .. } } if *object == ObjectKind::EVENT)
        })
        .unwrap_or_else(|| panic!("no wait on the event: {kinds:?}"));
    let wake = kinds
        .iter()
        .position(|k| {
            *k == TraceKind::Wake {
                by: Some(parent_id),
            }
        })
        .unwrap_or_else(|| panic!("no wake by the parent: {kinds:?}"));
    let run_after = kinds[wake..]
        .iter()
        .position(|k| matches!(k, TraceKind::Run { .. }))
        .map(|i| i + wake)
        .unwrap_or_else(|| panic!("no run after the wake: {kinds:?}"));
    let exit = kinds
        .iter()
        .position(|k| {
            *k == TraceKind::Exit {
                how: "returned".into(),
            }
        })
        .unwrap_or_else(|| panic!("no exit: {kinds:?}"));
    assert!(
        kinds[spawn + 1..wait]
            .iter()
            .any(|k| matches!(k, TraceKind::Run { .. }))
    );
    assert!(
        spawn < wait && wait < wake && wake < run_after && run_after < exit,
        "{kinds:?}"
    );
    // Times never go back, and the threads are named.
    assert!(t.events.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    let child = t.threads.iter().find(|th| th.id == child_id).unwrap();
    assert_eq!(child.name.as_deref(), Some("flight-child"));
    assert!(
        child.spawn_site.contains("flight.rs"),
        "{}",
        child.spawn_site
    );
}

#[test]
fn the_trace_event_format_is_well_formed() {
    record();
    let q: Arc<Queue<u32>> = Arc::new(Queue::unbounded());
    let q2 = q.clone();
    let consumer = greenhub::spawn(move || (0..50).map(|_| q2.get().unwrap()).sum::<u32>());
    for i in 0..50 {
        q.put(i).unwrap();
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(consumer.wait().unwrap(), (0..50).sum::<u32>());
    let t = trace();
    let json: serde_json::Value = serde_json::from_str(&t.chrome_json()).unwrap();
    let events = json["traceEvents"].as_array().expect("traceEvents");
    assert!(!events.is_empty());
    let mut starts: HashSet<u64> = HashSet::new();
    let mut ends: HashSet<u64> = HashSet::new();
    let mut named: HashMap<u64, String> = HashMap::new();
    for e in events {
        let ph = e["ph"].as_str().expect("ph");
        assert_eq!(
            e["pid"].as_u64(),
            Some(u64::from(std::process::id())),
            "{e}"
        );
        assert!(e["tid"].is_u64(), "{e}");
        assert!(e["name"].is_string(), "{e}");
        match ph {
            "M" => {
                if e["name"] == "thread_name" {
                    named.insert(
                        e["tid"].as_u64().unwrap(),
                        e["args"]["name"].as_str().unwrap().to_owned(),
                    );
                }
            }
            "X" => {
                assert!(e["ts"].as_f64().is_some_and(|t| t >= 0.0), "{e}");
                assert!(e["dur"].as_f64().is_some_and(|d| d >= 0.0), "{e}");
            }
            "i" => assert!(e["ts"].is_f64() || e["ts"].is_u64(), "{e}"),
            "s" => {
                starts.insert(e["id"].as_u64().unwrap());
            }
            "f" => {
                assert_eq!(e["bp"], "e", "{e}");
                ends.insert(e["id"].as_u64().unwrap());
            }
            other => panic!("unexpected phase {other}: {e}"),
        }
    }
    // Every flow that ends started; the consumer's track is named and has its runs.
    assert!(ends.is_subset(&starts));
    assert!(!ends.is_empty(), "the puts woke the consumer");
    assert!(named.contains_key(&consumer.id()));
    let runs = events
        .iter()
        .filter(|e| {
            e["ph"] == "X" && e["name"] == "run" && e["tid"].as_u64() == Some(consumer.id())
        })
        .count();
    assert!(runs >= 1);
}

#[test]
fn reading_while_the_rings_wrap_gives_whole_events_only() {
    record();
    let _watchdog = common::watchdog(Duration::from_secs(300));
    // Two threads ping-pong on two named queues, many times more than a ring holds, while
    // traces are read: every event read is whole (a wait names one of the two queues, a wake
    // comes from the other thread) and times never go back.
    let ping: Arc<Queue<u64>> = Arc::new(Queue::bounded(1));
    let pong: Arc<Queue<u64>> = Arc::new(Queue::bounded(1));
    let rounds = 200_000u64;
    let (ping2, pong2) = (ping.clone(), pong.clone());
    let echo = greenhub::spawn(move || {
        for _ in 0..rounds {
            let v = ping2.get().unwrap();
            pong2.put(v + 1).unwrap();
        }
    });
    let (ping3, pong3) = (ping.clone(), pong.clone());
    let driver = greenhub::spawn(move || {
        for i in 0..rounds {
            ping3.put(i).unwrap();
            assert_eq!(pong3.get().unwrap(), i + 1);
        }
    });
    let ids = [echo.id(), driver.id()];
    let queues = [ping.id(), pong.id()];
    let mut reads = 0;
    let mut dropped_seen = false;
    while !(echo.is_done() && driver.is_done()) || reads < 3 {
        let t = trace();
        reads += 1;
        dropped_seen |= t.dropped > 0;
        assert!(t.events.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
        for e in t.events.iter().filter(|e| ids.contains(&e.thread)) {
            match &e.kind {
                TraceKind::Wait {
                    on: WaitOn::Object { id, .. },
                } => {
                    assert!(queues.contains(id), "a torn wait: {e:?}")
                }
                TraceKind::Wake { by: Some(b) } => {
                    assert!(ids.contains(b) && *b != e.thread, "a torn wake: {e:?}")
                }
                TraceKind::Run { worker } => assert!(*worker < 64, "a torn run: {e:?}"),
                _ => {}
            }
        }
        if reads > 10_000 {
            break;
        }
    }
    echo.wait().unwrap();
    driver.wait().unwrap();
    assert!(dropped_seen || trace().dropped > 0, "the rings wrapped");
}

mod common;
