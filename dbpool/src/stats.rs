//! What a pool counts, and the shape it takes in the runtime's snapshot: an object of kind
//! `db pool` whose [`detail`](greenhub::inspect::ObjectInfo::detail) is a [`DbPoolStats`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use greenhub_tpool::Summary;
use serde::{Deserialize, Serialize};

/// The pool at a glance, as errors report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// The most connections the pool opens: its `max_size`, or the size it was resized to.
    pub max_size: u32,
    /// Connections open now.
    pub size: u32,
    /// Of which idle.
    pub idle: u32,
    /// Connections checked out now.
    pub in_use: u32,
    /// Green threads waiting for a connection.
    pub waiting: u32,
}

impl std::fmt::Display for PoolState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of at most {} connections open, {} idle, {} in use, {} waiting",
            self.size, self.max_size, self.idle, self.in_use, self.waiting
        )
    }
}

/// Connections closed, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    /// Reported broken by the driver (lost), or failed their rollback.
    pub broken: u64,
    /// Reached their lifetime.
    pub lifetime: u64,
    /// Failed the test before a checkout.
    pub invalid: u64,
    /// Idle too long (or the pool was dropped).
    pub idle: u64,
    /// Closed after a cancel request that might still have landed on a later statement.
    #[serde(default)]
    pub cancelled: u64,
    /// Evicted (opened before [`Pool::evict`](crate::Pool::evict)).
    #[serde(default)]
    pub evicted: u64,
    /// Closed by [`Pool::close`](crate::Pool::close).
    #[serde(default)]
    pub pool_closed: u64,
    /// Closed because [`Pool::resize`](crate::Pool::resize) made the pool smaller.
    #[serde(default)]
    pub resized: u64,
}

/// A connection checked out now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutInfo {
    /// The checkout's number in this pool.
    pub id: u64,
    /// The green thread that checked it out (none from a plain OS thread).
    pub holder: Option<u64>,
    /// That green thread's name.
    pub holder_name: Option<String>,
    /// Where it was checked out (`file:line:column`).
    pub site: String,
    /// How long it has been held, in microseconds.
    pub held_for_us: u64,
    /// Whether it has been held past the leak threshold.
    pub leaked: bool,
}

/// A pool's state, counters and current checkouts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DbPoolStats {
    /// The pool's name.
    pub name: String,
    /// Sizes: open, idle, in use, waiting.
    pub state: PoolState,
    /// The longest current wait for a connection, in microseconds (0 when nobody waits).
    pub oldest_wait_us: u64,
    /// Checkouts so far.
    pub checkouts: u64,
    /// Waits for a connection that gave up (the pool's timeout or a deadline scope).
    pub timeouts: u64,
    /// Connections opened.
    pub created: u64,
    /// Attempts to open a connection that failed.
    pub connect_failures: u64,
    /// The last reason an attempt to connect failed.
    pub last_connect_error: Option<String>,
    /// Connections closed, by reason.
    pub closed: Closed,
    /// Checkouts held past the leak threshold so far.
    pub leaks: u64,
    /// Statements stopped on the server (or interrupted) because their caller left.
    #[serde(default)]
    pub cancels: u64,
    /// Time from asking for a connection to holding one.
    pub acquire_wait: Summary,
    /// Time a connection was held.
    pub hold_time: Summary,
    /// The connections checked out now, longest held first.
    pub current: Vec<CheckoutInfo>,
    /// What size would have served the last minutes (Little's law over the pool's own
    /// records), and HikariCP's deadlock-safe minimum for what was observed.
    #[serde(default)]
    pub advice: SizeAdvice,
}

/// The pool-size advisor: from the last minutes of checkouts and returns, the size at which
/// nobody would have waited, and the smallest size that cannot deadlock given how many
/// connections one green thread was seen to hold at once.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SizeAdvice {
    /// The stretch of time looked at, in seconds (up to the last five minutes).
    pub window_s: f64,
    /// Checkouts per second over it (λ).
    pub checkouts_per_s: f64,
    /// Mean time a connection was held, in milliseconds (W).
    pub mean_hold_ms: f64,
    /// Connections in use on average: λ × W (Little's law).
    pub mean_in_use: f64,
    /// The most callers holding or waiting for a connection at once: with this many
    /// connections, nobody would have waited.
    pub peak_demand: u32,
    /// The most connections one green thread held at once (Cm).
    pub most_held_by_one_thread: u32,
    /// The most green threads holding connections at once (Tn).
    pub peak_holders: u32,
    /// HikariCP's deadlock-safe minimum, Tn × (Cm − 1) + 1: below it, threads that each
    /// hold one connection and wait for another can starve each other for ever.
    pub deadlock_safe_min: u32,
    /// The size that would have served the window without waiting and cannot deadlock:
    /// the larger of the peak demand and the deadlock-safe minimum.
    pub suggested_max_size: u32,
    /// The advice in a sentence, for logs and the inspector.
    pub summary: String,
}

/// Callers holding or waiting for a connection now, and the most at once since the last
/// look: raised when a caller asks, lowered by the guard it holds.
#[derive(Default)]
pub(crate) struct DemandGauge {
    now: AtomicU32,
    peak: AtomicU32,
}

impl DemandGauge {
    /// A caller asks for a connection; it counts until the guard drops.
    pub(crate) fn arrive(self: &Arc<Self>) -> Demand {
        let now = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak.fetch_max(now, Ordering::AcqRel);
        Demand(self.clone())
    }

    /// The peak since the last call, restarting from the demand now.
    pub(crate) fn take_peak(&self) -> u32 {
        self.peak
            .swap(self.now.load(Ordering::Acquire), Ordering::AcqRel)
    }

    /// The peak since the last [`DemandGauge::take_peak`].
    pub(crate) fn peak(&self) -> u32 {
        self.peak.load(Ordering::Acquire)
    }
}

/// One caller's share of the demand: held while it waits for and holds a connection.
pub(crate) struct Demand(Arc<DemandGauge>);

impl Drop for Demand {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What [`Pool::close`](crate::Pool::close) saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReport {
    /// Connections still checked out when it stopped waiting (each is closed when it comes
    /// back).
    pub still_out: u32,
    /// How long it waited.
    pub waited: std::time::Duration,
}
