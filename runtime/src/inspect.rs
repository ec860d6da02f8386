//! What the registry holds, as data: [`snapshot`] returns every live green thread, pending
//! timer, watched descriptor, worker and blocked-worker report as a serde-serializable
//! [`Snapshot`]; [`format_run_info`] prints it as a tree by parent, like gevent's
//! `format_run_info` and Go's goroutine dump.
//!
//! Times are relative to the moment of the snapshot (`*_ago_us`, `*_for_us`, `*_in_us`), in
//! microseconds, so that a reader needs no clock of its own. "Since" times come from a coarse
//! clock (1 to 4 ms resolution); deadlines are exact. The schema is versioned by
//! [`SCHEMA_VERSION`]: fields may be added within a version, never removed or changed.
//!
//! ```
//! let t = greenhub::Builder::new()
//!     .name("napper")
//!     .spawn(|| greenhub::sleep(std::time::Duration::from_millis(200)))
//!     .unwrap();
//! greenhub::sleep(std::time::Duration::from_millis(20)).unwrap();
//! let snap = greenhub::inspect::snapshot();
//! let napper = snap.threads.iter().find(|th| th.id == t.id()).unwrap();
//! assert_eq!(napper.state, greenhub::inspect::ThreadState::Waiting);
//! assert!(greenhub::inspect::format_run_info().contains("napper"));
//! t.kill();
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::registry::{registry, Ending, Phase, TimerKind};
use crate::wait::{Interest, ObjectKind, WaitOn};
use crate::{clock, monitor, runtime};

/// The version of the snapshot's JSON schema.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything the registry knows, at one moment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SCHEMA_VERSION`] of the producer.
    pub schema_version: u32,
    /// Process id.
    pub pid: u32,
    /// Process name (from `/proc/self/comm`).
    pub process: String,
    /// Time since the runtime started.
    pub uptime_us: u64,
    /// The runtime's settings and limits.
    pub runtime: RuntimeInfo,
    /// Counts at a glance.
    pub totals: Totals,
    /// Live green threads, by id.
    pub threads: Vec<ThreadInfo>,
    /// Recently finished green threads, oldest first (a bounded history).
    pub finished: Vec<FinishedInfo>,
    /// Pending timers, soonest first.
    pub timers: Vec<TimerInfo>,
    /// Descriptors green threads wait on.
    pub descriptors: Vec<DescriptorInfo>,
    /// The OS threads that run green threads.
    pub workers: Vec<WorkerInfo>,
    /// Reports of green threads that kept a worker busy (a bounded history, ongoing included).
    pub blocked: Vec<BlockedInfo>,
    /// Live synchronization objects and pools (events, queues, semaphores, mutexes, green
    /// pools, and what other crates register), by id.
    #[serde(default)]
    pub objects: Vec<ObjectInfo>,
}

/// The runtime's settings and limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuntimeInfo {
    /// Whether the runtime has started (anything below is meaningful only then).
    pub started: bool,
    /// Worker OS threads.
    pub workers: usize,
    /// Default stack size in bytes.
    pub stack_size: usize,
    /// Blocked-worker report threshold, if reports are on.
    pub max_blocking_time_us: Option<u64>,
    /// The configured thread limit, if any.
    pub max_green_threads: Option<usize>,
    /// The kernel's cap on memory mappings.
    pub max_map_count: Option<u64>,
    /// Green threads the cap allows in this process.
    pub map_limit: Option<usize>,
    /// Green threads holding a stack now.
    pub live_stacks: usize,
    /// The hub that batches wakes from OS threads (tpool completions).
    #[serde(default)]
    pub hub: crate::hub::HubStats,
}

/// Counts at a glance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Live green threads.
    pub live: usize,
    /// Of which running (on a worker or ready to run).
    pub running: usize,
    /// Of which waiting.
    pub waiting: usize,
    /// Of which scheduled to start later.
    pub scheduled: usize,
    /// Green threads spawned since start.
    pub spawned: u64,
    /// Green threads ended since start.
    pub finished: u64,
    /// Of which panicked.
    pub panicked: u64,
    /// Of which were killed.
    pub killed: u64,
    /// Switches (waits and yields) of all green threads since start.
    pub switches: u64,
    /// Pending timers.
    pub timers: usize,
    /// Watched descriptors.
    pub descriptors: usize,
    /// Blocked-worker reports still ongoing.
    pub blocked_now: usize,
    /// Live registered objects.
    #[serde(default)]
    pub objects: usize,
}

/// A live green thread's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThreadState {
    /// Created by `spawn_after`, not started yet.
    Scheduled,
    /// Running, or ready to run.
    Running,
    /// Waiting on something (see `waiting_on`).
    Waiting,
}

impl ThreadState {
    /// "scheduled", "running" or "waiting".
    pub fn name(self) -> &'static str {
        match self {
            ThreadState::Scheduled => "scheduled",
            ThreadState::Running => "running",
            ThreadState::Waiting => "waiting",
        }
    }
}

/// A live green thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadInfo {
    /// Id.
    pub id: u64,
    /// Name, if any.
    pub name: Option<String>,
    /// The green thread that spawned it.
    pub parent: Option<u64>,
    /// Where it was spawned (`file:line:column`).
    pub spawn_site: String,
    /// Time since it was spawned.
    pub age_us: u64,
    /// Its state.
    pub state: ThreadState,
    /// What it waits on, when waiting.
    pub waiting_on: Option<WaitOn>,
    /// How long it has been in its state.
    pub state_for_us: u64,
    /// Time until the deadline of its wait (negative: overdue), when the wait has one.
    pub deadline_in_us: Option<i64>,
    /// Time spent running, sampled by the monitor.
    pub run_time_us: u64,
    /// Switches (waits and yields).
    pub switches: u64,
    /// Its stack size in bytes.
    pub stack_size: usize,
    /// Whether a kill is pending.
    pub kill_requested: bool,
}

/// How a finished green thread ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// It returned a value.
    Returned,
    /// It panicked.
    Panicked {
        /// The panic message.
        message: String,
    },
    /// It was killed.
    Killed,
    /// It could not start.
    NotStarted {
        /// Why.
        reason: String,
    },
}

/// A recently finished green thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinishedInfo {
    /// Id.
    pub id: u64,
    /// Name, if any.
    pub name: Option<String>,
    /// The green thread that spawned it.
    pub parent: Option<u64>,
    /// Where it was spawned.
    pub spawn_site: String,
    /// How long it lived.
    pub lived_us: u64,
    /// How long ago it ended.
    pub ended_ago_us: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Time spent running, sampled.
    pub run_time_us: u64,
    /// Switches.
    pub switches: u64,
}

/// Kinds of timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimerKindInfo {
    /// A [`crate::sleep`].
    Sleep,
    /// A [`crate::call_after`].
    CallAfter,
    /// The start of a [`crate::spawn_after`] thread.
    SpawnAfter,
    /// A [`crate::with_timeout`] scope.
    Deadline,
}

/// A pending timer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TimerInfo {
    /// Id.
    pub id: u64,
    /// Kind.
    pub kind: TimerKindInfo,
    /// Time until it is due (negative: overdue).
    pub due_in_us: i64,
    /// The green thread it belongs to.
    pub owner: Option<u64>,
    /// Where it was created.
    pub site: String,
}

/// A descriptor a green thread waits on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DescriptorInfo {
    /// The raw descriptor.
    pub fd: i32,
    /// Readable, writable or both.
    pub interest: Interest,
    /// The waiting green thread.
    pub owner: Option<u64>,
    /// How long it has waited.
    pub waiting_us: u64,
}

/// An OS thread that runs green threads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    /// Index in order of first use.
    pub index: usize,
    /// Linux thread id.
    pub tid: i32,
    /// The green thread it runs now.
    pub running: Option<u64>,
}

/// A green thread that kept a worker busy without switching.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockedInfo {
    /// Report number.
    pub seq: u64,
    /// The green thread.
    pub thread: u64,
    /// Its name.
    pub name: Option<String>,
    /// Where it was spawned.
    pub spawn_site: Option<String>,
    /// The worker's index.
    pub worker: usize,
    /// The worker's Linux thread id.
    pub tid: i32,
    /// How long ago the busy stretch began.
    pub started_ago_us: u64,
    /// How long it lasted (so far, if ongoing).
    pub duration_us: u64,
    /// Whether the worker is still held.
    pub ongoing: bool,
}

pub(crate) fn process_name() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn us(ns: u64) -> u64 {
    ns / 1000
}

fn signed_us(later_ns: u64, earlier_ns: u64) -> i64 {
    (later_ns as i128 - earlier_ns as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64 / 1000
}

/// Takes a snapshot of the registry. Costs one pass over the live threads; the green threads
/// themselves are not stopped.
pub fn snapshot() -> Snapshot {
    take(true)
}

/// The snapshot's totals, workers, reports and objects, with the lists of threads, finished
/// threads, timers and descriptors left empty: what `/stats` and `/metrics` serve, without
/// describing each of 100,000 threads to count them.
pub(crate) fn overview() -> Snapshot {
    take(false)
}

fn take(lists: bool) -> Snapshot {
    let reg = registry();
    let rt = runtime::get_if_started();
    // Read everything first and the clocks last, so that no time read from a table is later
    // than the snapshot's "now".
    let (live, finished_switches) = reg.live_threads();
    let states: Vec<_> = live
        .into_iter()
        .map(|r| {
            let view = r.read();
            (r, view)
        })
        .collect();
    let finished = if lists { reg.finished() } else { Vec::new() };
    let timers = if lists { reg.timers() } else { Vec::new() };
    let fds = if lists { reg.fds() } else { Vec::new() };
    let reports = monitor::reports();
    // Objects are inspected outside the table's locks: an inspection takes the object's own
    // lock, and an object dropped meanwhile takes the table's.
    let mut objects: Vec<ObjectInfo> = reg.objects().iter().map(|o| o.inspect()).collect();
    objects.sort_by_key(|o| o.id);
    let now = clock::coarse_ns();
    let precise = clock::precise_ns();

    let mut totals = Totals::default();
    let mut live_switches = 0;
    let live = states.len();
    let mut threads: Vec<ThreadInfo> = Vec::with_capacity(if lists { live } else { 0 });
    for (r, view) in states {
        let state = match view.phase {
            Phase::Scheduled => ThreadState::Scheduled,
            Phase::Running => ThreadState::Running,
            Phase::Waiting => ThreadState::Waiting,
        };
        match state {
            ThreadState::Scheduled => totals.scheduled += 1,
            ThreadState::Running => totals.running += 1,
            ThreadState::Waiting => totals.waiting += 1,
        }
        let switches = r.switches.load(Ordering::Relaxed);
        live_switches += switches;
        if !lists {
            continue;
        }
        threads.push(ThreadInfo {
            id: r.id,
            name: r.name.as_deref().map(String::from),
            parent: r.parent,
            spawn_site: r.site.to_string(),
            age_us: us(now.saturating_sub(r.created_ns)),
            state,
            waiting_on: view.waiting_on,
            state_for_us: us(now.saturating_sub(view.since_ns)),
            deadline_in_us: view.deadline_ns.map(|d| signed_us(d, precise)),
            run_time_us: us(r.run_ns.load(Ordering::Relaxed)),
            switches,
            stack_size: r.stack_size,
            kill_requested: r.kill_requested.load(Ordering::Relaxed),
        });
    }
    threads.sort_by_key(|t| t.id);

    let finished = finished
        .into_iter()
        .map(|(r, ended_ns, ending)| FinishedInfo {
            id: r.id,
            name: r.name.as_deref().map(String::from),
            parent: r.parent,
            spawn_site: r.site.to_string(),
            lived_us: us(ended_ns.saturating_sub(r.created_ns)),
            ended_ago_us: us(now.saturating_sub(ended_ns)),
            outcome: match ending {
                Ending::Returned => Outcome::Returned,
                Ending::Panicked(m) => Outcome::Panicked {
                    message: m.to_string(),
                },
                Ending::Killed => Outcome::Killed,
                Ending::NotStarted(m) => Outcome::NotStarted {
                    reason: m.to_string(),
                },
            },
            run_time_us: us(r.run_ns.load(Ordering::Relaxed)),
            switches: r.switches.load(Ordering::Relaxed),
        })
        .collect();

    let timers: Vec<TimerInfo> = timers
        .into_iter()
        .map(|(id, kind, deadline_ns, owner, site)| TimerInfo {
            id,
            kind: match kind {
                TimerKind::Sleep => TimerKindInfo::Sleep,
                TimerKind::CallAfter => TimerKindInfo::CallAfter,
                TimerKind::SpawnAfter => TimerKindInfo::SpawnAfter,
                TimerKind::Deadline => TimerKindInfo::Deadline,
            },
            due_in_us: signed_us(deadline_ns, precise),
            owner,
            site: site.to_string(),
        })
        .collect();

    let descriptors: Vec<DescriptorInfo> = fds
        .into_iter()
        .map(|(fd, interest, owner, since)| DescriptorInfo {
            fd,
            interest,
            owner,
            waiting_us: us(now.saturating_sub(since)),
        })
        .collect();

    let workers = monitor::workers()
        .into_iter()
        .map(|(index, tid, running)| WorkerInfo {
            index,
            tid,
            running: (running != 0).then_some(running),
        })
        .collect();

    let blocked: Vec<BlockedInfo> = reports
        .into_iter()
        .map(|b| BlockedInfo {
            seq: b.seq,
            thread: b.thread,
            name: b.name.as_deref().map(String::from),
            spawn_site: b.site.map(|s| s.to_string()),
            worker: b.worker,
            tid: b.tid,
            started_ago_us: us(precise.saturating_sub(b.started_ns)),
            duration_us: b.duration.as_micros() as u64,
            ongoing: b.ongoing,
        })
        .collect();

    let c = &reg.counters;
    totals.live = live;
    totals.spawned = c.spawned.load(Ordering::Relaxed);
    totals.finished = c.finished.load(Ordering::Relaxed);
    totals.panicked = c.panicked.load(Ordering::Relaxed);
    totals.killed = c.killed.load(Ordering::Relaxed);
    totals.switches = finished_switches + live_switches;
    totals.timers = if lists {
        timers.len()
    } else {
        reg.timer_count()
    };
    totals.descriptors = if lists {
        descriptors.len()
    } else {
        reg.fd_count()
    };
    totals.blocked_now = blocked.iter().filter(|b| b.ongoing).count();
    totals.objects = objects.len();

    Snapshot {
        schema_version: SCHEMA_VERSION,
        pid: std::process::id(),
        process: process_name(),
        uptime_us: clock::uptime().as_micros() as u64,
        runtime: match rt {
            Some(rt) => RuntimeInfo {
                started: true,
                workers: rt.config.get_workers(),
                stack_size: rt.config.get_stack_size(),
                max_blocking_time_us: rt
                    .config
                    .get_max_blocking_time()
                    .map(|d| d.as_micros() as u64),
                max_green_threads: rt.config.get_max_green_threads(),
                max_map_count: rt.budget.max_map_count,
                map_limit: rt.budget.map_limit,
                live_stacks: rt.budget.live(),
                hub: crate::hub::stats(),
            },
            None => RuntimeInfo {
                started: false,
                workers: 0,
                stack_size: 0,
                max_blocking_time_us: None,
                max_green_threads: None,
                max_map_count: None,
                map_limit: None,
                live_stacks: 0,
                hub: crate::hub::stats(),
            },
        },
        totals,
        threads,
        finished,
        timers,
        descriptors,
        workers,
        blocked,
        objects,
    }
}

/// A synchronization object, pool or other thing green threads wait on, as the snapshot shows
/// it. A green thread waiting on it shows [`WaitOn::Object`] with the same kind and id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// What it is.
    pub kind: ObjectKind,
    /// Its id (unique among all ids the registry hands out).
    pub id: u64,
    /// The name given at construction, if any.
    pub name: Option<String>,
    /// Green threads (and OS threads) waiting on it now.
    pub waiters: usize,
    /// The object's own counts, by name: `len` and `capacity` for a queue, `permits` for a
    /// semaphore, `running` and `size` for a pool, and so on (each type documents its own).
    pub counts: BTreeMap<String, u64>,
    /// Structured state that counts cannot hold (histograms, running calls, checkouts), as
    /// JSON in a shape the object's crate documents and can read back (the tpool's
    /// `PoolStats`, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl ObjectInfo {
    /// An entry with no counts yet.
    pub fn new(kind: ObjectKind, id: u64, name: Option<&str>, waiters: usize) -> ObjectInfo {
        ObjectInfo {
            kind,
            id,
            name: name.map(String::from),
            waiters,
            counts: BTreeMap::new(),
            detail: None,
        }
    }

    /// Attaches structured state (see [`ObjectInfo::detail`]).
    pub fn with_detail(mut self, detail: serde_json::Value) -> ObjectInfo {
        self.detail = Some(detail);
        self
    }

    /// Adds a count.
    pub fn count(mut self, name: &str, value: u64) -> ObjectInfo {
        self.counts.insert(name.to_string(), value);
        self
    }

    /// One line: kind, id, name, waiters and counts.
    pub fn describe(&self) -> String {
        let mut s = format!("{} #{}", self.kind.name(), self.id);
        if let Some(name) = &self.name {
            let _ = write!(s, " \"{name}\"");
        }
        let _ = write!(s, ": {} waiting", self.waiters);
        for (k, v) in &self.counts {
            let _ = write!(s, ", {k} {v}");
        }
        s
    }
}

/// An object that shows in the [`snapshot`]: implemented by greenhub's synchronization types,
/// and by other crates' pools through [`Registration`].
pub trait Inspect: Send + Sync {
    /// The object's current state. Called from the thread taking a snapshot; keep it short
    /// (take the object's lock once, copy the counts).
    fn inspect(&self) -> ObjectInfo;
}

/// Keeps an object listed in the [`snapshot`] while the registration lives.
///
/// The registry holds only a weak reference, so the usual pattern is to build the object with
/// [`std::sync::Arc::new_cyclic`] and keep its registration inside it:
///
/// ```
/// use std::sync::{Arc, Weak};
/// use greenhub::inspect::{Inspect, ObjectInfo, Registration};
/// use greenhub::wait::ObjectKind;
///
/// struct Gauge { reg: Registration }
/// impl Inspect for Gauge {
///     fn inspect(&self) -> ObjectInfo {
///         ObjectInfo::new(ObjectKind::Other, self.reg.id(), Some("gauge"), 0).count("level", 3)
///     }
/// }
///
/// let gauge = Arc::new_cyclic(|weak: &Weak<Gauge>| Gauge { reg: Registration::new(weak.clone()) });
/// let snap = greenhub::inspect::snapshot();
/// let seen = snap.objects.iter().find(|o| o.id == gauge.reg.id()).unwrap();
/// assert_eq!(seen.counts["level"], 3);
/// ```
#[derive(Debug)]
pub struct Registration {
    id: u64,
}

impl Registration {
    /// Lists `object` under a fresh id until the registration is dropped.
    pub fn new<O: Inspect + 'static>(object: std::sync::Weak<O>) -> Registration {
        let reg = registry();
        let id = reg.next_id();
        reg.insert_object(id, object);
        Registration { id }
    }

    /// The object's id: use it in [`WaitOn::Object`].
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        registry().remove_object(self.id);
    }
}

/// A duration in microseconds, the way a person reads it ("850us", "12ms", "1.20s", "3m05s").
pub fn format_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us}us"),
        1_000..=999_999 => format!("{}ms", us / 1000),
        1_000_000..=59_999_999 => format!("{:.2}s", us as f64 / 1e6),
        _ => {
            let s = us / 1_000_000;
            if s >= 3600 {
                format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
            } else {
                format!("{}m{:02}s", s / 60, s % 60)
            }
        }
    }
}

impl ThreadInfo {
    /// One line: what the thread is doing, for how long, and where it came from.
    pub fn describe(&self) -> String {
        let mut s = format!("#{}", self.id);
        if let Some(name) = &self.name {
            let _ = write!(s, " \"{name}\"");
        }
        match (self.state, &self.waiting_on) {
            (ThreadState::Waiting, Some(on)) => {
                let _ = write!(s, " waiting on {on} for {}", format_us(self.state_for_us));
            }
            (state, _) => {
                let _ = write!(s, " {} for {}", state.name(), format_us(self.state_for_us));
            }
        }
        if let Some(d) = self.deadline_in_us {
            if d >= 0 {
                let _ = write!(s, ", deadline in {}", format_us(d as u64));
            } else {
                let _ = write!(s, ", deadline overdue by {}", format_us(d.unsigned_abs()));
            }
        }
        if self.kill_requested {
            s.push_str(", kill pending");
        }
        let _ = write!(
            s,
            " [spawned at {}, age {}, ran {}, {} switches]",
            self.spawn_site,
            format_us(self.age_us),
            format_us(self.run_time_us),
            self.switches
        );
        s
    }
}

impl Snapshot {
    /// The plain-text dump: a header, the live green threads as a tree by parent, then the
    /// timers, descriptors and blocked-worker reports.
    pub fn format_run_info(&self) -> String {
        let t = &self.totals;
        let mut out = format!(
            "greenhub run info: pid {} ({}), up {}, {} workers\n\
             green threads: {} live ({} running, {} waiting, {} scheduled), {} spawned, \
             {} finished ({} panicked, {} killed), {} switches\n\
             timers: {}, descriptors: {}, objects: {}, blocked workers now: {}\n",
            self.pid,
            self.process,
            format_us(self.uptime_us),
            self.runtime.workers,
            t.live,
            t.running,
            t.waiting,
            t.scheduled,
            t.spawned,
            t.finished,
            t.panicked,
            t.killed,
            t.switches,
            t.timers,
            t.descriptors,
            t.objects,
            t.blocked_now,
        );

        let by_id: BTreeMap<u64, &ThreadInfo> = self.threads.iter().map(|t| (t.id, t)).collect();
        let mut children: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut roots = Vec::new();
        for th in &self.threads {
            match th.parent.filter(|p| by_id.contains_key(p)) {
                Some(p) => children.entry(p).or_default().push(th.id),
                None => roots.push(th.id),
            }
        }
        out.push_str("\nthreads (tree by parent; a parent that has ended is not shown):\n");
        // Iterative, so that a deep chain of spawns cannot overflow a green thread's stack.
        let mut stack: Vec<(u64, usize)> = roots.iter().rev().map(|&id| (id, 0)).collect();
        while let Some((id, depth)) = stack.pop() {
            let th = by_id[&id];
            let _ = writeln!(out, "{}{}", "  ".repeat(depth + 1), th.describe());
            if let Some(kids) = children.get(&id) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }

        if !self.timers.is_empty() {
            out.push_str("\ntimers:\n");
            for tm in &self.timers {
                let due = if tm.due_in_us >= 0 {
                    format!("due in {}", format_us(tm.due_in_us as u64))
                } else {
                    format!("overdue by {}", format_us(tm.due_in_us.unsigned_abs()))
                };
                let owner = tm.owner.map(|o| format!(" owner #{o}")).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  timer #{} {:?} {due}{owner} [set at {}]",
                    tm.id, tm.kind, tm.site
                );
            }
        }
        if !self.descriptors.is_empty() {
            out.push_str("\ndescriptors:\n");
            for d in &self.descriptors {
                let owner = d.owner.map(|o| format!(" by #{o}")).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  fd {} ({}){owner} for {}",
                    d.fd,
                    d.interest.name(),
                    format_us(d.waiting_us)
                );
            }
        }
        if !self.objects.is_empty() {
            out.push_str("\nobjects:\n");
            for o in &self.objects {
                let _ = writeln!(out, "  {}", o.describe());
            }
        }
        if !self.blocked.is_empty() {
            out.push_str("\nblocked-worker reports:\n");
            for b in &self.blocked {
                let name = b
                    .name
                    .as_deref()
                    .map(|n| format!(" \"{n}\""))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  #{}{name} held worker {} (tid {}) for {}{} [spawned at {}]",
                    b.thread,
                    b.worker,
                    b.tid,
                    format_us(b.duration_us),
                    if b.ongoing { ", still holding it" } else { "" },
                    b.spawn_site.as_deref().unwrap_or("?")
                );
            }
        }
        out
    }
}

/// [`snapshot`] formatted by [`Snapshot::format_run_info`].
pub fn format_run_info() -> String {
    snapshot().format_run_info()
}
