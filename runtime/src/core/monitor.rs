//! The monitor: an OS thread that watches the workers.
//!
//! Each OS thread that runs greenhub green threads has a [`WorkerSlot`] (`core/slots.rs`): the
//! green thread it runs now and a generation that changes at every switch. Every tick the
//! monitor reads each slot:
//!
//! - the green thread found running is charged the tick's length (run time is *sampled*: good
//!   for finding what uses the CPU, not an exact account of short bursts);
//! - a slot whose green thread and generation have not changed since the monitor first saw them
//!   means one green thread has kept that worker without switching; past `max_blocking_time` it
//!   is reported (not raised, unlike eventlet's SIGALRM): to `log` and to a bounded history in
//!   the snapshot, and the report is closed with its final length when the worker switches.
//!
//! The worker's own CPU clock (`pthread_getcpuclockid`) and scheduler state
//! (`/proc/self/task/<tid>/stat`) keep the report honest on a busy machine. Past the limit:
//! - a worker that spent the limit on a CPU computed (a loop that never waits);
//! - a worker asleep in the kernel now is in a blocking call;
//! - a worker that is runnable with little CPU time is waiting for the OS to give it a CPU
//!   (the machine is busier than its cores): that is not its green thread's doing, so it is
//!   not reported against it (it is said once a minute instead) and is watched on.
//!
//! The report says which of the first two it is.
//!
//! Every [`deadlock::CHECK_TICKS`] ticks (longer with many threads), and before it parks, the
//! monitor looks for deadlocks among the waiting threads (`core/deadlock.rs`).
//!
//! A thread that is waiting has given its worker back, so it can never be reported. Waits done
//! directly with `may`'s own APIs are not bracketed by greenhub and look like running.
//!
//! The monitor also gives back the pages of released stacks, by age (`core/limits.rs`): every
//! [`STACK_DECAY_TICKS`] ticks, and as it parks.
//!
//! An idle process stays idle. After [`QUIET_TICKS`] ticks in which no worker switched at all,
//! the monitor stops publishing the clock (readers fall back to the
//! coarse clock itself) and parks; the next green thread to run wakes it. The wake costs the
//! switch one relaxed load of a flag that is false while anything runs: the monitor's side
//! carries the ordering, with a process-wide memory barrier (`membarrier`) between raising the
//! flag and its last look at the slots, so either that look sees a worker running or the
//! worker sees the flag. Without `membarrier` the monitor never parks. `may`'s workers poll
//! their descriptors with a long timeout ([`start`] sets it once the monitor thread runs,
//! and leaves `may`'s 10 ms when it cannot start that thread), and while the monitor is
//! awake it nudges each worker at every tick that finds coroutines queued on some worker, so
//! that an idle worker still looks for work to steal from a busy one as often as before; a
//! tick that finds every queue empty nudges nobody (a green thread that sleeps in a loop
//! keeps the monitor awake, and must not wake the idle workers too).
//!
//! A lightly loaded process is watched lightly. A look that finds no worker running and no
//! work queued to steal lets the monitor doze (`core/doze.rs`): its next look comes after
//! [`DOZE`] (at most `max_blocking_time`) instead of a tick, with the clock unpublished as
//! when parked. Meanwhile each green thread that starts running notes its start in its
//! worker's slot (a clock read), so a run the monitor first finds long is counted from that
//! start and reported on time; its CPU account covers what the monitor watched, at least a
//! tick of it. Work queued to steal wakes the monitor, whose look nudges the workers. A look
//! that finds a worker running returns to ticking. Sleepers, timers and spaced requests wake
//! the process as often as they must, and the monitor a fifth as often as a tick would.

use std::collections::VecDeque;
use std::panic::Location;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use greenhub_snapshot::{BlockedCause, ThreadStack};

use crate::core::barrier;
use crate::core::clock;
use crate::core::deadlock;
use crate::core::doze::{self, DOZE};
use crate::core::flight;
use crate::core::limits::{self, STACK_DECAY_TICKS};
use crate::core::quiescence;
use crate::core::registry::{ThreadRecord, registry};
use crate::core::report::{self, Throttle};
use crate::core::sampler;
use crate::core::slots::{self, WorkerSlot};
use crate::core::stack;
use crate::core::symbols;
use crate::core::timing;
use crate::core::trace;

/// How often the monitor samples the workers.
pub(crate) const TICK: Duration = Duration::from_millis(10);

/// Ticks without a single switch after which the monitor parks.
pub(crate) const QUIET_TICKS: u32 = 10;

/// How long `may`'s workers wait in `epoll_wait` when nothing wakes them: the monitor's
/// nudges (at each tick that finds work queued to steal) take over the periodic look for it.
pub(crate) const WORKER_POLL: Duration = Duration::from_secs(60);

/// The monitor thread, for the wake.
static MONITOR: OnceLock<std::thread::Thread> = OnceLock::new();

/// The green thread `id` starts or resumes on this OS thread.
#[inline]
pub(crate) fn mark_running(record: &ThreadRecord) {
    slots::set_running(record);
    // The record's and the slot's stores come before this load: the watchers' `membarrier`
    // orders the two sides (see core/barrier.rs); only the compiler must not reorder them.
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    let flags = barrier::flags();
    if flags != 0 {
        attend(flags, record);
    }
}

#[cold]
#[inline(never)]
fn attend(flags: u32, record: &ThreadRecord) {
    if flags & barrier::MONITOR_PARKED != 0 {
        wake_parked();
    }
    if flags & barrier::MONITOR_DOZING != 0 {
        doze::runs();
    }
    if flags >= barrier::STACK_READER {
        stack::pass_read_gate(record);
    }
    if flags & barrier::TIMING != 0 {
        timing::runs(record);
    }
    if flags & barrier::TRACE != 0 {
        trace::runs(record.id, slots::this_thread().map_or(0, |s| s.index));
    }
}

/// Wakes the monitor if it is parked, so that it looks at the process again: an OS thread
/// has just begun a wait, and with it the whole process may have fallen asleep (the deadlock
/// check's last case).
pub(crate) fn look_again() {
    if barrier::flags() & barrier::MONITOR_PARKED != 0 {
        wake_parked();
    }
}

fn wake_parked() {
    if barrier::clear(barrier::MONITOR_PARKED)
        && let Some(monitor) = MONITOR.get()
    {
        monitor.unpark();
    }
}

/// The current green thread gives up this OS thread.
#[inline]
pub(crate) fn mark_idle() {
    slots::set_idle();
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
    pub cause: Option<BlockedCause>,
    pub on_cpu: Option<Duration>,
    /// Where the green thread was when the report opened (read on the worker by a signal).
    pub stack: Option<ThreadStack>,
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
    slots::all()
        .iter()
        .map(|s| (s.index, s.tid, s.current()))
        .collect()
}

struct Watch {
    thread: u64,
    generation: u64,
    /// When the run began: the worker's note if the monitor dozed when it did, else the
    /// monitor's first look at it.
    since: Instant,
    /// The monitor's first look at the run, where the CPU account starts.
    seen: Instant,
    /// The worker's CPU time at that first look.
    on_cpu: Option<Duration>,
    report: Option<u64>,
}

/// What a watched stretch is, from the worker's CPU time and scheduler state.
#[derive(Clone, Copy, Debug)]
struct Spent {
    on_cpu: Option<Duration>,
    cause: Option<BlockedCause>,
    /// The OS, not the green thread, holds the worker: runnable with little CPU time.
    starved: bool,
}

impl Spent {
    fn of(busy: Duration, limit: Duration, from: Option<Duration>, slot: &WorkerSlot) -> Spent {
        let (Some(from), Some(now)) = (from, slot.on_cpu()) else {
            return Spent {
                on_cpu: None,
                cause: None,
                starved: false,
            };
        };
        let on_cpu = now.saturating_sub(from).min(busy);
        let asleep = slot.asleep();
        // What the stretch mostly was, from its CPU time; a worker kept off its CPU by the OS
        // still computed if it spent the whole limit on a CPU.
        let cause = if on_cpu * 2 >= busy || on_cpu >= limit {
            BlockedCause::Computing
        } else {
            BlockedCause::Blocking
        };
        Spent {
            on_cpu: Some(on_cpu),
            cause: Some(cause),
            starved: on_cpu < limit && asleep == Some(false),
        }
    }
}

static STARTED: OnceLock<()> = OnceLock::new();

/// Starts the monitor thread once.
/// Starts the monitor thread once. Called before `may`'s scheduler starts: with the monitor
/// running, `may`'s idle workers sleep in `epoll_wait` until something happens instead of
/// waking every 10 ms (the monitor nudges them while anything runs).
pub(crate) fn start(max_blocking_time: Option<Duration>, history: usize) {
    STARTED.get_or_init(|| {
        set_max_blocking_time(max_blocking_time);
        REPORTS.lock().capacity = history.max(1);
        let default_poll = may::config().get_timeout_ns();
        may::config().set_timeout_ns(WORKER_POLL.as_nanos() as u64);
        let spawned = std::thread::Builder::new()
            .name("greenhub-monitor".into())
            .spawn(|| {
                let _own = quiescence::own_thread();
                run()
            });
        if let Err(e) = spawned {
            // Nobody to nudge the workers: they keep `may`'s own periodic look.
            may::config().set_timeout_ns(default_poll);
            report::warn(&format!(
                "greenhub: cannot start the monitor thread ({e}); run times and blocked-worker reports are off"
            ));
        }
    });
}

/// Whether any slot shows a green thread running now.
fn any_running(slots: &[&'static WorkerSlot]) -> bool {
    slots.iter().any(|s| s.current() != 0)
}

/// Parks the monitor until a green thread runs (see the module's doc); returns at once if one
/// does while it lies down.
fn park_until_running() {
    clock::pause();
    barrier::raise(barrier::MONITOR_PARKED);
    let slots = slots::all();
    if !barrier::membarrier() || any_running(&slots) {
        barrier::clear(barrier::MONITOR_PARKED);
        clock::tick();
        return;
    }
    while barrier::is_raised(barrier::MONITOR_PARKED) {
        std::thread::park();
    }
    clock::tick();
}

/// Per worker: a nudge is queued to it and has not run yet. At most one is: a worker held by
/// a green thread does not collect its queue, and nudges must not pile up there.
static NUDGED: OnceLock<Box<[AtomicBool]>> = OnceLock::new();

/// Set when a nudge could not be made: the monitor stops trying.
static CANNOT_NUDGE: AtomicBool = AtomicBool::new(false);

/// Makes each of `may`'s workers look at its queues (and steal from the others), as its poll
/// timeout used to every 10 ms: an empty coroutine queued to it wakes it from `epoll_wait`.
fn nudge_workers(workers: usize) {
    // Before the runtime has started, the workers may not exist yet (and a start that fails
    // for want of descriptors leaves none): a nudge would try to start them.
    if CANNOT_NUDGE.load(Ordering::Relaxed) || crate::core::runtime::get_if_started().is_none() {
        return;
    }
    // Nothing queued to steal: a nudge would only wake idle workers to find nothing. Work
    // queued after this look waits for the next tick, as it would for the next nudge.
    if !may::has_stealable_work() {
        return;
    }
    let pending = NUDGED.get_or_init(|| (0..workers).map(|_| AtomicBool::new(false)).collect());
    for (id, flag) in pending.iter().enumerate() {
        if flag.swap(true, Ordering::AcqRel) {
            continue;
        }
        // A coroutine is made with a stack: that can fail (mappings or memory exhausted),
        // by an error or a panic in `may`. The monitor lives on either way.
        let spawned = std::panic::catch_unwind(|| {
            // SAFETY: the coroutine only clears its flag (may marks spawn unsafe for what a
            // coroutine may do with thread-locals).
            unsafe {
                may::coroutine::Builder::new()
                    .id(id)
                    .spawn(move || flag.store(false, Ordering::Release))
            }
        });
        if !matches!(spawned, Ok(Ok(_))) {
            flag.store(false, Ordering::Release);
            CANNOT_NUDGE.store(true, Ordering::Relaxed);
            report::warn(
                "greenhub: the monitor cannot queue a coroutine to nudge the workers; an idle \
                 worker now looks for work to steal only when its poll times out (a minute)",
            );
            return;
        }
    }
}

/// The blocked-worker threshold in microseconds; `u64::MAX`: no reports.
static MAX_BLOCKING_US: AtomicU64 = AtomicU64::new(u64::MAX);

/// The blocked-worker threshold now (`None`: no reports).
pub(crate) fn max_blocking_time() -> Option<Duration> {
    match MAX_BLOCKING_US.load(Ordering::Relaxed) {
        u64::MAX => None,
        us => Some(Duration::from_micros(us)),
    }
}

/// Changes the blocked-worker threshold from the next tick on (an inspector's request).
pub(crate) fn set_max_blocking_time(limit: Option<Duration>) {
    let us = limit.map_or(u64::MAX, |d| (d.as_micros() as u64).min(u64::MAX - 1));
    MAX_BLOCKING_US.store(us, Ordering::Relaxed);
}

fn run() {
    let _ = MONITOR.set(std::thread::current());
    doze::set_monitor();
    let can_park = barrier::available();
    let workers = may::config().get_workers();
    let mut watches: Vec<Option<Watch>> = Vec::new();
    let mut last = Instant::now();
    let mut generations: Vec<u64> = Vec::new();
    let mut quiet = 0;
    let mut detector = deadlock::Detector::default();
    let mut since_check = 0;
    let mut since_decay = 0;
    let mut dozing = false;
    limits::keep_released_stacks();
    loop {
        let max_blocking_time = max_blocking_time();
        if dozing {
            doze::sleep(DOZE.min(max_blocking_time.unwrap_or(DOZE)).max(TICK));
        } else {
            std::thread::sleep(TICK);
        }
        clock::tick();
        // The periods below count in ticks: a doze counts for the ticks it lasted.
        let ticks = (last.elapsed().as_nanos() / TICK.as_nanos()).clamp(1, 1_000) as u32;
        let slots = slots::all();
        let seen: Vec<u64> = slots.iter().map(|s| s.generation()).collect();
        quiet = if seen == generations && !any_running(&slots) {
            quiet + ticks
        } else {
            0
        };
        generations = seen;
        if can_park && quiet >= QUIET_TICKS {
            // Nothing switched for QUIET_TICKS ticks, so the waits are the ones of as long
            // ago: two checks in a row confirm each other. A deadlock is found before the
            // monitor lies down, and no new one forms while nothing switches.
            let first = detector.check();
            for found in first.into_iter().chain(detector.check()) {
                off_monitor(Box::new(move || found.publish()));
            }
            since_check = 0;
            quiet = 0;
            limits::shrink_released_stacks();
            since_decay = 0;
            park_until_running();
            // The parked time is nobody's run time.
            last = Instant::now();
            dozing = false;
            continue;
        }
        since_check += ticks;
        // The thread count (for the interval) is read only once the shortest one has passed.
        if since_check >= deadlock::CHECK_TICKS && since_check >= check_every() {
            since_check = 0;
            for found in detector.check() {
                off_monitor(Box::new(move || found.publish()));
            }
        }
        since_decay += ticks;
        if since_decay >= STACK_DECAY_TICKS {
            since_decay = 0;
            limits::decay_released_stacks();
        }
        nudge_workers(workers);
        let now = Instant::now();
        let tick = now - last;
        last = now;
        watches.resize_with(slots.len(), || None);
        for (slot, watch) in slots.iter().zip(watches.iter_mut()) {
            let generation = slot.generation();
            let thread = slot.current();
            let same = watch
                .as_ref()
                .is_some_and(|w| w.thread == thread && w.generation == generation);
            if !same {
                if let Some(w) = watch.take() {
                    close(&w, now);
                }
                if thread != 0 {
                    // A run that began while the monitor dozed has its start noted.
                    let since = slot
                        .started(generation)
                        .map(clock::instant_at)
                        .filter(|at| *at < now)
                        .unwrap_or(now);
                    *watch = Some(Watch {
                        thread,
                        generation,
                        since,
                        seen: now,
                        on_cpu: slot.on_cpu(),
                        report: None,
                    });
                }
            }
            if thread != 0
                && let Some(record) = registry().thread(thread)
            {
                // Sampled: the tick's length, or the part of it a run noted to begin within it
                // covers.
                let run = match watch.as_ref() {
                    Some(w) if !same && w.since < w.seen => tick.min(now - w.since),
                    _ => tick,
                };
                record
                    .run_ns
                    .fetch_add(run.as_nanos() as u64, Ordering::Relaxed);
            }
            if !same {
                continue;
            }
            let Some(w) = watch.as_mut() else { continue };
            // Counted from the run's start when the worker noted it, else from the first tick
            // that saw it: never early, at most one tick late (one doze while dozing).
            let busy = now - w.since;
            let Some(limit) = max_blocking_time else {
                continue;
            };
            let observed = now - w.seen;
            // The CPU account covers what the monitor watched: a run found already long is
            // judged on at least one tick of it, against thresholds scaled to that stretch.
            let backdated = w.since < w.seen;
            if w.report.is_none() && (busy < limit || (backdated && observed < TICK)) {
                continue;
            }
            let spent = if backdated {
                Spent::of(observed, limit.min(observed / 2), w.on_cpu, slot)
            } else {
                Spent::of(busy, limit, w.on_cpu, slot)
            };
            match w.report {
                Some(seq) => update(seq, busy, spent),
                // Held past the limit by the OS, not by its green thread: said as such, once
                // in a while, and watched on.
                None if spent.starved => preempted(slot, busy, spent.on_cpu),
                None => w.report = Some(open(slot, w.thread, busy, spent)),
            }
        }
        // Doze while no worker ran at this look and nothing waits to be stolen: runs are
        // short and sparse (a sleeper's loop, a lightly loaded server), and a look every
        // TICK would cost more than the work it watches.
        dozing = watches.iter().all(Option::is_none) && !may::has_stealable_work();
    }
}

/// Ticks between deadlock checks: [`deadlock::CHECK_TICKS`], longer with many threads (a
/// check reads every thread's state), so that checks cost the monitor about the same share of
/// a core at any size.
fn check_every() -> u32 {
    let live = registry().live_count();
    deadlock::CHECK_TICKS * (1 + live / 20_000).min(10) as u32
}

/// Says (once a minute) that the OS, not a green thread, kept a worker off its CPU.
fn preempted(slot: &WorkerSlot, busy: Duration, on_cpu: Option<Duration>) {
    static SAID: Throttle = Throttle::new();
    if SAID.allow(Duration::from_secs(60)) {
        report::warn(&format!(
            "greenhub: worker {} (tid {}) has waited for a CPU: {} ms without switching, only \
             {} ms of it on a CPU; the machine is busier than its cores (preempted by the OS, \
             not held by a green thread; its green threads are delayed as long)",
            slot.index,
            slot.tid,
            busy.as_millis(),
            on_cpu.unwrap_or_default().as_millis()
        ));
    }
}

fn open(slot: &WorkerSlot, thread: u64, busy: Duration, spent: Spent) -> u64 {
    if trace::on() {
        trace::blocked(thread, slot.index);
        off_monitor(Box::new(|| flight::incident("blocked-worker")));
    }
    let record = registry().thread(thread);
    // Where the blocking call or the loop is: the stack the worker runs on, read by the worker
    // in a signal handler, when that is the thread's (the handler checks) and the signal
    // cannot break the system call the worker may be in.
    let stack = slot
        .syscall()
        .filter(|nr| sampler::may_interrupt(*nr))
        .and_then(|_| sampler::capture_running(slot.tid, thread));
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
            cause: spent.cause,
            on_cpu: spent.on_cpu,
            stack: None,
        };
        if reports.history.len() >= reports.capacity {
            reports.history.pop_front();
        }
        reports.history.push_back(blocked.clone());
        blocked
    };
    let label = describe(&blocked);
    let why = match (spent.cause, spent.on_cpu) {
        (Some(BlockedCause::Computing), Some(cpu)) => format!(
            "it computed ({} ms on a CPU): a loop that never waits delays every green thread \
             on its worker; call greenhub::yield_now() in it, or run it through greenhub-tpool",
            cpu.as_millis()
        ),
        (Some(BlockedCause::Blocking), Some(cpu)) => format!(
            "it made a blocking call ({} ms on a CPU, the rest asleep in the kernel): a \
             blocking call in a green thread freezes every green thread on its worker; run it \
             through greenhub-tpool",
            cpu.as_millis()
        ),
        _ => "a blocking call or a long computation in a green thread freezes every green \
              thread on its worker; run it through greenhub-tpool"
            .to_string(),
    };
    let message = format!(
        "greenhub: {label} has kept worker {} (tid {}) busy for {} ms without switching: {why}",
        blocked.worker,
        blocked.tid,
        busy.as_millis()
    );
    say(Said {
        message,
        stack: stack.map(|ips| (blocked.seq, ips)),
    });
    blocked.seq
}

/// A blocked-worker message, with the return addresses of the report `seq`'s stack to
/// symbolize and add first.
struct Said {
    message: String,
    stack: Option<(u64, Vec<usize>)>,
}

/// Says a blocked-worker message through the reports thread, in order: symbolizing a stack
/// takes a while the first time (debug information is loaded), which the monitor must not
/// spend away from its ticks. Said here when that thread cannot be started.
fn say(said: Said) {
    off_monitor(Box::new(move || write(said)));
}

/// Work the monitor hands to the `greenhub-reports` thread.
type Job = Box<dyn FnOnce() + Send>;

/// Runs `job` on the `greenhub-reports` thread (or here, if that thread cannot start).
fn off_monitor(job: Job) {
    static REPORTER: OnceLock<Option<Mutex<std::sync::mpsc::Sender<Job>>>> = OnceLock::new();
    let reporter = REPORTER.get_or_init(|| {
        let (send, receive) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("greenhub-reports".into())
            .spawn(move || {
                let _own = quiescence::own_thread();
                receive.into_iter().for_each(|job| job())
            })
            .ok()
            .map(|_| Mutex::new(send))
    });
    let unsent = match reporter {
        Some(send) => send.lock().send(job).err().map(|e| e.0),
        None => Some(job),
    };
    if let Some(job) = unsent {
        job();
    }
}

/// Symbolizes a message's stack into its report, and logs the message with it.
fn write(said: Said) {
    let mut message = said.message;
    if let Some((seq, ips)) = said.stack {
        let stack = symbols::fold(&ips);
        message.push_str("; it was running:");
        for frame in &stack.frames {
            message.push_str(&format!("\n    {frame}"));
        }
        if let Some(b) = REPORTS.lock().history.iter_mut().find(|b| b.seq == seq) {
            b.stack = Some(stack);
        }
    }
    report::warn(&message);
}

fn update(seq: u64, busy: Duration, spent: Spent) {
    let mut reports = REPORTS.lock();
    if let Some(b) = reports.history.iter_mut().find(|b| b.seq == seq) {
        b.duration = busy;
        b.on_cpu = spent.on_cpu;
        b.cause = spent.cause.or(b.cause);
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
        say(Said {
            message: format!(
                "greenhub: {} released worker {} after {} ms",
                describe(&b),
                b.worker,
                b.duration.as_millis()
            ),
            stack: None,
        });
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
