//! When polling pays: the record that decides whether a pool thread polls for its next call,
//! and whether a caller polls for its result, before parking.
//!
//! Polling saves a futex wake-up (a pool thread) or a park and a hub wake-up (a caller) when
//! what is awaited comes within the window; when it does not, the poll is CPU burnt for
//! nothing. So a poll runs only while recent polls paid: each that finds nothing within the
//! window, or that loses its CPU meanwhile (the cores are busy: polling would take a core from
//! the threads that answer), makes the following chances skip, twice as many after each miss
//! up to [`MAX_SKIP`]; one that finds what it waited for resets the record. Calls back to back
//! keep their polls; calls spaced wider than the window pay one missed poll in
//! `MAX_SKIP + 1`.
//!
//! This module uses nothing else of the crate.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long one poll lasts at most.
pub(crate) const WINDOW: Duration = Duration::from_micros(30);

/// The most chances skipped after a run of misses.
pub(crate) const MAX_SKIP: u32 = 63;

/// A gap this long between two looks of a poll means it lost its CPU meanwhile.
const PREEMPTED: Duration = Duration::from_micros(10);

/// The record of one kind of poll. Updated without locks: two pollers racing on it can lose an
/// update, which only shifts one decision.
#[derive(Default)]
pub(crate) struct Gate {
    /// Chances still to skip.
    skip: AtomicU32,
    /// Misses in a row, capped: the next miss skips `2^misses - 1` chances.
    misses: AtomicU32,
}

/// The outcome of one poll, for [`Gate::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// What the poll waited for came within the window.
    Found,
    /// It did not, or the poller lost its CPU meanwhile.
    Missed,
    /// The poll stopped for a reason that says nothing of the wait (the caller's deadline).
    Stopped,
}

impl Gate {
    /// Whether to poll at this chance; a skipped chance counts down the skips.
    pub(crate) fn admit(&self) -> bool {
        let skip = self.skip.load(Ordering::Relaxed);
        if skip == 0 {
            return true;
        }
        self.skip.store(skip - 1, Ordering::Relaxed);
        false
    }

    /// Whether the next chance would poll (no skips owed), without using up a chance.
    pub(crate) fn is_open(&self) -> bool {
        self.skip.load(Ordering::Relaxed) == 0
    }

    /// Records how a poll admitted by [`Gate::admit`] ended.
    pub(crate) fn record(&self, outcome: Outcome) {
        match outcome {
            Outcome::Found => {
                self.misses.store(0, Ordering::Relaxed);
            }
            Outcome::Missed => {
                let misses = (self.misses.load(Ordering::Relaxed) + 1).min(MAX_SKIP.ilog2() + 1);
                self.misses.store(misses, Ordering::Relaxed);
                self.skip.store((1 << misses) - 1, Ordering::Relaxed);
            }
            Outcome::Stopped => {}
        }
    }
}

/// A poll's clock: its window, and the gaps between its looks.
pub(crate) struct Window {
    last: Instant,
    until: Instant,
}

/// Where a poll stands at one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Look {
    /// Within the window: look again.
    Open,
    /// The window (or the caller's deadline) has passed.
    Closed,
    /// The time since the last look was long: the poller lost its CPU (to another process,
    /// or to the other green threads a yield let run). Polling on would take a CPU from
    /// someone with work to do.
    Preempted,
}

impl Window {
    /// A window from now, ending at `deadline` if that comes first.
    pub(crate) fn open(deadline: Option<Instant>) -> Window {
        let last = Instant::now();
        let until = last + WINDOW;
        Window {
            last,
            until: deadline.map_or(until, |d| d.min(until)),
        }
    }

    /// One look at the clock.
    pub(crate) fn look(&mut self) -> Look {
        let now = Instant::now();
        let gap = now.saturating_duration_since(self.last);
        self.last = now;
        if gap > PREEMPTED {
            Look::Preempted
        } else if now >= self.until {
            Look::Closed
        } else {
            Look::Open
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misses_skip_more_chances_each_time_up_to_the_cap_and_a_find_resets() {
        let gate = Gate::default();
        let skipped_after_miss = |gate: &Gate| {
            assert!(
                gate.admit(),
                "a poll is admitted once the skips are used up"
            );
            gate.record(Outcome::Missed);
            let mut skipped = 0;
            while !gate.admit() {
                skipped += 1;
            }
            skipped
        };
        let runs: Vec<u32> = (0..9).map(|_| skipped_after_miss(&gate)).collect();
        assert_eq!(runs, [1, 3, 7, 15, 31, 63, 63, 63, 63]);
        // The last loop consumed the skips and admitted a poll: a find resets the record.
        gate.record(Outcome::Found);
        assert!(gate.admit());
        assert_eq!(skipped_after_miss(&gate), 1);
    }

    #[test]
    fn a_stopped_poll_changes_nothing() {
        let gate = Gate::default();
        gate.record(Outcome::Missed);
        assert!(!gate.admit());
        assert!(gate.admit());
        gate.record(Outcome::Stopped);
        assert!(gate.admit());
        assert!(gate.admit());
    }
}
