//! The FIFO of waiters every synchronization object keeps, and the hand-off protocol on it.
//!
//! An object never wakes a waiter to let it race for what was freed: it *hands* the item or
//! permit to the first waiter in arrival order ([`Token::wake`] succeeds only while that waiter
//! still waits) and moves on to the next one if the first has given up. That is what makes the
//! objects fair (no barging, no starvation) and what makes a timeout or a kill lose nothing.
//!
//! Waiters that gave up are not searched for and removed; they are skipped when reached, and
//! swept out when the list grows, so that a stream of timed-out waits on an idle object cannot
//! grow it without bound.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::core::token::Token;

/// A hand-off slot of one waiter: what the object gives it (or what it offers the object).
pub(crate) type Slot<T> = Arc<Mutex<Option<T>>>;

/// A new, empty slot.
pub(crate) fn slot<T>() -> Slot<T> {
    Arc::new(Mutex::new(None))
}

pub(crate) struct WaitList<S> {
    entries: VecDeque<(Arc<Token>, S)>,
    sweep_at: usize,
}

const MIN_SWEEP: usize = 16;

impl<S> Default for WaitList<S> {
    fn default() -> Self {
        WaitList {
            entries: VecDeque::new(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl<S> WaitList<S> {
    /// Queues a waiter at the back.
    pub(crate) fn push(&mut self, token: Arc<Token>, slot: S) {
        if self.entries.len() >= self.sweep_at {
            self.entries.retain(|(t, _)| t.is_waiting());
            self.sweep_at = (self.entries.len() * 2).max(MIN_SWEEP);
        }
        self.entries.push_back((token, slot));
    }

    /// Waiters that still wait.
    pub(crate) fn live(&self) -> usize {
        self.entries.iter().filter(|(t, _)| t.is_waiting()).count()
    }

    /// Wakes the first waiter that still waits (handing it a permit) and returns its slot, or
    /// `None` if nobody waits.
    pub(crate) fn wake_first(&mut self) -> Option<S> {
        while let Some((token, slot)) = self.entries.pop_front() {
            if token.wake() {
                return Some(slot);
            }
        }
        None
    }

    /// The slot of the first waiter that still waits, dropping those that gave up before it.
    pub(crate) fn front(&mut self) -> Option<&S> {
        while self.entries.front().is_some_and(|(t, _)| !t.is_waiting()) {
            self.entries.pop_front();
        }
        self.entries.front().map(|(_, s)| s)
    }

    /// Takes the first waiter off the list and wakes it; false if it gave up meanwhile (then
    /// the caller looks at the new first one).
    pub(crate) fn wake_front(&mut self) -> bool {
        self.entries.pop_front().is_some_and(|(t, _)| t.wake())
    }

    /// Wakes every waiter; `fill` prepares each slot first (under whatever lock it takes).
    pub(crate) fn wake_all(&mut self, mut fill: impl FnMut(&S)) {
        for (token, slot) in self.entries.drain(..) {
            if token.is_waiting() {
                fill(&slot);
                token.wake();
            }
        }
    }
}

impl<T> WaitList<Slot<T>> {
    /// Hands `value` to the first waiter that still waits; gives it back if nobody does.
    ///
    /// The slot's lock is held from filling to waking (and taking back), so a waiter that
    /// reads its slot after its wait ended, whether woken or gone, sees the final state.
    pub(crate) fn hand_off(&mut self, value: T) -> Option<T> {
        let mut value = value;
        while let Some((token, slot)) = self.entries.pop_front() {
            let mut held = slot.lock();
            *held = Some(value);
            if token.wake() {
                return None;
            }
            value = held
                .take()
                .expect("only the waker empties a slot it filled");
        }
        Some(value)
    }

    /// Takes the value held by the first offerer that still waits (a putter's item) and wakes
    /// it. An offerer finds its slot empty after a successful wait exactly when it was taken.
    pub(crate) fn take_offer(&mut self) -> Option<T> {
        while let Some((token, slot)) = self.entries.pop_front() {
            let mut held = slot.lock();
            if token.wake()
                && let Some(v) = held.take()
            {
                return Some(v);
            }
        }
        None
    }
}
