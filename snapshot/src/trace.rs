//! The flight recorder's data: the last seconds of a process's green threads as a list of
//! [`TraceEvent`]s (spawns, runs, waits and on what, wakes and by whom, kills, ends, reports),
//! and [`Trace::chrome_json`], the same in the JSON Trace Event Format that Perfetto
//! (ui.perfetto.dev) and Chrome's trace viewer open.
//!
//! ```
//! use greenhub_snapshot::{Trace, TraceEvent, TraceKind, TracedThread, WaitOn};
//!
//! let trace = Trace {
//!     pid: 7,
//!     process: "demo".into(),
//!     span_ns: 3_000,
//!     dropped: 0,
//!     threads: vec![TracedThread { id: 1, name: Some("worker".into()), spawn_site: "main.rs:3:5".into() }],
//!     events: vec![
//!         TraceEvent { at_ns: 1_000, thread: 1, kind: TraceKind::Run { worker: 0 } },
//!         TraceEvent { at_ns: 3_000, thread: 1, kind: TraceKind::Wait { on: WaitOn::Sleep } },
//!     ],
//! };
//! let json: serde_json::Value = serde_json::from_str(&trace.chrome_json()).unwrap();
//! assert_eq!(json["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").count(), 1);
//! ```

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::wait::WaitOn;

/// The flight recorder's events over a stretch of time, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The process.
    pub pid: u32,
    /// Its name.
    pub process: String,
    /// How far back the events go from the newest, in nanoseconds.
    pub span_ns: u64,
    /// Events the recorder had to drop (its rings had wrapped past them, or an event was being
    /// overwritten while it was read).
    pub dropped: u64,
    /// The green threads the events name, live or recently finished, by id.
    pub threads: Vec<TracedThread>,
    /// The events, oldest first. Times are nanoseconds on the process's monotonic clock.
    pub events: Vec<TraceEvent>,
}

/// A green thread named by a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracedThread {
    /// Its id.
    pub id: u64,
    /// Its name, if any.
    pub name: Option<String>,
    /// Where it was spawned.
    pub spawn_site: String,
}

/// One event of a green thread.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// When, in nanoseconds on the process's monotonic clock.
    pub at_ns: u64,
    /// The green thread it is about (0: none, for an event of the runtime).
    pub thread: u64,
    /// What happened.
    #[serde(flatten)]
    pub kind: TraceKind,
}

/// What a [`TraceEvent`] records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TraceKind {
    /// The thread was spawned by `parent` (`None`: from a plain OS thread).
    Spawn {
        /// Its parent.
        parent: Option<u64>,
    },
    /// The thread started (or went on) running on a worker.
    Run {
        /// The worker's index.
        worker: usize,
    },
    /// The thread began a wait on `on`.
    Wait {
        /// What it waits on.
        on: WaitOn,
    },
    /// The thread gave its worker up without waiting (a yield).
    Yield,
    /// The thread was woken (a token handed to it) by `by` (`None`: a plain OS thread, a
    /// timer, or the runtime).
    Wake {
        /// The green thread that woke it.
        by: Option<u64>,
    },
    /// A kill of the thread was asked for by `by` (`None`: a plain OS thread).
    Kill {
        /// The green thread that asked.
        by: Option<u64>,
    },
    /// The thread ended.
    Exit {
        /// How: `returned`, `panicked` or `killed`.
        how: String,
    },
    /// The thread kept worker `worker` past `max_blocking_time` (the report opened).
    Blocked {
        /// The worker's index.
        worker: usize,
    },
    /// The monitor found the thread in deadlock number `seq`.
    Deadlock {
        /// The deadlock's number.
        seq: u64,
    },
}

impl Trace {
    /// The trace in the JSON Trace Event Format (an object with `traceEvents`), which Perfetto
    /// and Chrome's `about:tracing` open: one track per green thread (named by its name and
    /// id), its runs as slices named `run` (with the worker), its waits as slices named by what
    /// they wait on, wakes as flow arrows from the waker's track to the woken thread's next run,
    /// and spawns, kills, ends, blocked-worker reports and deadlocks as instant events.
    /// Times are microseconds from the first event.
    pub fn chrome_json(&self) -> String {
        let origin = self.events.first().map_or(0, |e| e.at_ns);
        let us = |ns: u64| ns.saturating_sub(origin) as f64 / 1000.0;
        let pid = self.pid;
        let mut out: Vec<Value> = Vec::with_capacity(self.events.len() * 2 + self.threads.len());
        out.push(json!({
            "name": "process_name", "ph": "M", "pid": pid, "tid": 0,
            "args": { "name": self.process },
        }));
        for t in &self.threads {
            let label = match &t.name {
                Some(n) => format!("{n} #{}", t.id),
                None => format!("green thread #{}", t.id),
            };
            out.push(json!({
                "name": "thread_name", "ph": "M", "pid": pid, "tid": t.id,
                "args": { "name": label },
            }));
        }
        // Each thread's open stretch: a run or a wait, from its start.
        let mut open: HashMap<u64, (u64, Value)> = HashMap::new();
        // Wakes waiting for the woken thread's next run, to end their flow arrow there.
        let mut flows: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut next_flow = 1u64;
        let close = |out: &mut Vec<Value>, thread: u64, end: u64, open: Option<(u64, Value)>| {
            if let Some((start, mut slice)) = open {
                slice["ts"] = json!(us(start));
                slice["dur"] = json!(us(end) - us(start));
                slice["pid"] = json!(pid);
                slice["tid"] = json!(thread);
                slice["ph"] = json!("X");
                out.push(slice);
            }
        };
        for e in &self.events {
            let t = e.thread;
            match &e.kind {
                TraceKind::Run { worker } => {
                    close(&mut out, t, e.at_ns, open.remove(&t));
                    for id in flows.remove(&t).unwrap_or_default() {
                        out.push(json!({
                            "name": "wake", "cat": "wake", "ph": "f", "bp": "e", "id": id,
                            "ts": us(e.at_ns), "pid": pid, "tid": t,
                        }));
                    }
                    open.insert(
                        t,
                        (
                            e.at_ns,
                            json!({ "name": "run", "cat": "run", "args": { "worker": worker } }),
                        ),
                    );
                }
                TraceKind::Wait { on } => {
                    close(&mut out, t, e.at_ns, open.remove(&t));
                    open.insert(
                        t,
                        (
                            e.at_ns,
                            json!({ "name": format!("wait: {on}"), "cat": "wait" }),
                        ),
                    );
                }
                TraceKind::Yield => {
                    close(&mut out, t, e.at_ns, open.remove(&t));
                    open.insert(t, (e.at_ns, json!({ "name": "runnable", "cat": "wait" })));
                }
                TraceKind::Exit { how } => {
                    close(&mut out, t, e.at_ns, open.remove(&t));
                    out.push(instant(pid, t, us(e.at_ns), &format!("exit ({how})")));
                }
                TraceKind::Wake { by } => {
                    let id = next_flow;
                    next_flow += 1;
                    // The arrow starts on the waker's track (the woken thread's own when the
                    // waker is not a green thread) and ends at the woken thread's next run.
                    let from = by.unwrap_or(t);
                    out.push(json!({
                        "name": "wake", "cat": "wake", "ph": "s", "id": id,
                        "ts": us(e.at_ns), "pid": pid, "tid": from,
                    }));
                    flows.entry(t).or_default().push(id);
                    let what = match by {
                        Some(b) => format!("woken by #{b}"),
                        None => "woken".to_owned(),
                    };
                    out.push(instant(pid, t, us(e.at_ns), &what));
                }
                TraceKind::Spawn { parent } => {
                    let what = match parent {
                        Some(p) => format!("spawned by #{p}"),
                        None => "spawned".to_owned(),
                    };
                    out.push(instant(pid, t, us(e.at_ns), &what));
                }
                TraceKind::Kill { by } => {
                    let what = match by {
                        Some(b) => format!("kill asked by #{b}"),
                        None => "kill asked".to_owned(),
                    };
                    out.push(instant(pid, t, us(e.at_ns), &what));
                }
                TraceKind::Blocked { worker } => out.push(instant(
                    pid,
                    t,
                    us(e.at_ns),
                    &format!("kept worker {worker} past max_blocking_time"),
                )),
                TraceKind::Deadlock { seq } => {
                    out.push(instant(pid, t, us(e.at_ns), &format!("deadlock #{seq}")))
                }
            }
        }
        // Stretches still open end with the trace.
        let end = self.events.last().map_or(0, |e| e.at_ns);
        let mut still: Vec<(u64, (u64, Value))> = open.into_iter().collect();
        still.sort_by_key(|(t, _)| *t);
        for (t, stretch) in still {
            // One that began with the last event has no length yet: nothing to draw.
            if stretch.0 < end {
                close(&mut out, t, end, Some(stretch));
            }
        }
        json!({
            "traceEvents": out,
            "displayTimeUnit": "ns",
            "otherData": {
                "process": self.process,
                "pid": pid,
                "span_ns": self.span_ns,
                "dropped": self.dropped,
            },
        })
        .to_string()
    }
}

fn instant(pid: u32, thread: u64, ts: f64, name: &str) -> Value {
    json!({ "name": name, "ph": "i", "s": "t", "ts": ts, "pid": pid, "tid": thread })
}
