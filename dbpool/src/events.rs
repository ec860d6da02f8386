//! What a pool tells a program that hooks it ([`HandleEvent`], as r2d2's `HandleEvent`):
//! connections opened and closed (with the reason), checkouts, returns, checkouts that timed
//! out and suspected leaks, so that a program can feed its own metrics or logs.
//!
//! This module holds only the event types; the pool calls the hook where each thing happens.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::stats::PoolState;

/// Why a connection was closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CloseReason {
    /// The driver reported it broken (lost), or a rollback on it failed.
    Broken,
    /// It reached its (jittered) lifetime.
    Lifetime,
    /// It failed the test before a checkout, or a keepalive test while idle.
    Invalid,
    /// Idle too long beyond `min_idle`, or the pool was dropped.
    Idle,
    /// A cancel request sent for a caller that left could still have landed on a later
    /// statement.
    Cancelled,
    /// Evicted ([`Pool::evict`](crate::Pool::evict)): opened before the eviction.
    Evicted,
    /// The pool was closed ([`Pool::close`](crate::Pool::close)).
    PoolClosed,
    /// The pool was made smaller ([`Pool::resize`](crate::Pool::resize)) than the
    /// connections it had open.
    Resized,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CloseReason::Broken => "broken",
            CloseReason::Lifetime => "lifetime",
            CloseReason::Invalid => "invalid",
            CloseReason::Idle => "idle",
            CloseReason::Cancelled => "cancelled",
            CloseReason::Evicted => "evicted",
            CloseReason::PoolClosed => "pool closed",
            CloseReason::Resized => "resized",
        })
    }
}

/// A connection was opened.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Opened {
    /// The connection's number in its pool (from 0, in the order they were opened).
    pub connection: u64,
    /// How long the connect took.
    pub took: Duration,
}

/// A connection was closed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Closed {
    /// The connection's number in its pool.
    pub connection: u64,
    /// Why.
    pub reason: CloseReason,
    /// How long it was open.
    pub age: Duration,
}

/// A connection was checked out (also for one call of [`Pool::run`](crate::Pool::run) and
/// the pool's statement helpers).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CheckedOut {
    /// The checkout's number in its pool.
    pub checkout: u64,
    /// How long the caller waited for it.
    pub waited: Duration,
}

/// A checked-out connection came back.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CheckedIn {
    /// The checkout's number in its pool.
    pub checkout: u64,
    /// How long it was held.
    pub held: Duration,
}

/// A caller gave up waiting for a connection: the pool's `connection_timeout` or its own
/// deadline passed, or the pool could not connect.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CheckoutTimedOut {
    /// How long it waited.
    pub waited: Duration,
    /// The pool when it gave up.
    pub state: PoolState,
}

/// A connection has been held past the pool's `leak_threshold`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct LeakSuspected {
    /// The checkout's number in its pool.
    pub checkout: u64,
    /// The green thread holding it (none for a plain OS thread).
    pub holder: Option<u64>,
    /// That green thread's name.
    pub holder_name: Option<String>,
    /// Where it was checked out (`file:line:column`).
    pub site: String,
    /// How long it has been held.
    pub held: Duration,
}

/// Hooks for a pool's events ([`Builder::events`](crate::Builder::events)); every method
/// does nothing unless overridden.
///
/// A method runs on the thread where the event happens: a green thread's worker, one of the
/// pool's threads, or one of r2d2's (connections opened and closed in the background). It
/// must return quickly, never block (bump a counter, send on a channel), and not call back
/// into the pool.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use greenhub_dbpool::{HandleEvent, Pool, SqliteConnectionManager, events};
///
/// #[derive(Default)]
/// struct Opens(AtomicU64);
/// impl HandleEvent for Opens {
///     fn opened(&self, _: &events::Opened) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
///
/// let opens = std::sync::Arc::new(Opens::default());
/// let pool = Pool::builder()
///     .events(opens.clone())
///     .build(SqliteConnectionManager::memory())
///     .unwrap();
/// pool.run(|_| ()).unwrap();
/// assert_eq!(opens.0.load(Ordering::Relaxed), 1);
/// ```
pub trait HandleEvent: Send + Sync + 'static {
    /// A connection was opened.
    fn opened(&self, event: &Opened) {
        let _ = event;
    }
    /// A connection was closed.
    fn closed(&self, event: &Closed) {
        let _ = event;
    }
    /// A connection was checked out.
    fn checked_out(&self, event: &CheckedOut) {
        let _ = event;
    }
    /// A connection came back.
    fn checked_in(&self, event: &CheckedIn) {
        let _ = event;
    }
    /// A caller gave up waiting for a connection.
    fn checkout_timed_out(&self, event: &CheckoutTimedOut) {
        let _ = event;
    }
    /// A connection has been held past the leak threshold.
    fn leak_suspected(&self, event: &LeakSuspected) {
        let _ = event;
    }
}

impl<H: HandleEvent + ?Sized> HandleEvent for std::sync::Arc<H> {
    fn opened(&self, event: &Opened) {
        (**self).opened(event);
    }
    fn closed(&self, event: &Closed) {
        (**self).closed(event);
    }
    fn checked_out(&self, event: &CheckedOut) {
        (**self).checked_out(event);
    }
    fn checked_in(&self, event: &CheckedIn) {
        (**self).checked_in(event);
    }
    fn checkout_timed_out(&self, event: &CheckoutTimedOut) {
        (**self).checkout_timed_out(event);
    }
    fn leak_suspected(&self, event: &LeakSuspected) {
        (**self).leak_suspected(event);
    }
}

/// The hook of a pool built without one.
pub(crate) struct NoEvents;

impl HandleEvent for NoEvents {}
