//! The asymmetric barrier between the switch path and the rare threads that watch it.
//!
//! Every time a green thread starts running on a worker it reads [`flags`] with one relaxed
//! load, after plain stores that say it runs (its record's phase, its worker's slot). The
//! watchers (the monitor going to sleep, a reader of parked stacks) raise a flag, call
//! [`membarrier`] and only then look at those stores. `membarrier` makes every running thread
//! of the process pass a full memory barrier before it returns, so either the watcher's look
//! sees the green thread running, or the green thread's load sees the flag: the switch path
//! pays no fence for the watchers' sake.
//!
//! It owns the flags word and the `membarrier` calls, and uses nothing else of the crate.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// The monitor is parked: the first green thread to run wakes it.
pub(crate) const MONITOR_PARKED: u32 = 1;

/// Timing is on: switches and wakes are timed (`core/timing.rs`).
pub(crate) const TIMING: u32 = 2;

/// The flight recorder is on: runs, waits and wakes are recorded (`core/trace.rs`).
pub(crate) const TRACE: u32 = 4;

/// The monitor dozes (looks less often while the workers are idle at its looks): a green
/// thread that starts running notes when in its worker's slot, and wakes the monitor if work
/// is queued that an idle worker could steal (`core/monitor.rs`).
pub(crate) const MONITOR_DOZING: u32 = 16;

/// One reader of parked stacks is at work (counted in these units above the other bits): a
/// green thread that starts running passes its record's read gate (`core/stack.rs`).
pub(crate) const STACK_READER: u32 = 32;

static FLAGS: AtomicU32 = AtomicU32::new(0);

/// The flags a green thread looks at when it starts running.
#[inline]
pub(crate) fn flags() -> u32 {
    FLAGS.load(Ordering::Relaxed)
}

/// Raises `bits` (a watcher's side; follow with [`membarrier`] before looking).
pub(crate) fn raise(bits: u32) {
    FLAGS.fetch_or(bits, Ordering::SeqCst);
}

/// Clears `bits`; returns whether any of them was set.
pub(crate) fn clear(bits: u32) -> bool {
    FLAGS.fetch_and(!bits, Ordering::SeqCst) & bits != 0
}

/// Whether any of `bits` is set, with a full fence (the watcher's own loop).
pub(crate) fn is_raised(bits: u32) -> bool {
    FLAGS.load(Ordering::SeqCst) & bits != 0
}

/// Counts a stack reader in.
pub(crate) fn enter_reader() {
    FLAGS.fetch_add(STACK_READER, Ordering::SeqCst);
}

/// Counts a stack reader out.
pub(crate) fn leave_reader() {
    FLAGS.fetch_sub(STACK_READER, Ordering::SeqCst);
}

/// Whether the process-wide barrier is available: the registration for
/// `MEMBARRIER_CMD_PRIVATE_EXPEDITED` succeeded (once per process).
pub(crate) fn available() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
        // SAFETY: membarrier's registration takes no pointers; it fails cleanly where
        // unsupported.
        unsafe { libc::syscall(libc::SYS_membarrier, REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 }
    })
}

/// Every thread of the process that is running now passes a full memory barrier before this
/// returns. False (and no barrier) when the kernel does not offer it.
pub(crate) fn membarrier() -> bool {
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    // SAFETY: as above; the command takes no pointers, and fails cleanly when unregistered.
    available() && unsafe { libc::syscall(libc::SYS_membarrier, PRIVATE_EXPEDITED, 0, 0) == 0 }
}
