//! What a pool counts, and the shape it takes in the runtime's snapshot: an object of kind
//! `db pool` whose [`detail`](greenhub::inspect::ObjectInfo::detail) is a [`DbPoolStats`].

use greenhub_tpool::Summary;
use serde::{Deserialize, Serialize};

/// The pool at a glance, as errors report it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    /// The most connections the pool opens.
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
