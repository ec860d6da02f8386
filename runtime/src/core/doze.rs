//! The monitor's doze, as the switch and wake paths see it.
//!
//! While the workers are idle at the monitor's looks, it looks every [`DOZE`] instead of every
//! tick (`core/monitor.rs`), with [`barrier::MONITOR_DOZING`] raised and the clock
//! unpublished. Meanwhile each green thread that starts running notes its start in its
//! worker's slot ([`runs`]), so the monitor's first look at a long run knows when it began;
//! and a run, a spawn or a wake that leaves work queued which an idle worker could steal
//! wakes the monitor ([`queued`]), whose look nudges the idle workers: a burst after a lull
//! does not wait out the doze to spread.
//!
//! It owns the dozing sleep and its wake. It uses the barrier, the clock and the slots, so
//! that the wake path (`core/token.rs`) can call it without the monitor's own imports.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::core::barrier;
use crate::core::clock;
use crate::core::slots;

/// How long the monitor sleeps between two looks while it dozes (never longer than
/// `max_blocking_time`).
pub(crate) const DOZE: Duration = Duration::from_millis(50);

/// The monitor thread, for the wake.
static MONITOR: OnceLock<std::thread::Thread> = OnceLock::new();

/// The calling thread is the monitor: the one [`sleep`] puts to sleep and a wake unparks.
pub(crate) fn set_monitor() {
    let _ = MONITOR.set(std::thread::current());
}

/// The monitor sleeps `length` dozing: the clock unpublished (readers read the coarse clock
/// themselves) and [`barrier::MONITOR_DOZING`] raised, until `length` has passed or a run
/// finds work to steal.
pub(crate) fn sleep(length: Duration) {
    clock::pause();
    barrier::raise(barrier::MONITOR_DOZING);
    let until = Instant::now() + length;
    // A stale unpark (from a wake of the parked monitor) returns at once: sleep on.
    while barrier::is_raised(barrier::MONITOR_DOZING) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        std::thread::park_timeout(left);
    }
    barrier::clear(barrier::MONITOR_DOZING);
}

/// A green thread starts running on this worker while the monitor dozes.
#[cold]
pub(crate) fn runs() {
    if let Some(slot) = slots::this_thread() {
        slot.note_start(clock::precise_ns());
    }
    wake();
}

/// A green thread was just queued (spawned, woken), and the barrier's flags read `flags`: if
/// the monitor dozes, it looks whether to wake it. One test of a loaded word when it does not.
#[inline]
pub(crate) fn queued(flags: u32) {
    if flags & barrier::MONITOR_DOZING != 0 {
        wake();
    }
}

/// Wakes the dozing monitor if some worker's queue holds work an idle worker could steal.
#[cold]
fn wake() {
    if may::has_stealable_work()
        && barrier::clear(barrier::MONITOR_DOZING)
        && let Some(monitor) = MONITOR.get()
    {
        monitor.unpark();
    }
}
