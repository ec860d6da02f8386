//! The alarm thread: wakes green threads whose timed waits have expired.
//!
//! A timed green wait parks *untimed* and sets an alarm here; at the deadline this OS thread
//! (`greenhub-alarm`) unparks the waiter through the same path as any other wake, and the
//! waiter decides by its token whether it was woken or timed out. `may`'s own timed park is not
//! used: it is resumed by `may`'s timer thread, which runs the coroutine on that thread, and
//! under load a sleeper was seen never to come back from it.
//!
//! Alarms are not removed when the wait ends early; they are skipped when they come up, and
//! swept out when they pile up, so a stream of waits answered long before their timeouts keeps
//! memory bounded.
//!
//! The thread also runs short jobs handed to [`soon`]: anything that must happen off the
//! workers, such as scheduling a coroutine on a global queue (`budget.rs`).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use crate::panic;
use crate::wait::Token;

struct Alarm {
    at: Instant,
    target: Target,
}

/// What an alarm wakes: a green wait's token, or a green thread waiting for a descriptor in
/// `may`'s poller (which no token reaches).
enum Target {
    Token(Arc<Token>),
    Io(Arc<IoAlarm>),
}

impl Target {
    fn live(&self) -> bool {
        match self {
            Target::Token(token) => token.is_waiting(),
            Target::Io(io) => io.live.load(AtomicOrdering::Acquire),
        }
    }

    fn fire(self) {
        match self {
            Target::Token(token) => token.poke(),
            Target::Io(io) => {
                if io.live.load(AtomicOrdering::Acquire) {
                    io.waker.wakeup();
                }
            }
        }
    }
}

/// The deadline of one descriptor wait: wakes the waiting green thread out of the poller,
/// unless the wait has ended (then `live` is false and the alarm is skipped).
pub(crate) struct IoAlarm {
    pub waker: may::io::WaitIoWaker,
    pub live: AtomicBool,
}

// Ordered so that the max-heap's top is the earliest alarm.
impl Ord for Alarm {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at.cmp(&self.at)
    }
}
impl PartialOrd for Alarm {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Alarm {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Alarm {}

const MIN_SWEEP: usize = 1024;

type Job = Box<dyn FnOnce() + Send>;

struct Heap {
    alarms: BinaryHeap<Alarm>,
    sweep_at: usize,
    jobs: Vec<Job>,
}

struct Alarms {
    heap: Mutex<Heap>,
    wake: Condvar,
}

static ALARMS: OnceLock<Alarms> = OnceLock::new();

fn alarms() -> &'static Alarms {
    ALARMS.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("greenhub-alarm".into())
            .spawn(run);
        if let Err(e) = spawned {
            panic::error(&format!(
                "greenhub: cannot start the alarm thread ({e}); timed green waits will not time out"
            ));
        }
        Alarms {
            heap: Mutex::new(Heap {
                alarms: BinaryHeap::new(),
                sweep_at: MIN_SWEEP,
                jobs: Vec::new(),
            }),
            wake: Condvar::new(),
        }
    })
}

/// Unparks the waiter of `token` at `at` if it still waits then.
pub(crate) fn set(at: Instant, token: Arc<Token>) {
    push(at, Target::Token(token));
}

/// Wakes a descriptor wait out of the poller at `at`, if it still waits then.
pub(crate) fn set_io(at: Instant, io: Arc<IoAlarm>) {
    push(at, Target::Io(io));
}

fn push(at: Instant, target: Target) {
    let a = alarms();
    let mut h = a.heap.lock();
    if h.alarms.len() >= h.sweep_at {
        h.alarms.retain(|alarm| alarm.target.live());
        h.sweep_at = (h.alarms.len() * 2).max(MIN_SWEEP);
    }
    let earliest = h.alarms.peek().is_none_or(|first| at < first.at);
    h.alarms.push(Alarm { at, target });
    drop(h);
    if earliest {
        a.wake.notify_one();
    }
}

/// Runs `job` on the alarm thread as soon as it is free. Jobs must be short and must not block.
pub(crate) fn soon(job: Job) {
    let a = alarms();
    let mut h = a.heap.lock();
    h.jobs.push(job);
    let first = h.jobs.len() == 1;
    drop(h);
    // A later job finds the thread already notified by the first one.
    if first {
        a.wake.notify_one();
    }
}

fn run() {
    let a = alarms();
    let mut due: Vec<Target> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        {
            let mut h = a.heap.lock();
            loop {
                let now = Instant::now();
                while h.alarms.peek().is_some_and(|first| first.at <= now) {
                    if let Some(alarm) = h.alarms.pop() {
                        due.push(alarm.target);
                    }
                }
                std::mem::swap(&mut jobs, &mut h.jobs);
                if !due.is_empty() || !jobs.is_empty() {
                    break;
                }
                match h.alarms.peek().map(|first| first.at) {
                    Some(at) => {
                        a.wake.wait_until(&mut h, at);
                    }
                    None => a.wake.wait(&mut h),
                }
            }
        }
        // Outside the lock: unparking schedules coroutines, and the last handle to a finished
        // one may be dropped here.
        for target in due.drain(..) {
            target.fire();
        }
        for job in jobs.drain(..) {
            job();
        }
    }
}
