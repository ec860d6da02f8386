//! The alarms: every deadline in the process, in one heap ordered by time.
//!
//! It holds four kinds of entries:
//!
//! - **Timed waits.** A timed green wait parks *untimed* and sets an alarm here; at the
//!   deadline the alarm pokes the waiter through the same path as any other wake, and the
//!   waiter decides by its token whether it was woken or timed out. `may`'s own timed park is
//!   not used: it is resumed by `may`'s timer thread, which runs the coroutine on that thread,
//!   and under load a sleeper was seen never to come back from it. The alarm holds the wait as
//!   an [`Alarmed`] trait object, so this module knows nothing of tokens.
//! - **Descriptor waits.** A green thread waiting for a socket is parked in `may`'s poller,
//!   which no token reaches: each registered descriptor has one [`IoAlarm`], reused by all its
//!   timed waits, that wakes the waiter out of the poller at its deadline. A wait takes the
//!   heap's lock only when its deadline comes before the alarm's pending entry.
//! - **Timers** ([`schedule`]): a job that runs at its time unless [`cancel`]led first;
//!   `call_after` and `spawn_after` are built on them. A pending timer is an entry, not a
//!   sleeping green thread: a million pending timers cost a million small entries and no
//!   stacks. Timers show in the registry while pending.
//! - **Jobs** ([`soon`]): anything that must happen off the workers as soon as possible, such
//!   as scheduling a coroutine on a global queue (`budget.rs`). They run on the alarm thread
//!   (`greenhub-alarm`).
//!
//! Once the runtime has started, the heap is served by `may`'s workers: its timer descriptor
//! is in their poll, and the due entries are fired by the worker that finds it ready, so a
//! sleep wakes only the worker that runs the sleeper next. Before that, the alarm thread
//! serves it (see [`Alarms`]).
//!
//! Alarms of waits are not removed when the wait ends early; they are skipped when they come
//! up (a descriptor's alarm is queued again for the deadline of the wait in progress, if it is
//! later), and swept out when they pile up, so a stream of waits answered long before their
//! timeouts keeps memory bounded. Cancelled timers are swept the same way.
//!
//! Everything that runs when an entry comes up or as a job must be short and must not block:
//! it delays every other deadline, and the green threads of the worker it runs on.
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
use std::os::fd::AsFd;

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
    /// How many takers (the alarm thread, a worker serving the timer) run jobs they have taken
    /// out (fired timers, `soon` jobs) now.
    busy: u32,
    /// When the timer descriptor expires next, `None` if it is disarmed.
    armed: Option<Instant>,
}

/// Who serves the heap, and how they sleep until its next entry and are woken earlier.
///
/// - **The workers' poll** (the rule once the runtime has started): the timer descriptor is in
///   `may`'s epoll, and the worker that finds it ready takes the due entries and fires them on
///   its own thread ([`serve_poll_timer`]). A sleep wakes one thread, the worker that runs the
///   sleeper next, at its time: no alarm thread between. The alarm thread only runs `soon`
///   jobs, woken through the condition variable. While every worker runs green threads, an
///   entry waits for the next poll, as the readiness of a descriptor does.
/// - **The alarm thread on the descriptor** (the heap was used before the runtime started):
///   the thread blocks reading it.
/// - **The alarm thread on the condition variable** (no descriptor could be made: the process
///   had none free): each earlier entry notifies it.
///
/// With a descriptor, whoever queues an entry earlier than the time it is armed for re-arms
/// it, under the heap's lock; a system call that wakes nobody. [`Heap::armed`] is that time,
/// kept under the lock by every side: whoever serves the heap arms it for the earliest entry
/// left before it lets the lock go, so an entry queued later is either seen by the server or
/// arms the descriptor itself.
struct Alarms {
    heap: Mutex<Heap>,
    timer: Option<TimerFd>,
    /// The workers' poll serves the heap: the timer descriptor is in `may`'s epoll.
    polled: bool,
    /// Wakes the alarm thread: for `soon` jobs, and for every earlier entry without a timer.
    wake: Condvar,
}

/// Set in the child of a `fork()`: the timer descriptor is shared with the parent, whose
/// alarms it times, and nothing in the child serves the heap; the child never arms it.
static FORKED: AtomicBool = AtomicBool::new(false);

extern "C" fn after_fork_in_child() {
    FORKED.store(true, AtomicOrdering::Relaxed);
}

/// The alarms' timer descriptor, or `None` (said once) if none can be made.
fn timer_descriptor() -> Option<TimerFd> {
    match TimerFd::new(ClockId::CLOCK_MONOTONIC, TimerFlags::TFD_CLOEXEC) {
        Ok(fd) => {
            // SAFETY: registers a handler that only stores to an atomic.
            unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
            Some(fd)
        }
        Err(e) => {
            report::error(&format!(
                "greenhub: no timer descriptor for the alarms ({e}); the alarm thread serves \
                 them, woken through a condition variable"
            ));
            None
        }
    }
}

impl Alarms {
    /// Makes the heap's server look at it by `at` (under the heap's lock): re-arms the timer
    /// if `at` comes before what it is armed for. Without a timer, returns whether the caller
    /// must notify the alarm thread (after letting the lock go): if `at` is the heap's
    /// earliest entry (`earliest`).
    fn bring_forward(&self, h: &mut Heap, at: Instant, earliest: bool) -> bool {
        match &self.timer {
            Some(fd) => {
                if h.armed.is_none_or(|armed| at < armed) && !FORKED.load(AtomicOrdering::Relaxed) {
                    arm(fd, Some(at));
                    h.armed = Some(at);
                }
                false
            }
            None => earliest,
        }
    }

    /// The alarm thread's sleep: until woken for `soon` jobs when the poll serves the
    /// heap; else until the heap's entry at `until` (forever with `None`) or an earlier one.
    fn sleep(&self, h: &mut parking_lot::MutexGuard<'_, Heap>, until: Option<Instant>) {
        match &self.timer {
            Some(fd) if !self.polled => {
                if h.armed != until {
                    arm(fd, until);
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
            _ => match until {
                Some(at) if !self.polled => {
                    self.wake.wait_until(h, at);
                }
                _ => self.wake.wait(h),
            },
        }
    }
}

/// Arms `fd` to expire at `at` (at once if `at` has passed: a zero expiry would disarm it),
/// or disarms it. Either clears an expiry not read yet.
fn arm(fd: &TimerFd, at: Option<Instant>) {
    let set = match at {
        Some(at) => {
            let left = at
                .saturating_duration_since(Instant::now())
                .max(Duration::from_nanos(1));
            fd.set(
                Expiration::OneShot(TimeSpec::from_duration(left)),
                TimerSetTimeFlags::empty(),
            )
        }
        None => fd.unset(),
    };
    if let Err(e) = set {
        report::error(&format!("greenhub: cannot set the alarms' timer: {e}"));
    }
}

static ALARMS: OnceLock<Alarms> = OnceLock::new();

fn alarms() -> &'static Alarms {
    ALARMS.get_or_init(|| make(false))
}

/// Makes the heap served by the workers' poll, unless it is in use already (then its alarm
/// thread keeps serving it). Called once `may`'s scheduler runs.
pub(crate) fn start_on_poll() {
    let _ = ALARMS.get_or_init(|| make(true));
}

fn make(on_poll: bool) -> Alarms {
    let timer = timer_descriptor();
    let polled = on_poll
        && timer.as_ref().is_some_and(|fd| {
            may::add_poll_timer(fd.as_fd(), serve_poll_timer)
                .map_err(|e| {
                    report::error(&format!(
                        "greenhub: the workers cannot poll the alarms' timer ({e}); the \
                         alarm thread serves it"
                    ))
                })
                .is_ok()
        });
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
            busy: 0,
            armed: None,
        }),
        timer,
        polled,
        wake: Condvar::new(),
    }
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
    let a = alarms();
    let notify = a.bring_forward(&mut h, at, earliest);
    drop(h);
    if notify {
        a.wake.notify_one();
    }
}

/// Runs `job` after `delay`, unless [`cancel`]led first; returns the timer's id. The job runs
/// where the heap is served (a worker, between its green threads, or the alarm thread). The
/// timer shows in the registry (as `kind`, owned by `owner`, set at `site`) while it is
/// pending. The job must be short: it usually spawns a green thread.
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

/// Whether no timer is pending and no job waits to run: the heap will only end waits at
/// their deadlines.
pub(crate) fn idle() -> bool {
    ALARMS.get().is_none_or(|a| {
        let h = a.heap.lock();
        h.timers.is_empty() && h.soon.is_empty() && h.busy == 0
    })
}

/// Runs `job` on the alarm thread as soon as it is free. Jobs must be short and must not block.
pub(crate) fn soon(job: Job) {
    let a = alarms();
    let mut h = a.heap.lock();
    h.soon.push(job);
    // A later job finds the thread already woken by the first one.
    let first = h.soon.len() == 1;
    let notify = first
        && match &a.timer {
            Some(_) if !a.polled => a.bring_forward(&mut h, Instant::now(), true),
            _ => true,
        };
    drop(h);
    if notify {
        a.wake.notify_one();
    }
}

/// The entries that came up, taken out of the heap to be fired outside its lock.
#[derive(Default)]
struct Due {
    waits: Vec<Arc<dyn Alarmed>>,
    io: Vec<Arc<IoAlarm>>,
    timers: Vec<(u64, Job)>,
}

impl Due {
    /// Takes the entries due at `now` (under the heap's lock).
    fn take(&mut self, h: &mut Heap, now: Instant) {
        while h.alarms.peek().is_some_and(|first| first.at <= now) {
            let Some(alarm) = h.alarms.pop() else { break };
            match alarm.target {
                Target::Wait(w) => self.waits.push(w),
                Target::Io(a, at_ns) => {
                    if io_entry_due(&mut h.alarms, &a, at_ns, now) {
                        self.io.push(a);
                    }
                }
                Target::Timer(id) => {
                    if let Some(job) = h.timers.remove(&id) {
                        self.timers.push((id, job));
                    }
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.waits.is_empty() && self.io.is_empty() && self.timers.is_empty()
    }

    /// Fires what was taken (outside the heap's lock: unparking schedules coroutines, and the
    /// last handle to a finished one may be dropped here). Returns how many.
    fn fire(&mut self) -> usize {
        let n = self.waits.len() + self.io.len() + self.timers.len();
        for wait in self.waits.drain(..) {
            wait.fire();
        }
        for alarm in self.io.drain(..) {
            if alarm.deadline_ns.load(AtomicOrdering::Acquire) != 0 {
                alarm.waker.wakeup();
            }
        }
        for (id, job) in self.timers.drain(..) {
            // Listed until its job has run: a `call_after` is never in neither the timers nor
            // the threads (what `run_until_idle` counts).
            run_job(job);
            registry().remove_timer(id);
        }
        n
    }
}

/// The hook `may`'s poll calls on the worker that finds the timer descriptor ready: fires
/// the due entries there (what they wake is queued on that worker) and arms the descriptor
/// for the next one (which clears the expiry). Returns how many entries it fired.
fn serve_poll_timer() -> usize {
    let Some(a) = ALARMS.get() else { return 0 };
    let Some(fd) = &a.timer else { return 0 };
    let mut due = Due::default();
    let jobs = {
        let mut h = a.heap.lock();
        due.take(&mut h, Instant::now());
        let next = h.alarms.peek().map(|first| first.at);
        arm(fd, next);
        h.armed = next;
        let jobs = !due.timers.is_empty();
        h.busy += u32::from(jobs);
        jobs
    };
    let fired = due.fire();
    if jobs {
        a.heap.lock().busy -= 1;
    }
    fired
}

fn run() {
    let a = alarms();
    let mut due = Due::default();
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        let took_jobs = {
            let mut h = a.heap.lock();
            loop {
                if !a.polled {
                    due.take(&mut h, Instant::now());
                }
                std::mem::swap(&mut jobs, &mut h.soon);
                if !due.is_empty() || !jobs.is_empty() {
                    break;
                }
                let next = h.alarms.peek().map(|first| first.at);
                a.sleep(&mut h, next);
            }
            let took = !due.timers.is_empty() || !jobs.is_empty();
            h.busy += u32::from(took);
            took
        };
        due.fire();
        for job in jobs.drain(..) {
            run_job(job);
        }
        if took_jobs {
            a.heap.lock().busy -= 1;
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
