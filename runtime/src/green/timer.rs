//! Timers that run code later: [`call_after`]. A pending timer is an entry on the alarm
//! thread (see `core::alarm`), not a sleeping green thread; when it fires, its function runs in
//! a fresh green thread, where it may wait.

use std::panic::Location;
use std::time::Duration;

use crate::core::registry::TimerKind;
use crate::core::{alarm, context, report};
use crate::green::thread::Builder;

/// A pending [`call_after`]; cancel it before it fires.
#[derive(Debug)]
pub struct Timer {
    id: u64,
}

impl Timer {
    /// The timer's id (as the registry shows it).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Cancels the timer. Returns `true` if it was pending (the function will not run),
    /// `false` if it already fired or was cancelled.
    pub fn cancel(&self) -> bool {
        alarm::cancel(self.id)
    }

    /// Whether the timer has neither fired nor been cancelled.
    pub fn is_pending(&self) -> bool {
        alarm::is_pending(self.id)
    }
}

/// Runs `f` in a new green thread after `delay` (eventlet's `call_after`), unless the returned
/// [`Timer`] is cancelled first. The green thread's parent is the caller.
///
/// ```
/// use std::sync::mpsc;
/// use std::time::Duration;
///
/// let (tx, rx) = mpsc::channel();
/// let tx2 = tx.clone();
/// let _fires = greenhub::call_after(Duration::from_millis(5), move || tx.send("fired").unwrap());
/// let cancelled = greenhub::call_after(Duration::from_millis(5), move || tx2.send("no").unwrap());
/// assert!(cancelled.cancel());
/// assert_eq!(rx.recv().unwrap(), "fired");
/// assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
/// ```
#[track_caller]
pub fn call_after<F>(delay: Duration, f: F) -> Timer
where
    F: FnOnce() + Send + 'static,
{
    let site = Location::caller();
    let owner = context::current_id();
    let job = Box::new(move || {
        let spawned = Builder::new().name("call_after").spawn_from(site, owner, f);
        if let Err(e) = spawned {
            report::error(&format!(
                "greenhub: the call_after timer set at {site} could not run its function: {e}"
            ));
        }
    });
    let id = alarm::schedule(delay, TimerKind::CallAfter, owner, site, job);
    Timer { id }
}
