//! The switch budget: how long a worker may serve only its local run queue.
//!
//! `may` gives each worker a local queue (switches between green threads of that worker) and a
//! global queue (coroutines spawned or woken from other OS threads: plain threads, the alarm
//! thread, tpool). A worker takes its global queue in, and polls its descriptors, only when its
//! local queue is empty. Green threads that keep waking each other (a ping-pong, `yield_now`
//! loops) never empty it, so a wake from an OS thread, a finished sleep, a fresh spawn or a
//! readable socket could wait behind them for ever.
//!
//! So every local switch (a yield, or a green thread waking another) is counted. When a worker
//! has gone [`STREAK_NS`] without evidence that its local queue ran dry, it *drains*: its
//! switches are deferred (the green threads stay parked, in order) and the alarm thread unparks
//! the finisher coroutine, which puts it at the back of a global queue. With nothing left to
//! run locally the worker polls its descriptors and takes its global queue in; when the
//! finisher comes up it releases the deferred threads all at once, in the order they switched.
//! Nobody overtakes anybody: the threads woken from outside run in their order, then the
//! finisher, then the deferred threads in theirs, so a single worker keeps eventlet's
//! round-robin order.
//!
//! The evidence that resets the streak is the worker's queue running dry: a new round of its
//! event loop (it runs its queue until empty before it polls and takes its global queue in),
//! or a green thread coming back from a global queue. A server whose green threads wake each
//! other between socket waits (a pool handing its connections on) sees it all the time, and
//! a pure local streak pays one drain per streak.
//!
//! The worker's state is a `thread_local!`, read and written within calls that do not wait, so
//! a green thread cannot move to another worker in between.

use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use may::coroutine::Coroutine;
use parking_lot::Mutex;

use crate::core::alarm;
use crate::core::clock;

/// How long a worker may run local switches only, in coarse-clock nanoseconds (so in practice
/// rounded up to the kernel tick, 1 to 4 ms).
pub(crate) const STREAK_NS: u64 = 1_000_000;

/// The clock is read once per this many counted switches.
const CHECK_EVERY: u32 = 64;

/// The finisher only unparks coroutines.
const FINISHER_STACK_WORDS: usize = 4096;

/// A switch held back by a drain: a yielding green thread's handle (to unpark), or a woken
/// waiter taken out of its park slot (to schedule).
pub(crate) enum Deferred {
    Yield(Coroutine),
    Woken(may::coroutine::Suspended),
}

impl Deferred {
    /// Makes the green thread runnable.
    pub(crate) fn release(self) {
        match self {
            Deferred::Yield(co) => co.unpark(),
            Deferred::Woken(s) => s.schedule(),
        }
    }
}

/// One drain of one worker: the switches deferred until the worker has looked outside.
pub(crate) struct Drain {
    open: AtomicBool,
    deferred: Mutex<Vec<Deferred>>,
}

impl Drain {
    /// Holds `co` until the drain ends. Gives it back if the drain has already ended: the
    /// caller then switches normally.
    pub(crate) fn defer(&self, co: Deferred) -> Result<(), Deferred> {
        let mut deferred = self.deferred.lock();
        if self.open.load(Ordering::Acquire) {
            deferred.push(co);
            Ok(())
        } else {
            Err(co)
        }
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Ends the drain: unparks the deferred coroutines in the order they were deferred.
    fn finish(&self) {
        let deferred = {
            let mut deferred = self.deferred.lock();
            self.open.store(false, Ordering::Release);
            std::mem::take(&mut *deferred)
        };
        for d in deferred {
            d.release();
        }
    }
}

struct Streak {
    /// Whether `drain` is set: read on every switch, cheaper than borrowing the cell.
    draining: Cell<bool>,
    switches: Cell<u32>,
    /// When the worker last showed that its local queue had run dry (0: not yet).
    since: Cell<u64>,
    /// The worker's event-loop rounds at the last check (`may::coroutine::worker_rounds`).
    rounds: Cell<u64>,
    drain: RefCell<Option<Arc<Drain>>>,
}

thread_local! {
    static STREAK: Streak = const {
        Streak {
            draining: Cell::new(false),
            switches: Cell::new(0),
            since: Cell::new(0),
            rounds: Cell::new(0),
            drain: RefCell::new(None),
        }
    };
}

/// Counts one local switch of the current worker. Returns the drain the switch must be
/// deferred to, if the worker drains. Call only on a worker thread (in a coroutine).
// Never inlined, for the reason given at `monitor::set_slot`: the thread-local's address must
// be looked up on the worker that runs the call.
#[inline(never)]
pub(crate) fn switch() -> Option<Arc<Drain>> {
    STREAK.with(|s| {
        if s.draining.get()
            && let Some(drain) = open_drain(s)
        {
            return Some(drain);
        }
        let n = s.switches.get().wrapping_add(1);
        s.switches.set(n);
        if n % CHECK_EVERY != 0 {
            return None;
        }
        check_streak(s)
    })
}

/// The worker's drain if it is still open; an ended one is forgotten, and counts as the local
/// queue having run dry.
#[cold]
fn open_drain(s: &Streak) -> Option<Arc<Drain>> {
    let mut slot = s.drain.borrow_mut();
    if let Some(drain) = slot.as_ref().filter(|d| d.is_open()) {
        return Some(drain.clone());
    }
    *slot = None;
    s.draining.set(false);
    s.since.set(clock::coarse_ns());
    None
}

#[cold]
fn check_streak(s: &Streak) -> Option<Arc<Drain>> {
    let now = clock::coarse_ns();
    let since = s.since.get();
    // A new round of the worker's event loop means its queue ran dry and it looked outside
    // since the last check: whatever waited there has been taken in.
    let rounds = may::coroutine::worker_rounds();
    if since == 0 || rounds != s.rounds.get() {
        s.rounds.set(rounds);
        s.since.set(now);
        return None;
    }
    if now.saturating_sub(since) < STREAK_NS {
        return None;
    }
    s.since.set(now);
    let drain = Arc::new(Drain {
        open: AtomicBool::new(true),
        deferred: Mutex::new(Vec::new()),
    });
    *s.drain.borrow_mut() = Some(drain.clone());
    s.draining.set(true);
    let finisher = drain.clone();
    alarm::soon(Box::new(move || finish_later(finisher)));
    Some(drain)
}

/// The finisher: one coroutine, parked between drains, that the alarm thread unparks. Unparked
/// from there it goes to the back of a global queue, behind what waited outside the workers.
struct Finisher {
    co: Coroutine,
    drains: Arc<Mutex<Vec<Arc<Drain>>>>,
}

/// On the alarm thread: hands `drain` to the finisher and schedules it.
fn finish_later(drain: Arc<Drain>) {
    static FINISHER: OnceLock<Option<Finisher>> = OnceLock::new();
    let finisher = FINISHER.get_or_init(spawn_finisher);
    match finisher {
        Some(f) => {
            f.drains.lock().push(drain);
            f.co.unpark();
        }
        // No stack for the finisher: release the deferred threads from here. They go to global
        // queues too, but one by one, so one may run again before the others arrive.
        None => drain.finish(),
    }
}

fn spawn_finisher() -> Option<Finisher> {
    let drains: Arc<Mutex<Vec<Arc<Drain>>>> = Arc::default();
    let mine = drains.clone();
    let body = move || loop {
        let ready = std::mem::take(&mut *mine.lock());
        for drain in ready {
            drain.finish();
        }
        // An unpark that came while it ran makes this return at once: nothing is missed.
        may::coroutine::park();
    };
    let builder = may::coroutine::Builder::new()
        .name("greenhub-drain".into())
        .stack_size(FINISHER_STACK_WORDS);
    // SAFETY: the finisher uses no thread-local and little stack (it unparks coroutines).
    let spawned = catch_unwind(AssertUnwindSafe(|| unsafe { builder.spawn(body) }));
    match spawned {
        Ok(Ok(handle)) => Some(Finisher {
            co: handle.coroutine().clone(),
            drains,
        }),
        _ => None,
    }
}

/// The current green thread has just been resumed from a global queue: this worker's local
/// queue was empty when it took the thread in.
#[inline(never)]
pub(crate) fn came_back() {
    STREAK.with(|s| s.since.set(clock::coarse_ns()));
}
