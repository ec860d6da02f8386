//! The runtime's two time bases, both counted in nanoseconds from one process epoch.
//!
//! Deadlines need precision, so they use [`Instant`]. Bookkeeping on every switch ("waiting
//! since", "created at") only has to be good enough for a human reading the inspector, and it
//! runs on the hottest path, so it uses `CLOCK_MONOTONIC_COARSE`: a few nanoseconds instead of
//! ~25, at the price of the kernel tick's resolution (1 to 4 ms). Both clocks are the same
//! timeline (`CLOCK_MONOTONIC`), so their readings can be compared.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

struct Epoch {
    instant: Instant,
    monotonic_ns: u64,
}

static EPOCH: OnceLock<Epoch> = OnceLock::new();

fn raw_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clock ids exist on every Linux kernel
    // greenhub supports, and clock_gettime cannot fail for them.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn epoch() -> &'static Epoch {
    EPOCH.get_or_init(|| Epoch {
        instant: Instant::now(),
        monotonic_ns: raw_ns(libc::CLOCK_MONOTONIC),
    })
}

/// Starts the epoch; called once when the runtime starts so that "uptime" means something.
pub(crate) fn init() {
    epoch();
}

/// Coarse nanoseconds since the epoch (resolution of the kernel tick, cost of a few ns).
#[inline]
pub(crate) fn coarse_ns() -> u64 {
    raw_ns(libc::CLOCK_MONOTONIC_COARSE).saturating_sub(epoch().monotonic_ns)
}

/// Precise nanoseconds since the epoch.
pub(crate) fn precise_ns() -> u64 {
    instant_ns(Instant::now())
}

/// Converts an [`Instant`] to nanoseconds since the epoch (0 for instants before it).
pub(crate) fn instant_ns(at: Instant) -> u64 {
    at.saturating_duration_since(epoch().instant).as_nanos() as u64
}

/// Time since the runtime's epoch.
pub(crate) fn uptime() -> Duration {
    epoch().instant.elapsed()
}
