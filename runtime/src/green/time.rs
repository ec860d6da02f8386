//! Sleeping, yielding and deadline scopes (the rules are in the crate docs).

use std::panic::Location;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use greenhub_snapshot::WaitOn;

use crate::core::registry::{TimerKind, registry};
use crate::core::timeout::TimedOut;
use crate::core::wait::{Waiter, check_kill};
use crate::core::{budget, context, monitor, timing, trace};

/// The deadline in force for the current green thread (or OS thread): the earliest of the
/// [`with_timeout`] scopes it runs in, or `None` outside any scope.
pub fn deadline() -> Option<Instant> {
    context::with(|c| c.deadline.get())
}

/// Runs `f` under a deadline `timeout` from now and returns what `f` returned; see [the
/// rules](crate#deadline-scopes).
///
/// Every greenhub wait inside `f` reports the deadline itself (as its own timed-out error), so
/// `with_timeout` adds no error of its own and never throws away a value a wait produced: an
/// item taken from a queue, a permit, a committed write reach the caller even when they landed
/// at the deadline. Use `?` on the waits inside, whatever their error types: they all convert
/// from [`TimedOut`].
///
/// ```
/// use std::time::Duration;
/// use greenhub::{sleep, with_timeout, Queue, TimedOut};
///
/// // The inner scope cannot outlive the outer one.
/// let r = with_timeout(Duration::from_millis(10), || {
///     with_timeout(Duration::from_secs(60), || sleep(Duration::from_secs(60)))
/// });
/// assert_eq!(r, Err(TimedOut));
///
/// // A value that arrived is the closure's, deadline or not.
/// let q = Queue::unbounded();
/// q.put(7).unwrap();
/// assert_eq!(with_timeout(Duration::ZERO, || q.try_get()), Ok(7));
/// ```
#[track_caller]
pub fn with_timeout<T>(timeout: Duration, f: impl FnOnce() -> T) -> T {
    let site = Location::caller();
    let mine = Instant::now().checked_add(timeout);
    let previous = context::with(|c| {
        let previous = c.deadline.get();
        let effective = match (previous, mine) {
            (Some(p), Some(m)) => Some(p.min(m)),
            (p, m) => p.or(m),
        };
        c.deadline.set(effective);
        previous
    });
    let _timer =
        mine.map(|at| Registered::new(TimerKind::Deadline, at, context::current_id(), site));

    let _restore = context::RestoreDeadline(previous);
    f()
}

/// A timer shown in the registry while it is pending.
pub(crate) struct Registered(u64);

impl Registered {
    pub(crate) fn new(
        kind: TimerKind,
        at: Instant,
        owner: Option<u64>,
        site: &'static Location<'static>,
    ) -> Registered {
        Registered(registry().add_timer(at, kind, owner, site))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        registry().remove_timer(self.0);
    }
}

/// Suspends the current green thread for `duration`, letting the others run.
///
/// Returns `Err(TimedOut)` if a [`with_timeout`] scope's deadline comes first (the sleep then
/// ends at that deadline). `sleep(Duration::ZERO)` is a [`yield_now`] that also reports an
/// expired scope. On a plain OS thread it sleeps that thread.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let t = Instant::now();
/// greenhub::sleep(Duration::from_millis(10)).unwrap();
/// assert!(t.elapsed() >= Duration::from_millis(10));
/// ```
#[track_caller]
pub fn sleep(duration: Duration) -> Result<(), TimedOut> {
    let expired = || deadline().is_some_and(|d| Instant::now() >= d);
    if duration.is_zero() {
        yield_now();
        return if expired() { Err(TimedOut) } else { Ok(()) };
    }
    let site = Location::caller();
    let Some(until) = Instant::now().checked_add(duration) else {
        // Longer than the clock can express: wait for the scope's deadline, or forever.
        return Waiter::until(WaitOn::Sleep, None).wait();
    };
    let scope = deadline();
    let _timer = Registered::new(TimerKind::Sleep, until, context::current_id(), site);
    match Waiter::until(WaitOn::Sleep, Some(until)).wait() {
        // Nothing wakes a sleep's token: `Ok` cannot happen, but would mean "done early".
        Ok(()) => Ok(()),
        Err(TimedOut) if scope.is_some_and(|s| s <= until) => Err(TimedOut),
        Err(TimedOut) => Ok(()),
    }
}

/// Gives the worker to the other runnable green threads and comes back after them: the
/// cooperative yield (eventlet's `sleep(0)`). A killed thread unwinds here.
///
/// On a plain OS thread it is [`std::thread::yield_now`].
pub fn yield_now() {
    if !may::coroutine::is_coroutine() {
        std::thread::yield_now();
        return;
    }
    context::with(|ctx| match ctx.record() {
        Some(record) => {
            check_kill(record);
            record.count_switch();
            if timing::on() {
                timing::yields(record);
            }
            if trace::on() {
                trace::yields(record.id);
            }
            monitor::mark_idle();
            let deferred = budget::switch().is_some_and(|drain| {
                drain
                    .defer(budget::Deferred::Yield(may::coroutine::current()))
                    .is_ok()
            });
            context::leave_span(ctx);
            if deferred {
                // The drain's finisher unparks it, after what waited outside this worker.
                may::coroutine::park();
            } else {
                may::coroutine::yield_now();
            }
            context::return_to_span(ctx);
            monitor::mark_running(record);
        }
        None => may::coroutine::yield_now(),
    });
}

/// Whether the current green thread has been asked to die. Long computations that never wait
/// can poll it (a kill otherwise takes effect at the next wait).
pub fn kill_requested() -> bool {
    context::with(|c| {
        c.record()
            .is_some_and(|r| r.kill_requested.load(Ordering::Acquire))
    })
}
