//! The snapshot: every live green thread, pending timer, watched descriptor, worker,
//! blocked-worker report and registered object of a process, as serde data.
//!
//! Times are relative to the moment of the snapshot (`*_ago_us`, `*_for_us`, `*_in_us`), in
//! microseconds, so that a reader needs no clock of its own. "Since" times come from a coarse
//! clock (1 to 4 ms resolution); deadlines are exact. The schema is versioned by
//! [`SCHEMA_VERSION`]: fields may be added within a version, never removed or changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::text::escape_controls;
use crate::wait::{Interest, ObjectKind, WaitOn};

/// The version of the snapshot's JSON schema.
pub const SCHEMA_VERSION: u32 = 2;

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
    /// Why the threads carry no stacks although stacks were asked for (for instance a build
    /// without frame pointers); `None` when they were read or not asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stacks_unavailable: Option<String>,
    /// Whether timing is on (then threads carry [`ThreadInfo::times`] and `sites` is filled).
    #[serde(default)]
    pub timing: bool,
    /// Where time goes by spawn site, while timing is on: histograms of the stretches spent
    /// running, runnable and waiting (by kind of wait), since timing came on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<SiteTimes>,
    /// Deadlocks found by the monitor and still in place: groups of green threads each waiting
    /// for another of the group, which no thread outside it can release.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deadlocks: Vec<Deadlock>,
}

/// A deadlock: green threads that each wait for a unit (a lock, a connection, a thread's end)
/// that only others of the group can give, so none of them goes on until a deadline ends one
/// of the waits or a thread is killed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deadlock {
    /// Its number among the deadlocks found since start (from 1).
    pub seq: u64,
    /// What shape it has.
    pub kind: DeadlockKind,
    /// The threads in it, by id.
    pub threads: Vec<DeadlockedThread>,
    /// How long ago the monitor found it.
    pub found_ago_us: u64,
}

/// The shape of a [`Deadlock`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeadlockKind {
    /// A cycle: each thread holds what the next one waits for (two locks taken in opposite
    /// orders, a thread joining a thread that waits for its lock, ...).
    Cycle,
    /// A pool's self-deadlock: every unit of the pool is held by these threads, and each waits
    /// for another unit of the same pool while holding one. The pool needs more units than its
    /// threads can hold at once (HikariCP's sizing rule), or a thread must give its unit back
    /// before it takes another.
    Pool {
        /// The pool.
        pool: HeldObject,
    },
    /// Nothing left to wake them: every green thread of the process waits, no timer is
    /// pending and no other thread can act, so what these threads wait on (an event nobody
    /// will set, a queue nobody will put into, a lock held by one of them) never comes. Go's
    /// "all goroutines are asleep". A lost wake-up, a leaked waiter whose feeders are gone,
    /// or a lock and a queue waiting on each other.
    Asleep,
}

impl DeadlockKind {
    /// "cycle", "pool self-deadlock" or "all asleep".
    pub fn name(&self) -> &'static str {
        match self {
            DeadlockKind::Cycle => "cycle",
            DeadlockKind::Pool { .. } => "pool self-deadlock",
            DeadlockKind::Asleep => "all asleep",
        }
    }
}

/// An object a deadlocked thread holds a unit of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldObject {
    /// Its kind.
    pub object: ObjectKind,
    /// Its id.
    pub id: u64,
    /// Its name, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl std::fmt::Display for HeldObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} #{}", self.object.name(), self.id)?;
        if let Some(name) = &self.name {
            write!(f, " \"{}\"", escape_controls(name))?;
        }
        Ok(())
    }
}

/// One thread of a [`Deadlock`]: what it waits on and what of the deadlock it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadlockedThread {
    /// Its id.
    pub id: u64,
    /// Its name, if any.
    pub name: Option<String>,
    /// Where it was spawned.
    pub spawn_site: String,
    /// What it waits on.
    pub waiting_on: WaitOn,
    /// The name of the object it waits on, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_on_name: Option<String>,
    /// The objects it holds that other threads of the deadlock wait on.
    pub holds: Vec<HeldObject>,
    /// How long it has waited.
    pub waiting_for_us: u64,
    /// Time until its wait's deadline, which ends the deadlock (negative: overdue).
    pub deadline_in_us: Option<i64>,
    /// Where it waits, read when the deadlock was found (`None` when stacks are unavailable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<ThreadStack>,
}

impl Deadlock {
    /// Several lines: the kind, then each thread with what it holds and waits on, and the
    /// innermost frames of its stack. Names are escaped.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "deadlock #{} ({}): {} green threads",
            self.seq,
            self.kind.name(),
            self.threads.len()
        );
        match &self.kind {
            DeadlockKind::Pool { pool } => {
                let _ = write!(
                    s,
                    "; they hold every unit of {pool} and each waits for another"
                );
            }
            DeadlockKind::Asleep => {
                s.push_str(
                    "; every green thread waits and no timer or other thread can act, so \
                     nothing will set, put into or release what these wait on",
                );
            }
            DeadlockKind::Cycle => {}
        }
        for t in &self.threads {
            let _ = write!(s, "\n  thread #{}", t.id);
            if let Some(name) = &t.name {
                let _ = write!(s, " \"{}\"", escape_controls(name));
            }
            let _ = write!(s, " (spawned at {})", escape_controls(&t.spawn_site));
            if !t.holds.is_empty() {
                let held: Vec<String> = t.holds.iter().map(|h| h.to_string()).collect();
                let _ = write!(s, " holds {}", held.join(", "));
            }
            let _ = write!(s, "; waits on {}", t.waiting_on);
            if let Some(name) = &t.waiting_on_name {
                let _ = write!(s, " \"{}\"", escape_controls(name));
            }
            let _ = write!(s, " for {} ms", t.waiting_for_us / 1000);
            if let Some(d) = t.deadline_in_us {
                let _ = write!(s, " (its deadline in {} ms ends it)", d / 1000);
            }
            if let Some(stack) = &t.stack {
                for frame in stack.frames.iter().take(4) {
                    let _ = write!(s, "\n      {frame}");
                }
            }
        }
        s
    }
}

/// A green thread's time since timing came on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadTimes {
    /// Time on a worker.
    pub running_ns: u64,
    /// Time parked in waits, up to the wake.
    pub waiting_ns: u64,
    /// Time runnable but not running: from a wake (or a yield) until a worker ran it.
    pub runnable_ns: u64,
    /// Stretches on a worker.
    pub runs: u64,
    /// Waits.
    pub waits: u64,
}

/// The time of the green threads of one spawn site, by what it was spent on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteTimes {
    /// Where they were spawned.
    pub spawn_site: String,
    /// `running`, `runnable`, then one per kind of wait (`sleep`, `join`, `descriptor`, or an
    /// object kind such as `queue` or `tpool call`), the most time first.
    pub spent: Vec<TimeSummary>,
}

/// A histogram of stretches of time, summarized (quantiles within 10%).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeSummary {
    /// What the time was spent on.
    pub kind: String,
    /// Stretches.
    pub count: u64,
    /// Their total, approximately (the histogram's, within 10%).
    pub total_ns: u64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Longest.
    pub max_ns: u64,
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
    /// Green threads the cap allows in this process (`None` when stacks share mappings or
    /// the cap is unknown).
    pub map_limit: Option<usize>,
    /// Stacks are slots of shared mappings with guard regions (Linux 6.13+): a green thread
    /// costs no memory mapping of its own, so `max_map_count` does not bound them.
    #[serde(default)]
    pub stacks_share_mappings: bool,
    /// Whether the flight recorder is recording (`inspector trace` reads it).
    #[serde(default)]
    pub flight_recorder: bool,
    /// Green threads holding a stack now.
    pub live_stacks: usize,
    /// The inbox that batches wakes from OS threads (tpool completions).
    #[serde(default)]
    pub inbox: InboxStats,
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
    /// Deadlocks found since start.
    #[serde(default)]
    pub deadlocks_found: u64,
    /// Green threads in deadlocks now.
    #[serde(default)]
    pub deadlocked: usize,
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
    /// The name of the object it waits on, when that object has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_on_name: Option<String>,
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
    /// Where it waits, when stacks were asked for and it was parked in a wait when its stack
    /// was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<ThreadStack>,
    /// Its time running, waiting and runnable, while timing is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<ThreadTimes>,
}

/// The stack of a parked green thread, innermost frame first: the greenhub call it waits in,
/// then its callers up to the function it was spawned with. Frames inside greenhub's waiting
/// and spawning machinery are folded away (counted in `folded`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadStack {
    /// The frames, innermost first.
    pub frames: Vec<StackFrame>,
    /// How many frames were folded away.
    pub folded: u32,
}

/// One frame of a [`ThreadStack`]. An inlined call is a frame of its own, with the address of
/// the frame it was inlined into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackFrame {
    /// The function, demangled, without its hash (`"?"` when the address has no symbol).
    pub function: String,
    /// Its source file, when the build keeps line tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line in `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The code address (a return address: just after the call).
    pub address: u64,
}

impl std::fmt::Display for StackFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&escape_controls(&self.function))?;
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, " at {}:{line}", escape_controls(file)),
            (Some(file), None) => write!(f, " at {}", escape_controls(file)),
            _ => write!(f, " at {:#x}", self.address),
        }
    }
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
    /// A `greenhub::sleep`.
    Sleep,
    /// A `greenhub::call_after`.
    CallAfter,
    /// The start of a `greenhub::thread::spawn_after` thread.
    SpawnAfter,
    /// A `greenhub::with_timeout` scope.
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
    /// What held it, when the worker's scheduler statistics could tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<BlockedCause>,
    /// Of `duration_us`, the time the worker spent on a CPU (the rest it slept in the kernel
    /// or waited for a CPU), when known. Counted from the monitor's first look at the run,
    /// which comes later than its start when the monitor dozed as it began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_cpu_us: Option<u64>,
    /// Where the green thread was when the report opened: the stack the worker was running,
    /// innermost first (the first frame is the interrupted instruction, often in a system call
    /// of the C library), read on the worker by a signal. `None` when it could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<ThreadStack>,
}

/// What kept a worker from switching, told apart by the worker's own CPU time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockedCause {
    /// The green thread computed: the worker was on a CPU most of the time (a loop that
    /// never waits; yield in it, or run it on a thread pool).
    Computing,
    /// The green thread made a blocking call: the worker slept in the kernel most of the
    /// time (a blocking syscall, a synchronous driver; run it on a thread pool).
    Blocking,
}

impl BlockedCause {
    /// "computing" or "blocking call".
    pub fn name(self) -> &'static str {
        match self {
            BlockedCause::Computing => "computing",
            BlockedCause::Blocking => "blocking call",
        }
    }
}

/// The counters of the wake inbox, which batches wakes from OS threads (tpool completions)
/// into one signal to the workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxStats {
    /// Whether the inbox runs (otherwise batched wakes are direct wakes).
    pub running: bool,
    /// Wakes posted to it.
    pub posted: u64,
    /// Signals to the workers: at most one per batch.
    pub signals: u64,
    /// Batches taken from it.
    pub batches: u64,
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
    /// The green threads its waiters wait for, while it has nothing to give: each holds a unit
    /// (the lock, a connection). Empty when a waiter could also be served otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<u64>,
    /// The object's own counts, by name: `len` and `capacity` for a queue, `permits` for a
    /// semaphore, `running` and `size` for a pool, and so on (each type documents its own).
    pub counts: BTreeMap<String, u64>,
    /// The object's running totals, by name: counts that only grow over its life (`puts`
    /// and `gets` of a queue, `acquired` of a semaphore, `submitted` of a thread pool), which
    /// a monitoring system turns into rates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub totals: BTreeMap<String, u64>,
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
            holders: Vec::new(),
            counts: BTreeMap::new(),
            totals: BTreeMap::new(),
            detail: None,
        }
    }

    /// Attaches structured state (see [`ObjectInfo::detail`]).
    pub fn with_detail(mut self, detail: serde_json::Value) -> ObjectInfo {
        self.detail = Some(detail);
        self
    }

    /// Adds a count: a level that goes up and down (see [`ObjectInfo::counts`]).
    pub fn count(mut self, name: &str, value: u64) -> ObjectInfo {
        self.counts.insert(name.to_string(), value);
        self
    }

    /// Adds a running total: a count that only grows (see [`ObjectInfo::totals`]).
    pub fn total(mut self, name: &str, value: u64) -> ObjectInfo {
        self.totals.insert(name.to_string(), value);
        self
    }

    /// One line: kind, id, name, waiters, counts and totals.
    pub fn describe(&self) -> String {
        let mut s = format!("{} #{}", self.kind.name(), self.id);
        if let Some(name) = &self.name {
            let _ = write!(s, " \"{}\"", escape_controls(name));
        }
        let _ = write!(s, ": {} waiting", self.waiters);
        for (k, v) in self.counts.iter().chain(&self.totals) {
            let _ = write!(s, ", {} {v}", escape_controls(k));
        }
        s
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
            let _ = write!(s, " \"{}\"", escape_controls(name));
        }
        match (self.state, &self.waiting_on) {
            (ThreadState::Waiting, Some(on)) => {
                match (on, &self.waiting_on_name) {
                    (WaitOn::Object { object, id }, Some(name)) => {
                        let name = escape_controls(name);
                        let _ = write!(s, " waiting on {object} \"{name}\" #{id}");
                    }
                    _ => {
                        let _ = write!(s, " waiting on {on}");
                    }
                }
                let _ = write!(s, " for {}", format_us(self.state_for_us));
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
            escape_controls(&self.spawn_site),
            format_us(self.age_us),
            format_us(self.run_time_us),
            self.switches
        );
        s
    }
}

impl Snapshot {
    /// The plain-text dump: a header, the deadlocks, the live green threads as a tree by
    /// parent, then the timers, descriptors and blocked-worker reports.
    pub fn format_run_info(&self) -> String {
        let t = &self.totals;
        let mut out = format!(
            "greenhub run info: pid {} ({}), up {}, {} workers\n\
             green threads: {} live ({} running, {} waiting, {} scheduled), {} spawned, \
             {} finished ({} panicked, {} killed), {} switches\n\
             timers: {}, descriptors: {}, objects: {}, blocked workers now: {}\n",
            self.pid,
            escape_controls(&self.process),
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

        // Deadlocks first: nothing in the dump matters more.
        for d in &self.deadlocks {
            let _ = writeln!(out, "{}", d.describe().replace('\n', "\n  "));
        }

        let by_id: BTreeMap<u64, &ThreadInfo> = self.threads.iter().map(|t| (t.id, t)).collect();
        let mut children: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        let mut roots = Vec::new();
        for th in &self.threads {
            match th.parent.filter(|p| by_id.contains_key(p)) {
                Some(p) => children.entry(p).or_default().push(th.id),
                None => roots.push(th.id),
            }
        }
        if let Some(why) = &self.stacks_unavailable {
            let _ = writeln!(out, "stacks: unavailable: {}", escape_controls(why));
        }
        out.push_str("\nthreads (tree by parent; a parent that has ended is not shown):\n");
        // Iterative, so that a deep chain of spawns cannot overflow a green thread's stack.
        let mut stack: Vec<(u64, usize)> = roots.iter().rev().map(|&id| (id, 0)).collect();
        while let Some((id, depth)) = stack.pop() {
            let th = by_id[&id];
            let indent = "  ".repeat(depth + 1);
            let _ = writeln!(out, "{indent}{}", th.describe());
            if let Some(stack) = &th.stack {
                for frame in &stack.frames {
                    let _ = writeln!(out, "{indent}    {frame}");
                }
            }
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
                    tm.id,
                    tm.kind,
                    escape_controls(&tm.site)
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
        if !self.sites.is_empty() {
            out.push_str(
                "\nwhere time goes, by spawn site (since timing came on: stretches, total, \
                 median, 99th percentile, longest):\n",
            );
            let ns = |ns: u64| format_us(ns / 1000);
            for site in &self.sites {
                let _ = writeln!(out, "  {}", escape_controls(&site.spawn_site));
                for t in &site.spent {
                    let _ = writeln!(
                        out,
                        "    {:<14} {:>9} {:>9} {:>8} {:>8} {:>8}",
                        escape_controls(&t.kind),
                        t.count,
                        ns(t.total_ns),
                        ns(t.p50_ns),
                        ns(t.p99_ns),
                        ns(t.max_ns)
                    );
                }
            }
        }
        if !self.blocked.is_empty() {
            out.push_str("\nblocked-worker reports:\n");
            for b in &self.blocked {
                let name = b
                    .name
                    .as_deref()
                    .map(|n| format!(" \"{}\"", escape_controls(n)))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  #{}{name} held worker {} (tid {}) for {}{} [spawned at {}]",
                    b.thread,
                    b.worker,
                    b.tid,
                    format_us(b.duration_us),
                    if b.ongoing { ", still holding it" } else { "" },
                    escape_controls(b.spawn_site.as_deref().unwrap_or("?"))
                );
                for frame in b.stack.iter().flat_map(|s| &s.frames) {
                    let _ = writeln!(out, "      {frame}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deadlocked(id: u64, name: &str) -> DeadlockedThread {
        DeadlockedThread {
            id,
            name: Some(name.into()),
            spawn_site: "src/main.rs:1:1\x1b[2J".into(),
            waiting_on: WaitOn::Object {
                object: ObjectKind::MUTEX,
                id: 9,
            },
            waiting_on_name: Some("m\x1b]0;pwned\x07".into()),
            holds: vec![HeldObject {
                object: ObjectKind::MUTEX,
                id: 8,
                name: Some("held\r\n".into()),
            }],
            waiting_for_us: 2_000,
            deadline_in_us: Some(5_000_000),
            stack: None,
        }
    }

    #[test]
    fn a_deadlock_is_described_with_the_target_s_texts_escaped() {
        let d = Deadlock {
            seq: 3,
            kind: DeadlockKind::Cycle,
            threads: vec![deadlocked(1, "a\x1b[31m"), deadlocked(2, "b")],
            found_ago_us: 10,
        };
        let text = d.describe();
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.starts_with("deadlock #3 (cycle): 2 green threads"),
            "{text}"
        );
        assert!(text.contains("thread #1"), "{text}");
        assert!(text.contains("holds mutex #8"), "{text}");
        assert!(text.contains("waits on mutex #9"), "{text}");
        assert!(text.contains("deadline in 5000 ms"), "{text}");
        // Round trip through JSON, as the attach channel carries it.
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Deadlock>(&json).unwrap(), d);
    }
}
