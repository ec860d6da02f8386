//! Warnings and errors of the runtime itself, and the text of panic payloads: through `log` when a logger is installed,
//! otherwise on standard error, so that they are never lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::core::clock;

/// Lets a repeated report through at most once per interval: a condition that lasts (no
/// descriptors left, say) is said once a minute, not once per try.
pub(crate) struct Throttle {
    /// When a report last went through, in coarse nanoseconds plus one (0: never).
    last: AtomicU64,
}

impl Throttle {
    pub(crate) const fn new() -> Throttle {
        Throttle {
            last: AtomicU64::new(0),
        }
    }

    /// True when nothing went through in the last `every`; then the next `every` is taken.
    pub(crate) fn allow(&self, every: Duration) -> bool {
        let now = clock::coarse_ns() + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < every.as_nanos() as u64 {
            return false;
        }
        self.last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

/// Logs a warning through `log`; when no logger is installed, prints it on standard error so
/// that it is never lost. Greenhub's crates report their own troubles with it.
///
/// ```
/// greenhub::ext::warn("my-pool: a connection was held for 30 s");
/// ```
pub fn warn(message: &str) {
    if log::max_level() >= log::LevelFilter::Warn {
        log::warn!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Logs an error; when no logger is installed, prints it so that it is never lost.
pub(crate) fn error(message: &str) {
    if log::max_level() >= log::LevelFilter::Error {
        log::error!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// The text of a panic payload (`&str` and `String` payloads; others are named as such).
pub(crate) fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".to_string()
    }
}
