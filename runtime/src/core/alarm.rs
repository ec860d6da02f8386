//! The alarm thread: every deadline in the process, on one OS thread (`greenhub-alarm`).
//!
//! It serves four kinds of entries from one heap ordered by time:
//!
//! - **Timed waits.** A timed green wait parks *untimed* and sets an alarm here; at the
//!   deadline this thread pokes the waiter through the same path as any other wake, and the
//!   waiter decides by its token whether it was woken or timed out. `may`'s own timed park is
//!   not used: it is resumed by `may`'s timer thread, which runs the coroutine on that thread,
//!   and under load a sleeper was seen never to come back from it. The alarm holds the wait as
//!   an [`Alarmed`] trait object, so this module knows nothing of tokens.
//! - **Descriptor waits.** A green thread waiting for a socket is parked in `may`'s poller,
//!   which no token reaches: each registered descriptor has one [`IoAlarm`], reused by all its
//!   timed waits, that wakes the waiter out of the poller at its deadline. A wait takes the
//!   heap's lock only when its deadline comes before the alarm's pending entry.
//! - **Timers** ([`schedule`]): a job that runs here at its time unless [`cancel`]led first;
//!   `call_after` and `spawn_after` are built on them. A pending timer is an entry, not a
//!   sleeping green thread: a million pending timers cost a million small entries and no
//!   stacks. Timers show in the registry while pending.
//! - **Jobs** ([`soon`]): anything that must happen off the workers as soon as possible, such
//!   as scheduling a coroutine on a global queue (`budget.rs`).
//!
//! Alarms of waits are not removed when the wait ends early; they are skipped when they come
//! up (a descriptor's alarm is queued again for the deadline of the wait in progress, if it is
//! later), and swept out when they pile up, so a stream of waits answered long before their
//! timeouts keeps memory bounded. Cancelled timers are swept the same way.
//!
//! The thread sleeps on a timer descriptor that whoever queues an earlier entry re-arms, so it
//! wakes once per deadline, at its time (see [`Clock`]).
//!
//! Everything that runs here must be short and must not block: it delays every other deadline.
//! This module uses only the registry (for timers) and `report` (for its own errors).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use parking_lot::{Condvar, Mutex};

use crate::core::clock;
use crate::core::quiescence;
use crate::core::registry::{IdMap, TimerKind, registry};
use crate::core::report;
use crate::core::report::payload_message;

/// A wait that an alarm ends: told to look at its deadline again when the alarm fires.
pub(crate) trait Alarmed: Send + Sync {
    /// Whether the wait still waits; an alarm of a finished wait is skipped and swept.
    fn live(&self) -> bool;
    /// Makes the waiter look at its deadline (it then times out, unless it was woken).
    fn fire(&self);
}

/// The deadline alarm of one registered descriptor, made on its first timed wait and reused by
/// every later one: a wait publishes its deadline in it, and takes the heap's lock only when
/// no entry of this alarm comes up at or before that deadline. A keep-alive connection whose
/// every read waits until "now + idle timeout" so costs one heap entry per timeout, not one per
/// read.
///
/// When an entry comes up, the alarm thread looks at the deadline of the wait in progress: past,
/// it wakes the waiting green thread out of `may`'s poller (which no token reaches), and the
/// waiter sees its deadline has passed; later, it queues the alarm again for then; no timed wait
/// in progress, it drops the entry. A wake that reaches a wait begun since is spurious, and the
/// I/O loop retries and waits again.
///
/// The rule that keeps every deadline covered: a wait stores its deadline and then reads when
/// the alarm's entry comes up; the alarm thread marks the entry taken and then reads the
/// deadline (both sequentially consistent), so either the wait sees no entry and queues one, or
/// the alarm thread sees the new deadline.
pub(crate) struct IoAlarm {
    waker: may::io::WaitIoWaker,
    /// The deadline of the timed wait in progress (clock ns, at least 1); 0 while there is none.
    deadline_ns: AtomicU64,
    /// When this alarm's current heap entry comes up (clock ns); [`NOT_QUEUED`] without one.
    /// Changed only under the heap's lock.
    queued_ns: AtomicU64,
}

const NOT_QUEUED: u64 = u64::MAX;

impl IoAlarm {
    /// The alarm of the descriptor `waker` wakes the waiter of.
    pub(crate) fn new(waker: may::io::WaitIoWaker) -> IoAlarm {
        IoAlarm {
            waker,
            deadline_ns: AtomicU64::new(0),
            queued_ns: AtomicU64::new(NOT_QUEUED),
        }
    }

    /// A wait bounded by `at` begins.
    #[inline]
    pub(crate) fn begin(self: &Arc<Self>, at: Instant) {
        let d = clock::instant_ns(at).max(1);
        self.deadline_ns.store(d, AtomicOrdering::SeqCst);
        if self.queued_ns.load(AtomicOrdering::SeqCst) > d {
            self.queue(at, d);
        }
    }

    /// The wait ends (however it ends, unwinding included).
    #[inline]
    pub(crate) fn end(&self) {
        self.deadline_ns.store(0, AtomicOrdering::Release);
    }

    #[cold]
    fn queue(self: &Arc<Self>, at: Instant, d: u64) {
        let h = alarms().heap.lock();
        if self.queued_ns.load(AtomicOrdering::Relaxed) > d {
            self.queued_ns.store(d, AtomicOrdering::SeqCst);
            push(h, at, Target::Io(self.clone(), d));
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

enum Target {
    Wait(Arc<dyn Alarmed>),
    /// A descriptor's alarm, and when this entry of it comes up (clock ns): an entry that is
    /// not the alarm's current one is stale, and skipped.
    Io(Arc<IoAlarm>, u64),
    /// A timer, by id: its job is in [`Heap::timers`] while it is pending.
    Timer(u64),
}

struct Alarm {
    at: Instant,
    target: Target,
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

struct Heap {
    alarms: BinaryHeap<Alarm>,
    sweep_at: usize,
    /// The jobs of pending timers, by timer id.
    timers: IdMap<Job>,
    soon: Vec<Job>,
    /// Set while the alarm thread runs jobs it has taken out (fired timers, `soon` jobs).
    busy: bool,
    /// When the timer descriptor expires next, `None` if it is disarmed ([`Clock`]).
    armed: Option<Instant>,
}

struct Alarms {
    heap: Mutex<Heap>,
    /// What the alarm thread sleeps on (see [`Clock`]).
    clock: Clock,
}

/// How the alarm thread sleeps until its next entry, and how it is woken earlier.
///
/// With a timer descriptor (the rule): the thread blocks reading it, and whoever queues an
/// entry earlier than the one it is armed for re-arms it, under the heap's lock; the thread
/// wakes once, at the earliest time, instead of once to learn of the entry and again at its
/// time. Re-arming takes a system call and wakes nobody. [`Heap::armed`] is what it is
/// armed for, kept under the lock by both sides: the thread arms it for the earliest entry
/// before it lets the lock go, so an entry queued later is either seen by the thread or
/// arms the descriptor itself.
///
/// Without one (the process had no descriptor left when the thread started), a condition
/// variable: each earlier entry notifies the thread.
enum Clock {
    Timer(TimerFd),
    Condvar(Condvar),
}

/// Set in the child of a `fork()`: the timer descriptor is shared with the parent, whose
/// alarm thread it times, and the child has no alarm thread; the child never arms it.
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    FORKED.store(true, AtomicOrdering::Relaxed);
}

impl Clock {
    fn new() -> Clock {
        match TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC) {
            Ok(fd) => {
                // SAFETY: registers a handler that only stores to an atomic.
                unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
                Clock::Timer(fd)
            }
            Err(e) => {
                report::error(&format!(
                    "greenhub: no timer descriptor for the alarm thread ({e}); it is woken \
                     through a condition variable instead"
                ));
                Clock::Condvar(Condvar::new())
            }
        }
    }

    /// Makes the thread look at the heap by `at` (under the heap's lock): re-arms the timer
    /// if `at` comes before what it is armed for; notifies the condition variable if `at` is
    /// the heap's earliest entry (`earliest`), after the lock is let go by the caller.
    /// Returns whether the caller must notify.
    fn bring_forward(&self, h: &mut Heap, at: Instant, earliest: bool) -> bool {
        match self {
            Clock::Timer(fd) => {
                if h.armed.is_none_or(|armed| at < armed) && !FORKED.load(AtomicOrdering::Relaxed) {
                    arm(fd, at);
                    h.armed = Some(at);
                }
                false
            }
            Clock::Condvar(_) => earliest,
        }
    }

    fn notify(&self) {
        if let Clock::Condvar(c) = self {
            c.notify_one();
        }
    }

    /// The thread's sleep until `until` (forever with `None`), or until woken.
    fn sleep(&self, h: &mut parking_lot::MutexGuard<'_, Heap>, until: Option<Instant>) {
        match self {
            Clock::Timer(fd) => {
                if h.armed != until {
                    match until {
                        Some(at) => arm(fd, at),
                        None => {
                            let _ = fd.unset();
                        }
                    }
                    h.armed = until;
                }
                parking_lot::MutexGuard::unlocked(h, || {
                    // An expiry, or an error (none is expected of a timer descriptor's
                    // read): either way the thread looks at the heap again.
                    let _ = fd.wait();
                });
                // Expired, so disarmed (a setter that came since armed it for an entry
                // already due, which the thread takes now): the next sleep arms it again.
                h.armed = None;
            }
            Clock::Condvar(c) => match until {
                Some(at) => {
                    c.wait_until(h, at);
                }
                None => c.wait(h),
            },
        }
    }
}

/// Arms `fd` to expire at `at` (at once if `at` has passed: a zero expiry would disarm it).
fn arm(fd: &TimerFd, at: Instant) {
    let left = at
        .saturating_duration_since(Instant::now())
        .max(Duration::from_nanos(1));
    if let Err(e) = fd.set(
        Expiration::OneShot(TimeSpec::from_duration(left)),
        TimerSetTimeFlags::empty(),
    ) {
        report::error(&format!(
            "greenhub: cannot arm the alarm thread's timer: {e}"
        ));
    }
}

static ALARMS: OnceLock<Alarms> = OnceLock::new();

fn alarms() -> &'static Alarms {
    ALARMS.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("greenhub-alarm".into())
            .spawn(|| {
                // Its timers are counted apart: a pending one means the process may act.
                let _own = quiescence::own_thread();
                run()
            });
        if let Err(e) = spawned {
            report::error(&format!(
                "greenhub: cannot start the alarm thread ({e}); timed green waits will not \
                 time out and timers will not fire"
            ));
        }
        Alarms {
            heap: Mutex::new(Heap {
                alarms: BinaryHeap::new(),
                sweep_at: MIN_SWEEP,
                timers: IdMap::default(),
                soon: Vec::new(),
                busy: false,
                armed: None,
            }),
            clock: Clock::new(),
        }
    })
}

/// Fires `wait` at `at` if it still waits then.
pub(crate) fn set(at: Instant, wait: Arc<dyn Alarmed>) {
    push(alarms().heap.lock(), at, Target::Wait(wait));
}

fn push(mut h: parking_lot::MutexGuard<'_, Heap>, at: Instant, target: Target) {
    if h.alarms.len() >= h.sweep_at {
        let Heap { alarms, timers, .. } = &mut *h;
        alarms.retain(|alarm| match &alarm.target {
            Target::Wait(w) => w.live(),
            // The current entry of an alarm whose descriptor is still registered.
            Target::Io(a, at_ns) => {
                Arc::strong_count(a) > 1 && a.queued_ns.load(AtomicOrdering::Relaxed) == *at_ns
            }
            Target::Timer(id) => timers.contains_key(id),
        });
        h.sweep_at = (h.alarms.len() * 2).max(MIN_SWEEP);
    }
    let earliest = h.alarms.peek().is_none_or(|first| at < first.at);
    h.alarms.push(Alarm { at, target });
    let clock = &alarms().clock;
    let notify = clock.bring_forward(&mut h, at, earliest);
    drop(h);
    if notify {
        clock.notify();
    }
}

/// Runs `job` on the alarm thread after `delay`, unless [`cancel`]led first; returns the
/// timer's id. The timer shows in the registry (as `kind`, owned by `owner`, set at `site`)
/// while it is pending. The job must be short: it usually spawns a green thread.
pub(crate) fn schedule(
    delay: Duration,
    kind: TimerKind,
    owner: Option<u64>,
    site: &'static Location<'static>,
    job: Job,
) -> u64 {
    // A delay past what the clock can express is a century: it never comes in practice.
    let at = Instant::now()
        .checked_add(delay)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600));
    let id = registry().add_timer(at, kind, owner, site);
    let mut h = alarms().heap.lock();
    h.timers.insert(id, job);
    push(h, at, Target::Timer(id));
    id
}

/// Cancels a pending timer. Returns `false` if it already fired or was cancelled.
pub(crate) fn cancel(id: u64) -> bool {
    let Some(a) = ALARMS.get() else { return false };
    let job = a.heap.lock().timers.remove(&id);
    let cancelled = job.is_some();
    if cancelled {
        registry().remove_timer(id);
    }
    // The job (and what it captured) is dropped here, outside the lock.
    drop(job);
    cancelled
}

/// Whether a timer is still pending.
pub(crate) fn is_pending(id: u64) -> bool {
    ALARMS
        .get()
        .is_some_and(|a| a.heap.lock().timers.contains_key(&id))
}

/// Whether no timer is pending and no job waits to run: the alarm thread will only end
/// waits at their deadlines.
pub(crate) fn idle() -> bool {
    ALARMS.get().is_none_or(|a| {
        let h = a.heap.lock();
        h.timers.is_empty() && h.soon.is_empty() && !h.busy
    })
}

/// Runs `job` on the alarm thread as soon as it is free. Jobs must be short and must not block.
pub(crate) fn soon(job: Job) {
    let a = alarms();
    let mut h = a.heap.lock();
    h.soon.push(job);
    // A later job finds the thread already woken by the first one.
    let notify = h.soon.len() == 1 && a.clock.bring_forward(&mut h, Instant::now(), true);
    drop(h);
    if notify {
        a.clock.notify();
    }
}

fn run() {
    let a = alarms();
    let mut due: Vec<Arc<dyn Alarmed>> = Vec::new();
    let mut due_io: Vec<Arc<IoAlarm>> = Vec::new();
    let mut fired: Vec<(u64, Job)> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        {
            let mut h = a.heap.lock();
            // The jobs taken last time have run.
            h.busy = false;
            loop {
                let now = Instant::now();
                while h.alarms.peek().is_some_and(|first| first.at <= now) {
                    let Some(alarm) = h.alarms.pop() else { break };
                    match alarm.target {
                        Target::Wait(w) => due.push(w),
                        Target::Io(a, at_ns) => {
                            if io_entry_due(&mut h.alarms, &a, at_ns, now) {
                                due_io.push(a);
                            }
                        }
                        Target::Timer(id) => {
                            if let Some(job) = h.timers.remove(&id) {
                                fired.push((id, job));
                            }
                        }
                    }
                }
                std::mem::swap(&mut jobs, &mut h.soon);
                h.busy = !fired.is_empty() || !jobs.is_empty();
                if !due.is_empty() || !due_io.is_empty() || h.busy {
                    break;
                }
                let next = h.alarms.peek().map(|first| first.at);
                a.clock.sleep(&mut h, next);
            }
        }
        // Outside the lock: unparking schedules coroutines, and the last handle to a finished
        // one may be dropped here.
        for wait in due.drain(..) {
            wait.fire();
        }
        for alarm in due_io.drain(..) {
            if alarm.deadline_ns.load(AtomicOrdering::Acquire) != 0 {
                alarm.waker.wakeup();
            }
        }
        for (id, job) in fired.drain(..) {
            // Listed until its job has run: a `call_after` is never in neither the timers nor
            // the threads (what `run_until_idle` counts).
            run_job(job);
            registry().remove_timer(id);
        }
        for job in jobs.drain(..) {
            run_job(job);
        }
    }
}

/// An entry of a descriptor's alarm has come up (under the heap's lock): whether the timed wait
/// in progress is due, to be woken outside the lock. A wait with a later deadline has the alarm
/// queued again for then; a stale entry, or one with no timed wait in progress, is dropped.
fn io_entry_due(
    alarms: &mut BinaryHeap<Alarm>,
    a: &Arc<IoAlarm>,
    at_ns: u64,
    now: Instant,
) -> bool {
    if a.queued_ns.load(AtomicOrdering::Relaxed) != at_ns {
        return false;
    }
    a.queued_ns.store(NOT_QUEUED, AtomicOrdering::SeqCst);
    let d = a.deadline_ns.load(AtomicOrdering::SeqCst);
    if d == 0 {
        return false;
    }
    if d <= clock::instant_ns(now) {
        return true;
    }
    a.queued_ns.store(d, AtomicOrdering::SeqCst);
    alarms.push(Alarm {
        at: clock::instant_at(d),
        target: Target::Io(a.clone(), d),
    });
    false
}

/// A job that panics is a greenhub bug, but it must not stop every later deadline.
fn run_job(job: Job) {
    if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
        report::error(&format!(
            "greenhub: a job on the alarm thread panicked: {}",
            payload_message(&*payload)
        ));
    }
}
