//! The monitor: an OS thread that watches the workers.
//!
//! Each OS thread that runs greenhub green threads has a [`WorkerSlot`]: the id of the green
//! thread it runs now (0 when it runs none of ours) and a generation that changes at every
//! switch. Writing them costs two relaxed stores per switch and no clock read. Every tick the
//! monitor reads each slot:
//!
//! - the green thread found running is charged the tick's length (run time is *sampled*: good
//!   for finding what uses the CPU, not an exact account of short bursts);
//! - a slot whose green thread and generation have not changed since the monitor first saw them
//!   means one green thread has kept that worker without switching; past `max_blocking_time` it
//!   is reported (not raised, unlike eventlet's SIGALRM): to `log` and to a bounded history in
//!   the snapshot, and the report is closed with its final length when the worker switches.
//!
//! A thread that is waiting has given its worker back, so it can never be reported. Waits done
//! directly with `may`'s own APIs are not bracketed by greenhub and look like running.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::core::clock;
use crate::core::registry::registry;
use crate::core::{graveyard, report};

/// How often the monitor samples the workers.
pub(crate) const TICK: Duration = Duration::from_millis(10);

pub(crate) struct WorkerSlot {
    pub index: usize,
    pub tid: i32,
    current: AtomicU64,
    generation: AtomicU64,
}

static SLOTS: Mutex<Vec<&'static WorkerSlot>> = Mutex::new(Vec::new());

thread_local! {
    static SLOT: Cell<Option<&'static WorkerSlot>> = const { Cell::new(None) };
}

#[cold]
fn register_slot() -> &'static WorkerSlot {
    let mut slots = SLOTS.lock();
    // Leaked on purpose: one per OS thread that ever runs a green thread (the workers).
    let slot: &'static WorkerSlot = Box::leak(Box::new(WorkerSlot {
        index: slots.len(),
        // SAFETY: gettid has no preconditions.
        tid: unsafe { libc::gettid() },
        current: AtomicU64::new(0),
        generation: AtomicU64::new(0),
    }));
    slots.push(slot);
    SLOT.with(|s| s.set(Some(slot)));
    slot
}

#[inline]
fn slot() -> &'static WorkerSlot {
    SLOT.with(|s| s.get()).unwrap_or_else(register_slot)
}

// Never inlined: a caller that also waits (the wait path marks idle, parks, marks running)
// would let the compiler keep the thread-local's address from before the park, and a green
// thread resumed on another worker would then write the slot of the worker it left (seen in
// release builds as a sleeping thread reported for keeping its old worker busy).
#[inline(never)]
fn set_slot(id: u64) {
    // Read and written in one call: the green thread cannot migrate in between.
    let s = slot();
    s.current.store(id, Ordering::Relaxed);
    let g = s.generation.load(Ordering::Relaxed);
    s.generation.store(g.wrapping_add(1), Ordering::Release);
}

/// The green thread `id` starts or resumes on this OS thread.
#[inline]
pub(crate) fn mark_running(id: u64) {
    set_slot(id);
}

/// The current green thread gives up this OS thread.
#[inline]
pub(crate) fn mark_idle() {
    set_slot(0);
}

/// A green thread that kept a worker busy without switching.
#[derive(Clone, Debug)]
pub(crate) struct Blocked {
    pub seq: u64,
    pub thread: u64,
    pub name: Option<Arc<str>>,
    pub site: Option<&'static Location<'static>>,
    pub worker: usize,
    pub tid: i32,
    pub started_ns: u64,
    pub duration: Duration,
    pub ongoing: bool,
}

struct Reports {
    history: VecDeque<Blocked>,
    capacity: usize,
    next_seq: u64,
}

static REPORTS: Mutex<Reports> = Mutex::new(Reports {
    history: VecDeque::new(),
    capacity: 64,
    next_seq: 1,
});

/// The blocked-worker reports, oldest first (ongoing ones included).
pub(crate) fn reports() -> Vec<Blocked> {
    REPORTS.lock().history.iter().cloned().collect()
}

/// What the workers run now: (index, tid, green thread id or 0).
pub(crate) fn workers() -> Vec<(usize, i32, u64)> {
    SLOTS
        .lock()
        .iter()
        .map(|s| (s.index, s.tid, s.current.load(Ordering::Relaxed)))
        .collect()
}

struct Watch {
    thread: u64,
    generation: u64,
    since: Instant,
    report: Option<u64>,
}

static STARTED: OnceLock<()> = OnceLock::new();

/// Starts the monitor thread once.
pub(crate) fn start(max_blocking_time: Option<Duration>, history: usize) {
    STARTED.get_or_init(|| {
        REPORTS.lock().capacity = history.max(1);
        let spawned = std::thread::Builder::new()
            .name("greenhub-monitor".into())
            .spawn(move || run(max_blocking_time));
        if let Err(e) = spawned {
            report::warn(&format!(
                "greenhub: cannot start the monitor thread ({e}); run times and blocked-worker reports are off"
            ));
        }
    });
}

fn run(max_blocking_time: Option<Duration>) {
    let mut watches: Vec<Option<Watch>> = Vec::new();
    let mut last = Instant::now();
    loop {
        std::thread::sleep(TICK);
        clock::tick();
        graveyard::sweep();
        let now = Instant::now();
        let tick = now - last;
        last = now;
        let slots: Vec<&'static WorkerSlot> = SLOTS.lock().clone();
        watches.resize_with(slots.len(), || None);
        for (slot, watch) in slots.iter().zip(watches.iter_mut()) {
            let generation = slot.generation.load(Ordering::Acquire);
            let thread = slot.current.load(Ordering::Relaxed);
            if thread != 0
                && let Some(record) = registry().thread(thread)
            {
                record
                    .run_ns
                    .fetch_add(tick.as_nanos() as u64, Ordering::Relaxed);
            }
            let same = watch
                .as_ref()
                .is_some_and(|w| w.thread == thread && w.generation == generation);
            if !same {
                if let Some(w) = watch.take() {
                    close(&w, now);
                }
                if thread != 0 {
                    *watch = Some(Watch {
                        thread,
                        generation,
                        since: now,
                        report: None,
                    });
                }
                continue;
            }
            let Some(w) = watch.as_mut() else { continue };
            // Counted from the first tick that saw it: never early, at most one tick late.
            let busy = now - w.since;
            match (w.report, max_blocking_time) {
                (Some(seq), _) => update(seq, busy),
                (None, Some(limit)) if busy >= limit => {
                    w.report = Some(open(slot, w.thread, busy));
                }
                _ => {}
            }
        }
    }
}

fn open(slot: &WorkerSlot, thread: u64, busy: Duration) -> u64 {
    let record = registry().thread(thread);
    let name = record.as_ref().and_then(|r| r.name.clone());
    let site = record.as_ref().map(|r| r.site);
    let blocked = {
        let mut reports = REPORTS.lock();
        let seq = reports.next_seq;
        reports.next_seq += 1;
        let blocked = Blocked {
            seq,
            thread,
            name,
            site,
            worker: slot.index,
            tid: slot.tid,
            started_ns: clock::precise_ns().saturating_sub(busy.as_nanos() as u64),
            duration: busy,
            ongoing: true,
        };
        if reports.history.len() >= reports.capacity {
            reports.history.pop_front();
        }
        reports.history.push_back(blocked.clone());
        blocked
    };
    let label = describe(&blocked);
    report::warn(&format!(
        "greenhub: {label} has kept worker {} (tid {}) busy for {} ms without switching; \
         a blocking call in a green thread freezes every green thread on its worker: \
         run it through greenhub-tpool",
        blocked.worker,
        blocked.tid,
        busy.as_millis()
    ));
    blocked.seq
}

fn update(seq: u64, busy: Duration) {
    let mut reports = REPORTS.lock();
    if let Some(b) = reports.history.iter_mut().find(|b| b.seq == seq) {
        b.duration = busy;
    }
}

fn close(w: &Watch, now: Instant) {
    let Some(seq) = w.report else { return };
    let busy = now - w.since;
    let closed = {
        let mut reports = REPORTS.lock();
        reports.history.iter_mut().find(|b| b.seq == seq).map(|b| {
            b.duration = b.duration.max(busy);
            b.ongoing = false;
            b.clone()
        })
    };
    if let Some(b) = closed {
        report::warn(&format!(
            "greenhub: {} released worker {} after {} ms",
            describe(&b),
            b.worker,
            b.duration.as_millis()
        ));
    }
}

fn describe(b: &Blocked) -> String {
    let mut s = format!("green thread #{}", b.thread);
    if let Some(name) = &b.name {
        s.push_str(&format!(" \"{name}\""));
    }
    if let Some(site) = b.site {
        s.push_str(&format!(" (spawned at {site})"));
    }
    s
}
