//! The runtime's two time bases, both counted in nanoseconds from one process epoch.
//!
//! Deadlines need precision, so they use [`Instant`]. Bookkeeping on every switch ("waiting
//! since", "created at") only has to be good enough for a human reading the inspector, and it
//! runs on the hottest path, so it uses `CLOCK_MONOTONIC_COARSE`: a few nanoseconds instead of
//! ~25, at the price of the kernel tick's resolution (1 to 4 ms). Both clocks are the same
//! timeline (`CLOCK_MONOTONIC`), so their readings can be compared.
//!
//! The state changes of every wait ("waiting since", "running since") read the coarse clock as
//! the monitor thread last published it ([`ticked_ns`]): one load of a line written once per
//! monitor tick, instead of two clock reads per switch (about 20 ns per ping-pong round trip,
//! measured). Its resolution is the monitor's tick (10 ms).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// The coarse time the monitor thread published at its last tick, 0 before its first.
static TICKED: AtomicU64 = AtomicU64::new(0);

/// Publishes the coarse time for [`ticked_ns`]; the monitor thread calls it every tick.
pub(crate) fn tick() {
    // Never 0, which means "not published yet".
    TICKED.store(coarse_ns().max(1), Ordering::Relaxed);
}

/// Stops publishing: [`ticked_ns`] reads the clock itself until the next [`tick`]. The
/// monitor calls it before it parks.
pub(crate) fn pause() {
    TICKED.store(0, Ordering::Relaxed);
}

/// Coarse nanoseconds since the epoch as of the monitor's last tick (at most one tick behind
/// [`coarse_ns`], never ahead of it); the clock itself until the monitor has ticked, and
/// while it is parked.
#[inline]
pub(crate) fn ticked_ns() -> u64 {
    match TICKED.load(Ordering::Relaxed) {
        0 => coarse_ns(),
        t => t,
    }
}

/// Precise nanoseconds since the epoch.
pub(crate) fn precise_ns() -> u64 {
    instant_ns(Instant::now())
}

/// Converts an [`Instant`] to nanoseconds since the epoch (0 for instants before it).
pub(crate) fn instant_ns(at: Instant) -> u64 {
    at.saturating_duration_since(epoch().instant).as_nanos() as u64
}

/// The [`Instant`] `ns` nanoseconds after the epoch: the inverse of [`instant_ns`].
pub(crate) fn instant_at(ns: u64) -> Instant {
    epoch().instant + Duration::from_nanos(ns)
}

/// Time since the runtime's epoch.
pub(crate) fn uptime() -> Duration {
    epoch().instant.elapsed()
}
