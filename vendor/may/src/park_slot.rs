//! A lean park for a runtime that keeps its own wait state: [`ParkSlot`].
//!
//! `Coroutine::park`/`unpark` serve every use: timeouts, cancellation and parks from plain
//! threads, paid on every park (a timer handle, a registration with the coroutine's cancel
//! data, a second reference-counted slot). A runtime that already bounds its waits and
//! unparks cancelled waiters itself needs only the hand-off: one flag and the parked
//! coroutine.
//!
//! The rule that makes it race-free: an unpark sets the flag, then takes the coroutine; a park
//! stores the coroutine, then reads the flag. Both steps are sequentially consistent, so at
//! least one side sees the other, and whichever takes the coroutine out of the slot runs it.
//!
//! A waker on another thread can run the coroutine while the worker it left is still in
//! `subscribe`, reading the flag. The coroutine does not wait for that: the park it yields is
//! a copy (the slot's address and the condition, by value), so `subscribe` holds no reference
//! into the coroutine's stack, and it reads only the slot (and what the condition points to)
//! once the coroutine is published. Two things wait instead, both rare: the next
//! park on the same slot, so that two `subscribe`s never overlap, and dropping the slot. A
//! coroutine that waited for `subscribe` on every return would stall for as long as that
//! worker's OS thread stays preempted, which on busy cores is milliseconds.

use std::fmt;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::coroutine_impl::{co_cancel_data, run_coroutine, CoroutineImpl, EventSubscriber};
use crate::scheduler::get_scheduler;
use crate::sync::AtomicOption;
use crate::yield_now::{yield_now, yield_with_subscriber};

/// Parks one coroutine at a time until [`ParkSlot::unpark`]; an unpark that comes first makes
/// the next park return at once (as with `std::thread::park`).
///
/// Unlike `may::coroutine::park`, it has no timeout, and cancelling a coroutine parked here
/// does not wake it: whoever cancels it unparks the slot too. The cancel then takes effect
/// when the coroutine resumes (it unwinds from [`ParkSlot::park`]), as with any other park.
///
/// ```
/// use may::coroutine::ParkSlot;
/// use std::sync::Arc;
///
/// let slot = Arc::new(ParkSlot::new());
/// let s = slot.clone();
/// let h = unsafe {
///     may::coroutine::spawn(move || {
///         s.park();
///         42
///     })
/// };
/// slot.unpark();
/// assert_eq!(h.join().unwrap(), 42);
/// ```
pub struct ParkSlot {
    /// Set by an unpark, cleared by the park that consumes it.
    ready: AtomicBool,
    /// The parked coroutine, taken out by whoever runs it next.
    co: AtomicOption<CoroutineImpl>,
    /// Set while `subscribe` still reads the slot (and what the condition reads) after
    /// publishing the coroutine, which a waker on another thread may run meanwhile: the next
    /// park on the slot and the slot's drop wait until it is clear.
    subscribing: AtomicBool,
}

impl Default for ParkSlot {
    fn default() -> Self {
        ParkSlot::new()
    }
}

impl ParkSlot {
    /// An empty slot with no unpark pending.
    pub const fn new() -> ParkSlot {
        ParkSlot {
            ready: AtomicBool::new(false),
            co: AtomicOption::none(),
            subscribing: AtomicBool::new(false),
        }
    }

    /// Parks the current coroutine until the slot is unparked (at once if an unpark is
    /// pending, which it consumes). Spurious returns are possible: callers check their own
    /// condition and park again.
    ///
    /// Only one coroutine may park on a slot at a time.
    ///
    /// # Panics
    ///
    /// When called outside a coroutine. A cancelled coroutine unwinds from here.
    pub fn park(&self) {
        // SAFETY: the condition reads nothing.
        unsafe { self.park_unless(|| false) };
    }

    /// Like [`ParkSlot::park`], but returns at once if `done()` holds once the coroutine is in
    /// the slot: the waiter's side of [`ParkSlot::take_parked`]. `done` reads with
    /// `Ordering::SeqCst`.
    ///
    /// # Safety
    ///
    /// `done` may run after this coroutine has resumed elsewhere and left the caller's frame
    /// (see the module doc); it is `Copy` and at most two words, and travels by value. It must read
    /// only memory that lives as long as the slot: a closure over a reference to the slot's
    /// owner, never over the caller's locals (an `Arc` on the stack included).
    pub unsafe fn park_unless(&self, done: impl Fn() -> bool + Copy) {
        if self.ready.load(Ordering::Acquire) {
            self.ready.store(false, Ordering::Relaxed);
            return;
        }
        // The previous park's `subscribe` may still be reading the slot on a preempted
        // worker: a second one must not overlap it. Yielding (rather than spinning) lets this
        // worker run other coroutines meanwhile; a cancel may unwind here, before this park
        // has published anything.
        while self.subscribing.load(Ordering::Acquire) {
            yield_now();
        }
        yield_with_subscriber(|| EventSubscriber::park(DetachedPark::new(self, done)));
        // The unpark that resumed us is consumed; a later one stays pending.
        self.ready.store(false, Ordering::Release);
    }

    /// Makes the parked coroutine runnable (on this worker's queue, or a global queue from a
    /// plain thread), or the next park return at once.
    pub fn unpark(&self) {
        if let Some(parked) = self.unpark_later() {
            parked.schedule();
        }
    }

    /// Like [`ParkSlot::unpark`], but hands the parked coroutine to the caller, to be made
    /// runnable later with [`Suspended::schedule`]. `None` if nothing is parked yet (the
    /// coroutine then resumes by itself when it parks) or an unpark was already pending.
    pub fn unpark_later(&self) -> Option<Suspended> {
        if self.ready.swap(true, Ordering::SeqCst) {
            return None;
        }
        self.take_parked()
    }

    /// Takes the parked coroutine out, to be made runnable with [`Suspended::schedule`],
    /// without marking an unpark pending: for a waker that has just made the condition of
    /// the coroutine's [`ParkSlot::park_unless`] true with a `SeqCst` read-modify-write, which
    /// only one waker can do. `None` if the coroutine is not in the slot (yet): a coroutine
    /// that parks after that write finds its condition true and does not stay parked.
    pub fn take_parked(&self) -> Option<Suspended> {
        self.co.take().map(|co| Suspended(Some(co)))
    }
}

/// The room a park's condition may take: two words (a closure over a reference or two).
type ConditionBytes = MaybeUninit<[usize; 2]>;

/// One park on a slot, with the condition that ends it, copied by value into the subscriber
/// the coroutine yields: the worker's `subscribe` holds no reference into the parking frame,
/// which may be gone as soon as the coroutine is in the slot.
pub(crate) struct DetachedPark {
    slot: *const ParkSlot,
    condition: ConditionBytes,
    /// Reads the condition's bytes back as its closure type and calls it.
    check: unsafe fn(&ConditionBytes) -> bool,
}

/// Calls the condition stored in `bytes` as an `F`.
///
/// # Safety
///
/// `bytes` holds an `F` written by `DetachedPark::new`.
unsafe fn check<F: Fn() -> bool + Copy>(bytes: &ConditionBytes) -> bool {
    // SAFETY: `new` wrote an `F` at the start of the buffer, which is large and aligned
    // enough (checked at compile time there); `F: Copy`, so reading it leaves no duplicate
    // owner of anything.
    let done: F = unsafe { std::ptr::read(bytes.as_ptr().cast::<F>()) };
    done()
}

impl DetachedPark {
    fn new<F: Fn() -> bool + Copy>(slot: &ParkSlot, done: F) -> DetachedPark {
        const {
            assert!(
                std::mem::size_of::<F>() <= std::mem::size_of::<ConditionBytes>()
                    && std::mem::align_of::<F>() <= std::mem::align_of::<ConditionBytes>(),
                "a park's condition takes at most two words"
            )
        };
        let mut condition = ConditionBytes::uninit();
        // SAFETY: the buffer is large and aligned enough for an `F` (checked above).
        unsafe { std::ptr::write(condition.as_mut_ptr().cast::<F>(), done) };
        DetachedPark {
            slot,
            condition,
            check: check::<F>,
        }
    }

    pub(crate) fn subscribe(self, co: CoroutineImpl) {
        // Only the coroutine's cancel data is read from the coroutine, before it is
        // published: a waker may run it, and it may return from the park and end, as soon as
        // it is in the slot. A cancel that comes after this check unparks the slot (the rule
        // of `ParkSlot`), which the flag read below sees.
        if co_cancel_data(&co).is_canceled() {
            run_coroutine(co);
            return;
        }
        // SAFETY: the slot outlives every `subscribe` on it: dropping it waits while
        // `subscribing` is set, which is set before the coroutine is published (and so
        // before its owner can let go of the slot) and cleared after the last access.
        let slot = unsafe { &*self.slot };
        slot.subscribing.store(true, Ordering::Relaxed);
        // The store is a read-modify-write (`AtomicCell` swaps a value that needs dropping):
        // `subscribing` is set before any waker can take the coroutine.
        slot.co.store(co);
        // Pairs with the wakers: they set the flag (or the condition) and then take; here
        // the coroutine is stored and then both are read.
        // SAFETY: `condition` holds the `F` that `check` was made for; what it reads lives
        // as long as the slot (the contract of `park_unless`).
        let resume = slot.ready.load(Ordering::SeqCst) || unsafe { (self.check)(&self.condition) };
        let co = if resume { slot.co.take() } else { None };
        // The last access to the slot: from here it may be parked on again, or dropped.
        slot.subscribing.store(false, Ordering::Release);
        if let Some(co) = co {
            run_coroutine(co);
        }
    }
}

impl Drop for ParkSlot {
    fn drop(&mut self) {
        // A `subscribe` on a worker that was preempted may still read the slot although its
        // coroutine has resumed elsewhere and let go of it: the memory outlives that read.
        let mut spins = 0u32;
        while self.subscribing.load(Ordering::Acquire) {
            if spins < 64 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl fmt::Debug for ParkSlot {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_struct("ParkSlot")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .finish()
    }
}

/// A coroutine taken out of a [`ParkSlot`] by [`ParkSlot::unpark_later`] or
/// [`ParkSlot::take_parked`], not yet runnable.
///
/// Dropping it schedules it, so that no coroutine is ever lost.
pub struct Suspended(Option<CoroutineImpl>);

impl Suspended {
    /// Makes the coroutine runnable: on this worker's local queue, or a global queue when
    /// called from a plain thread.
    pub fn schedule(self) {
        let mut this = std::mem::ManuallyDrop::new(self);
        if let Some(co) = this.0.take() {
            get_scheduler().schedule(co);
        }
    }
}

impl Drop for Suspended {
    fn drop(&mut self) {
        if let Some(co) = self.0.take() {
            get_scheduler().schedule(co);
        }
    }
}

impl fmt::Debug for Suspended {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("Suspended")
    }
}
