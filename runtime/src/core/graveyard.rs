//! Handles of finished coroutines, dropped later from another thread.
//!
//! `may` frees a coroutine's park when the last handle to the coroutine goes, and that drop
//! spins until no `subscribe` of the park is in progress. A coroutine woken through the fast
//! path runs *inside* its own park's `subscribe`; if it then finishes and drops the last handle
//! to itself (say, the one inside the token cached in its context, or a detached handle), the
//! worker spins on itself forever. So every green thread buries a clone of its own handle as
//! its last act, and the monitor thread (or, as a fallback, a later spawn) drops the buried
//! handles, never the coroutine itself.

use std::sync::atomic::{AtomicUsize, Ordering};

use may::coroutine::Coroutine;
use parking_lot::Mutex;

static GRAVE: Mutex<Vec<Coroutine>> = Mutex::new(Vec::new());
static BURIED: AtomicUsize = AtomicUsize::new(0);

/// Past this many buried handles, a spawn sweeps them itself: the monitor thread may be
/// missing (it failed to start) and memory must stay bounded anyway.
const SWEEP_AT: usize = 4096;

/// Keeps the current coroutine's handle alive until a later [`sweep`]. Called by the green
/// thread itself, as the last thing its body does.
pub(crate) fn bury_current() {
    if may::coroutine::is_coroutine() {
        let mut grave = GRAVE.lock();
        grave.push(may::coroutine::current());
        BURIED.store(grave.len(), Ordering::Relaxed);
    }
}

/// Drops the buried handles. Must not run in a coroutine that buried itself.
pub(crate) fn sweep() {
    if BURIED.load(Ordering::Relaxed) == 0 {
        return;
    }
    let dead = {
        let mut grave = GRAVE.lock();
        BURIED.store(0, Ordering::Relaxed);
        std::mem::take(&mut *grave)
    };
    // Dropped outside the lock: a drop may wait for a `subscribe` finishing on another worker.
    drop(dead);
}

/// Sweeps if the grave has grown large: called on spawn.
#[inline]
pub(crate) fn sweep_if_large() {
    if BURIED.load(Ordering::Relaxed) >= SWEEP_AT {
        sweep();
    }
}
