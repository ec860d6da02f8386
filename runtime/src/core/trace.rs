//! The flight recorder: the last events of every green thread (spawns, runs, waits and on
//! what, wakes and by whom, kills, ends, blocked-worker reports, deadlocks), kept in rings
//! that overwrite their oldest entries, so that the seconds before an incident can be read
//! at any time (`inspector trace`, or written to a file when the incident happens).
//!
//! Where events go. Each OS thread that records gets a ring of its own, made on its first
//! event: a worker's holds [`WORKER_EVENTS`] events (40 bytes each), another thread's (a tpool
//! thread that wakes a green thread, the monitor) [`OTHER_EVENTS`]. A ring has one writer, its
//! thread, and no lock: each entry is a small seqlock (its sequence number cleared, the fields
//! stored, the number stored again), so a reader copies entries while they are written and
//! drops the ones it caught being overwritten. The ring of an OS thread that ends goes to the
//! next one. Rings are never freed.
//!
//! What it costs. Recording is on while the `TRACE` flag of the barrier word is up; off, each
//! switch pays nothing more than the flags word it reads anyway. On, a run and a wait each read
//! the time-stamp counter (`rdtsc`, where the CPU's counter is constant and does not stop;
//! the precise clock elsewhere) and write one entry; a wake writes one entry stamped the
//! same way. The harness's `ping_pong_1` suite measures it ("flight recorder on").
//!
//! It uses the barrier and the clock, nothing else of the crate, so that every layer above
//! can record.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use greenhub_snapshot::{Interest, ObjectKind, TraceEvent, TraceKind, WaitOn};
use parking_lot::Mutex;

use crate::core::barrier;
use crate::core::clock;

/// Events a worker's ring holds (a power of two).
pub(crate) const WORKER_EVENTS: usize = 1 << 16;

/// Events the ring of another OS thread holds (a power of two).
pub(crate) const OTHER_EVENTS: usize = 1 << 12;

/// Kinds of events, as a ring stores them.
const SPAWN: u64 = 1;
const RUN: u64 = 2;
const WAIT: u64 = 3;
const YIELD: u64 = 4;
const WAKE: u64 = 5;
const KILL: u64 = 6;
const EXIT: u64 = 7;
const BLOCKED: u64 = 8;
const DEADLOCK: u64 = 9;

/// How a thread ended, as an exit event stores it.
pub(crate) const RETURNED: u64 = 0;
pub(crate) const PANICKED: u64 = 1;
pub(crate) const KILLED: u64 = 2;

/// One entry: `seq` is its index in the ring plus one once its fields are complete, 0 while
/// they are written.
struct Entry {
    seq: AtomicU64,
    stamp: AtomicU64,
    /// The kind (bits 56..64), a wait's kind (48..56) and 16 more bits (32..48), the rest 0.
    head: AtomicU64,
    thread: AtomicU64,
    arg: AtomicU64,
}

/// One OS thread's events.
struct Ring {
    /// Entries written so far (the next one goes at `written & mask`).
    written: AtomicU64,
    entries: Box<[Entry]>,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            written: AtomicU64::new(0),
            entries: (0..capacity)
                .map(|_| Entry {
                    seq: AtomicU64::new(0),
                    stamp: AtomicU64::new(0),
                    head: AtomicU64::new(0),
                    thread: AtomicU64::new(0),
                    arg: AtomicU64::new(0),
                })
                .collect(),
        }
    }

    /// Writes an entry. Only the ring's own thread calls it.
    #[inline]
    fn push(&self, stamp: u64, head: u64, thread: u64, arg: u64) {
        let n = self.written.load(Ordering::Relaxed);
        let e = &self.entries[n as usize & (self.entries.len() - 1)];
        e.seq.store(0, Ordering::Relaxed);
        fence(Ordering::Release);
        e.stamp.store(stamp, Ordering::Relaxed);
        e.head.store(head, Ordering::Relaxed);
        e.thread.store(thread, Ordering::Relaxed);
        e.arg.store(arg, Ordering::Relaxed);
        e.seq.store(n + 1, Ordering::Release);
        self.written.store(n + 1, Ordering::Release);
    }

    /// The entries that are whole, oldest first, and how many were lost (overwritten before
    /// or while they were read).
    fn read(&self) -> (Vec<Raw>, u64) {
        let written = self.written.load(Ordering::Acquire);
        let capacity = self.entries.len() as u64;
        let first = written.saturating_sub(capacity);
        let mut out = Vec::with_capacity((written - first) as usize);
        let mut lost = first;
        for n in first..written {
            let e = &self.entries[n as usize & (self.entries.len() - 1)];
            let seq = e.seq.load(Ordering::Acquire);
            let raw = Raw {
                stamp: e.stamp.load(Ordering::Relaxed),
                head: e.head.load(Ordering::Relaxed),
                thread: e.thread.load(Ordering::Relaxed),
                arg: e.arg.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if seq == n + 1 && e.seq.load(Ordering::Relaxed) == seq {
                out.push(raw);
            } else {
                lost += 1;
            }
        }
        (out, lost)
    }
}

/// An entry as read.
#[derive(Clone, Copy)]
struct Raw {
    stamp: u64,
    head: u64,
    thread: u64,
    arg: u64,
}

/// Every ring made, and the rings of OS threads that have ended, for reuse.
static RINGS: Mutex<Vec<&'static Ring>> = Mutex::new(Vec::new());
static FREE: Mutex<Vec<&'static Ring>> = Mutex::new(Vec::new());

/// This OS thread's ring, given back when the thread ends.
struct Mine(Cell<Option<&'static Ring>>);

impl Drop for Mine {
    fn drop(&mut self) {
        if let Some(ring) = self.0.get() {
            FREE.lock().push(ring);
        }
    }
}

thread_local! {
    static MINE: Mine = const { Mine(Cell::new(None)) };
}

#[cold]
fn new_ring() -> &'static Ring {
    let worker = may::coroutine::is_coroutine();
    let reused = if worker { None } else { FREE.lock().pop() };
    reused.unwrap_or_else(|| {
        let capacity = if worker { WORKER_EVENTS } else { OTHER_EVENTS };
        let ring: &'static Ring = Box::leak(Box::new(Ring::new(capacity)));
        RINGS.lock().push(ring);
        ring
    })
}

#[inline]
fn record(head: u64, thread: u64, arg: u64) {
    let stamp = stamp();
    let _ = MINE.try_with(|mine| {
        let ring = match mine.0.get() {
            Some(r) => r,
            None => {
                let r = new_ring();
                mine.0.set(Some(r));
                r
            }
        };
        ring.push(stamp, head, thread, arg);
    });
}

/// Whether the recorder is on.
#[inline]
pub(crate) fn on() -> bool {
    barrier::flags() & barrier::TRACE != 0
}

/// Turns the recorder on (from now on every switch is recorded) or off.
pub(crate) fn set(on: bool) {
    calibration();
    if on {
        barrier::raise(barrier::TRACE);
    } else {
        barrier::clear(barrier::TRACE);
    }
}

/// `thread` (spawned by `parent`) exists.
pub(crate) fn spawned(thread: u64, parent: Option<u64>) {
    record(SPAWN << 56, thread, parent.unwrap_or(0));
}

/// `thread` runs on worker `worker`.
#[inline]
pub(crate) fn runs(thread: u64, worker: usize) {
    record(RUN << 56, thread, worker as u64);
}

/// `thread` begins a wait on `on`.
#[inline]
pub(crate) fn waits(thread: u64, on: WaitOn) {
    let (kind, a, b) = match on {
        WaitOn::Sleep => (1, 0, 0),
        WaitOn::Join { thread } => (2, thread, 0),
        WaitOn::Object { object, id } => (3, id, u64::from(object.index())),
        WaitOn::Fd { fd, interest } => (4, fd as u32 as u64, interest as u64),
    };
    record(WAIT << 56 | kind << 48 | (b & 0xffff) << 32, thread, a);
}

/// `thread` yields its worker.
#[inline]
pub(crate) fn yields(thread: u64) {
    record(YIELD << 56, thread, 0);
}

/// `thread` is woken by `by`.
#[inline]
pub(crate) fn woken(thread: u64, by: Option<u64>) {
    record(WAKE << 56, thread, by.unwrap_or(0));
}

/// A kill of `thread` is asked for by `by`.
pub(crate) fn kill(thread: u64, by: Option<u64>) {
    record(KILL << 56, thread, by.unwrap_or(0));
}

/// `thread` ended: [`RETURNED`], [`PANICKED`] or [`KILLED`].
pub(crate) fn ended(thread: u64, how: u64) {
    record(EXIT << 56, thread, how);
}

/// `thread` kept worker `worker` past the blocked-worker threshold.
pub(crate) fn blocked(thread: u64, worker: usize) {
    record(BLOCKED << 56, thread, worker as u64);
}

/// The monitor found `thread` in deadlock `seq`.
pub(crate) fn deadlock(thread: u64, seq: u64) {
    record(DEADLOCK << 56, thread, seq);
}

/// Whether stamps are the time-stamp counter (else precise clock nanoseconds).
fn uses_tsc() -> bool {
    static TSC: OnceLock<bool> = OnceLock::new();
    *TSC.get_or_init(|| {
        cfg!(target_arch = "x86_64")
            && std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|info| {
                info.lines()
                    .find(|l| l.starts_with("flags"))
                    .is_some_and(|l| {
                        let flags: Vec<&str> = l.split_whitespace().collect();
                        flags.contains(&"constant_tsc") && flags.contains(&"nonstop_tsc")
                    })
            })
    })
}

#[inline]
fn stamp() -> u64 {
    #[cfg(target_arch = "x86_64")]
    if TSC_ON.load(Ordering::Relaxed) != 0 {
        // SAFETY: rdtsc has no preconditions; the CPU has it on every x86_64.
        return unsafe { core::arch::x86_64::_rdtsc() };
    }
    clock::precise_ns()
}

/// 1 when stamps are the time-stamp counter: read on the recording path, set once.
static TSC_ON: AtomicUsize = AtomicUsize::new(0);

/// A pair of readings of the counter and the precise clock, taken when the recorder first
/// came on: stamps become nanoseconds by the counter's rate between it and a later pair.
fn calibration() -> (u64, u64) {
    static FIRST: OnceLock<(u64, u64)> = OnceLock::new();
    *FIRST.get_or_init(|| {
        if uses_tsc() {
            TSC_ON.store(1, Ordering::Relaxed);
        }
        (stamp(), clock::precise_ns())
    })
}

/// Turns stamps into precise clock nanoseconds.
struct Clock {
    tsc: bool,
    stamp0: u64,
    ns0: u64,
    ns_per_tick: f64,
}

impl Clock {
    fn now() -> Clock {
        let (stamp0, ns0) = calibration();
        if TSC_ON.load(Ordering::Relaxed) == 0 {
            return Clock {
                tsc: false,
                stamp0,
                ns0,
                ns_per_tick: 1.0,
            };
        }
        // The later pair at least 10 ms after the first, for a rate to a few parts per million.
        let mut ns1 = clock::precise_ns();
        if ns1 < ns0 + 10_000_000 {
            std::thread::sleep(std::time::Duration::from_nanos(ns0 + 10_000_000 - ns1));
            ns1 = clock::precise_ns();
        }
        let stamp1 = stamp();
        let ticks = stamp1.saturating_sub(stamp0).max(1);
        Clock {
            tsc: true,
            stamp0,
            ns0,
            ns_per_tick: (ns1 - ns0) as f64 / ticks as f64,
        }
    }

    fn ns(&self, stamp: u64) -> u64 {
        if !self.tsc {
            return stamp;
        }
        let ticks = stamp as f64 - self.stamp0 as f64;
        (self.ns0 as f64 + ticks * self.ns_per_tick).max(0.0) as u64
    }
}

/// The events of the last `span_ns` nanoseconds, oldest first, with the number dropped.
pub(crate) fn last(span_ns: u64) -> (Vec<TraceEvent>, u64) {
    let clock = Clock::now();
    let rings: Vec<&'static Ring> = RINGS.lock().clone();
    let mut all: Vec<(u64, usize, TraceEvent)> = Vec::new();
    let mut dropped = 0;
    let now = clock::precise_ns();
    let since = now.saturating_sub(span_ns);
    for ring in rings {
        let (raws, lost) = ring.read();
        dropped += lost;
        for raw in raws {
            let at_ns = clock.ns(raw.stamp);
            if at_ns < since {
                continue;
            }
            if let Some(kind) = decode(raw) {
                let order = all.len();
                all.push((
                    at_ns,
                    order,
                    TraceEvent {
                        at_ns,
                        thread: raw.thread,
                        kind,
                    },
                ));
            }
        }
    }
    all.sort_by_key(|(at, order, _)| (*at, *order));
    (all.into_iter().map(|(_, _, e)| e).collect(), dropped)
}

fn decode(raw: Raw) -> Option<TraceKind> {
    let id = |v: u64| (v != 0).then_some(v);
    Some(match raw.head >> 56 {
        SPAWN => TraceKind::Spawn {
            parent: id(raw.arg),
        },
        RUN => TraceKind::Run {
            worker: raw.arg as usize,
        },
        WAIT => {
            let b = (raw.head >> 32) & 0xffff;
            let on = match (raw.head >> 48) & 0xff {
                1 => WaitOn::Sleep,
                2 => WaitOn::Join { thread: raw.arg },
                3 => WaitOn::Object {
                    object: ObjectKind::from_index(b as u16),
                    id: raw.arg,
                },
                4 => WaitOn::Fd {
                    fd: raw.arg as u32 as i32,
                    interest: Interest::from_bits(b as u8),
                },
                _ => return None,
            };
            TraceKind::Wait { on }
        }
        YIELD => TraceKind::Yield,
        WAKE => TraceKind::Wake { by: id(raw.arg) },
        KILL => TraceKind::Kill { by: id(raw.arg) },
        EXIT => TraceKind::Exit {
            how: match raw.arg {
                RETURNED => "returned",
                PANICKED => "panicked",
                _ => "killed",
            }
            .to_owned(),
        },
        BLOCKED => TraceKind::Blocked {
            worker: raw.arg as usize,
        },
        DEADLOCK => TraceKind::Deadlock { seq: raw.arg },
        _ => return None,
    })
}
