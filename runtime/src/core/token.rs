//! The wake token: the side of a wait that other threads hold. [`Token::wake`] hands
//! something to the waiter only while it still waits, so an object learns whether its hand-off
//! was taken; a waiter that gives up marks its token abandoned first.
//!
//! Its small methods are `#[inline]`: every wait and wake calls them, from other modules (and
//! crates) than this one.
//!
//! A token is made once per green thread and reused across its waits while nobody else holds
//! it (the waiter's `fresh_token`): most waits allocate nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use crate::core::alarm::Alarmed;
use crate::core::barrier;
use crate::core::budget::{self, Deferred};
use crate::core::doze;
use crate::core::registry::{RecordRef, WaitTicket};
use crate::core::slots;
use crate::core::timing;
use crate::core::trace;

pub(crate) const WAITING: u8 = 0;
const WOKEN: u8 = 1;
const ABANDONED: u8 = 2;

/// How a token's waiter parks: a green thread in the token's own park slot (no timer, no
/// cancel registration: greenhub bounds and kills its waits itself), an OS thread with
/// `std::thread::park`.
pub(crate) enum Parker {
    Green(may::coroutine::ParkSlot),
    Os(std::thread::Thread),
}

/// The wake-up side of a [`Waiter`](crate::ext::Waiter): objects keep tokens in their waiter lists.
///
/// Cheap to clone (an `Arc`), `Send` and `Sync`; waking from a plain OS thread is fine.
pub struct Token {
    pub(crate) state: AtomicU8,
    /// Set when the unpark came from outside the worker's local queue (an OS thread, the
    /// alarm thread, a relay): the worker that resumes the waiter had emptied its local queue.
    pub(crate) via_global: AtomicBool,
    pub(crate) parker: Parker,
    /// The waiting green thread's record, kept here because the token is made once per thread
    /// and reused: a wait then needs no second lookup of the coroutine-local context.
    pub(crate) record: Option<RecordRef>,
}

/// A token is a `std::task::Waker`: an async future's wake-up wakes the green thread (or OS
/// thread) waiting on it.
impl std::task::Wake for Token {
    fn wake(self: Arc<Self>) {
        Token::wake(&self);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        Token::wake(self);
    }
}

impl Token {
    /// Wakes the waiter. Returns `false` if it had already given up (deadline passed, killed)
    /// or was already woken: whatever was being handed to it must go elsewhere.
    #[inline]
    pub fn wake(&self) -> bool {
        // Noted before the hand-off, while the waiter still waits: after it, the waiter could
        // already be in its next wait, which the note would be taken for.
        let flags = barrier::flags();
        if flags & (barrier::TIMING | barrier::TRACE) != 0
            && let Some(record) = &self.record
            && self.is_waiting()
        {
            if flags & barrier::TIMING != 0 {
                timing::woken(record);
            }
            if flags & barrier::TRACE != 0 {
                let by = slots::this_thread()
                    .map(|s| s.current())
                    .filter(|id| *id != 0);
                trace::woken(record.id, by);
            }
        }
        // SeqCst: the waiter stores itself in the park slot and then reads the state
        // (`ParkSlot::park_unless`); this writes the state and then takes it from the slot.
        if self
            .state
            .compare_exchange(WAITING, WOKEN, Ordering::SeqCst, Ordering::Acquire)
            .is_ok()
        {
            match &self.parker {
                Parker::Green(slot) => {
                    self.unpark_green(slot);
                    doze::queued(flags);
                }
                Parker::Os(t) => t.unpark(),
            }
            true
        } else {
            false
        }
    }

    #[inline]
    fn unpark_green(&self, slot: &may::coroutine::ParkSlot) {
        // Only the wake that moved the state from waiting gets here. When the waiter is not
        // in its slot yet, it reads the state there and does not stay parked.
        if !may::coroutine::is_coroutine() {
            self.via_global.store(true, Ordering::Relaxed);
            if let Some(parked) = slot.take_parked() {
                parked.schedule();
            }
        } else if let Some(parked) = slot.take_parked() {
            match budget::switch() {
                Some(drain) => {
                    if let Err(d) = drain.defer(Deferred::Woken(parked)) {
                        d.release();
                    }
                }
                None => parked.schedule(),
            }
        }
    }

    /// Whether a context with `record` may reuse this token for a wait: the same green
    /// thread's record, or no record and the same way of parking (a coroutine outside
    /// greenhub's green threads, or this very OS thread).
    pub(crate) fn belongs_to(&self, record: Option<&RecordRef>) -> bool {
        match (&self.record, record) {
            (Some(mine), Some(theirs)) => RecordRef::same(mine, theirs),
            (None, None) => match &self.parker {
                Parker::Green(_) => may::coroutine::is_coroutine(),
                Parker::Os(t) => {
                    !may::coroutine::is_coroutine() && t.id() == std::thread::current().id()
                }
            },
            _ => false,
        }
    }

    /// Whether the waiter may stop parking: read by the park slot after the waiter is in
    /// it, in the order that pairs with [`Token::wake`].
    #[inline]
    pub(crate) fn parked_done(&self) -> bool {
        self.state.load(Ordering::SeqCst) != WAITING
    }

    /// Wakes the waiter from its own thread, before it parks: the same hand-off as
    /// [`Token::wake`] (false if something else woke it first), without an unpark, which
    /// would make a later park of the running thread return at once.
    #[inline]
    pub(crate) fn claim(&self) -> bool {
        self.state
            .compare_exchange(WAITING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Unparks the waiter without waking it (its token stays waiting), so that it looks at
    /// its deadline and its kill flag again: what an alarm does when a timed wait expires, and
    /// a kill.
    pub(crate) fn poke(&self) {
        if self.is_waiting() {
            match &self.parker {
                Parker::Green(slot) => {
                    self.via_global.store(true, Ordering::Relaxed);
                    slot.unpark();
                }
                Parker::Os(t) => t.unpark(),
            }
        }
    }

    /// Whether the waiter still waits (neither woken nor gone).
    #[inline]
    pub fn is_waiting(&self) -> bool {
        self.state.load(Ordering::Acquire) == WAITING
    }

    /// Whether a [`Token::wake`] reached the waiter.
    #[inline]
    pub fn is_woken(&self) -> bool {
        self.state.load(Ordering::Acquire) == WOKEN
    }

    #[inline]
    pub(crate) fn abandon(&self) -> bool {
        // The common case, a woken token, needs no read-modify-write.
        if self.state.load(Ordering::Acquire) != WAITING {
            return false;
        }
        self.state
            .compare_exchange(WAITING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state.load(Ordering::Relaxed) {
            WAITING => "waiting",
            WOKEN => "woken",
            _ => "abandoned",
        };
        f.debug_struct("Token").field("state", &state).finish()
    }
}

impl WaitTicket for Token {
    fn is_waiting(&self) -> bool {
        Token::is_waiting(self)
    }

    fn poke(&self) {
        Token::poke(self);
    }
}

impl Alarmed for Token {
    fn live(&self) -> bool {
        self.is_waiting()
    }

    fn fire(&self) {
        self.poke();
    }
}
