//! One call handed to the pool: the slot its result lands in, and the caller's side of it.
//!
//! The result is handed over under the slot's lock, so exactly one side owns it: the caller
//! takes a finished result, or marks the call abandoned (deadline, kill, dropped handle) and
//! the pool thread drops the result itself when the call ends. A result is therefore never
//! lost, never delivered twice, and never dropped on a worker unless the caller took it.

use std::panic::Location;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use greenhub::ext::{Token, WaitOn, Waiter};
use parking_lot::Mutex;

use crate::Error;
use crate::spin::{Look, Outcome, Window};

enum Slot<T> {
    /// Queued or running; the caller may be waiting with this token.
    Pending(Option<Arc<Token>>),
    Done(Result<T, Error>),
    Taken,
    Abandoned,
}

/// How a finished call wakes a caller that parked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Through greenhub's inbox, with the other wakes from OS threads that come meanwhile
    /// (one eventfd write for the lot).
    Batched,
    /// At once, through `may`'s queue for wakes from outside.
    Direct,
}

pub(crate) struct CallState<T> {
    slot: Mutex<Slot<T>>,
    /// Set once the outcome is in the slot: polled without the lock by a spinning caller.
    done: AtomicBool,
}

impl<T> CallState<T> {
    pub(crate) fn new() -> Arc<CallState<T>> {
        Arc::new(CallState {
            slot: Mutex::new(Slot::Pending(None)),
            done: AtomicBool::new(false),
        })
    }

    /// From the pool thread (or a shutdown): delivers the outcome, or drops it here if the
    /// caller has gone. Returns whether the caller was still there.
    pub(crate) fn complete(&self, outcome: Result<T, Error>, wake: Wake) -> bool {
        let mut slot = self.slot.lock();
        match std::mem::replace(&mut *slot, Slot::Taken) {
            Slot::Pending(token) => {
                *slot = Slot::Done(outcome);
                self.done.store(true, Ordering::Release);
                drop(slot);
                if let Some(token) = token {
                    match wake {
                        Wake::Batched => greenhub::ext::wake_batched(token),
                        Wake::Direct => {
                            token.wake();
                        }
                    }
                }
                true
            }
            other => {
                *slot = other;
                drop(slot);
                // Dropped on this thread, outside the lock: the caller gave up.
                drop(outcome);
                false
            }
        }
    }
}

/// What a [`Call`] needs of the pool it came from. The pool implements it; the call knows
/// nothing else of the pool, so this file does not depend on `pool.rs`.
pub(crate) trait Origin: Send + Sync {
    /// The pool's name.
    fn name(&self) -> &str;
    /// The pool's id in the registry: callers wait on it.
    fn id(&self) -> u64;
    /// Whether a caller should poll for its result briefly before parking: few calls are in
    /// flight and recent polls paid (`spin.rs`).
    fn admit_poll(&self) -> bool;
    /// Records how an admitted poll ended.
    fn record_poll(&self, outcome: Outcome);
    /// Counts a caller that gave up waiting.
    fn count_timed_out(&self);
}

/// A call running (or queued) on a pool: wait for its result with [`Call::wait`].
///
/// Dropping a `Call` before it finishes abandons it: the function still runs to completion on
/// its pool thread, and its result is dropped there.
///
/// ```
/// let pool = greenhub_tpool::Pool::builder().name("files").threads(2).build().unwrap();
/// let value = greenhub::spawn(move || {
///     let mut call = pool.submit(|| std::fs::read_to_string("/proc/self/stat").is_ok()).unwrap();
///     call.wait()
/// });
/// assert_eq!(value.wait().unwrap(), Ok(true));
/// ```
pub struct Call<T> {
    state: Arc<CallState<T>>,
    pool: Arc<dyn Origin>,
    site: &'static Location<'static>,
    /// The caller may poll for the result: a pool thread was awake (searching) when the call
    /// was queued, or pool threads' own polls pay (see `Pool::submit_from`).
    may_poll: bool,
}

impl<T> std::fmt::Debug for Call<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("pool", &self.pool.name())
            .field("site", &self.site.to_string())
            .field("done", &self.is_done())
            .finish()
    }
}

impl<T> Call<T> {
    /// `may_poll`: whether the caller may poll for the result at all (a pool thread was awake
    /// to take the call, or pool threads' polls pay); [`Origin::admit_poll`] decides the rest.
    pub(crate) fn new(
        state: Arc<CallState<T>>,
        pool: Arc<dyn Origin>,
        site: &'static Location<'static>,
        may_poll: bool,
    ) -> Call<T> {
        Call {
            state,
            pool,
            site,
            may_poll,
        }
    }

    /// Whether the result is there (the call ended).
    pub fn is_done(&self) -> bool {
        matches!(*self.state.slot.lock(), Slot::Done(_) | Slot::Taken)
    }

    /// Waits cooperatively for the result, bounded by the enclosing deadline scopes.
    ///
    /// Returns [`Error::TimedOut`] when a deadline passes first; the call goes on running and
    /// can be waited for again. After the result has been returned once, waiting again
    /// returns [`Error::AlreadyTaken`].
    pub fn wait(&mut self) -> Result<T, Error> {
        self.wait_until(None)
    }

    /// Like [`Call::wait`], giving up after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<T, Error> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<T, Error> {
        let on = WaitOn::Object {
            object: *crate::CALL_KIND,
            id: self.pool.id(),
        };
        // A call that had to wake a parked thread answers no sooner than the OS runs that
        // thread: a poll would spin through that whole wake-up.
        if self.may_poll && self.pool.admit_poll() {
            let outcome = self.poll(deadline);
            self.pool.record_poll(outcome);
        }
        loop {
            let waiter = {
                let mut slot = self.state.slot.lock();
                match &mut *slot {
                    Slot::Done(_) => {
                        let Slot::Done(outcome) = std::mem::replace(&mut *slot, Slot::Taken) else {
                            unreachable!("matched Done above")
                        };
                        return outcome;
                    }
                    Slot::Taken | Slot::Abandoned => return Err(Error::AlreadyTaken),
                    Slot::Pending(token) => {
                        let waiter = Waiter::until(on, deadline);
                        *token = Some(waiter.token().clone());
                        waiter
                    }
                }
            };
            if waiter.wait().is_err() {
                let mut slot = self.state.slot.lock();
                if let Slot::Pending(token) = &mut *slot {
                    *token = None;
                    drop(slot);
                    self.pool.count_timed_out();
                    return Err(Error::TimedOut);
                }
                // The result arrived as the deadline passed: it is ours after all.
            }
        }
    }
}

impl<T> Call<T> {
    /// Polls for the result for a few microseconds, yielding between looks: a short call then
    /// comes back without a park and a hub wake-up. A yield that comes back late means other
    /// green threads were runnable (or the OS took the CPU): the poll ends there, so a caller
    /// never keeps a busy worker cycling through its run queue.
    fn poll(&self, deadline: Option<Instant>) -> Outcome {
        let mut window = Window::open(deadline);
        loop {
            if self.state.done.load(Ordering::Acquire) {
                return Outcome::Found;
            }
            match window.look() {
                Look::Open => greenhub::yield_now(),
                Look::Preempted => return Outcome::Missed,
                Look::Closed if deadline.is_some_and(|d| Instant::now() >= d) => {
                    return Outcome::Stopped;
                }
                Look::Closed => return Outcome::Missed,
            }
        }
    }
}

impl<T> Drop for Call<T> {
    fn drop(&mut self) {
        let mut slot = self.state.slot.lock();
        if matches!(*slot, Slot::Pending(_)) {
            *slot = Slot::Abandoned;
        }
    }
}
