//! The manager r2d2 is given: the user's manager, with each connection wrapped in a
//! [`Tracked`] that knows its age, its expiry (with jitter), when it was last returned, and,
//! once it is closed, why; the pool's counters see every open and close.

use std::any::Any;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use r2d2::ManageConnection;

pub(crate) use crate::events::CloseReason;
use crate::events::{self, HandleEvent};
use crate::statements::StatementOptions;
use crate::{Backend, Canceller};

/// The server's statement timeout on a connection, as far as the pool knows (the PostgreSQL
/// helpers set it from callers' deadlines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerTimeout {
    /// The session's default (the role's or the database's setting).
    Default,
    /// Set by the pool to this many milliseconds.
    Millis(u64),
    /// Unknown: set inside a transaction that may have been rolled back since.
    Unknown,
}

/// What the pool counts of its connections, and the program's hook for their events.
pub(crate) struct Counters {
    pub events: Arc<dyn HandleEvent>,
    pub created: AtomicU64,
    pub connect_failures: AtomicU64,
    pub broken: AtomicU64,
    pub lifetime: AtomicU64,
    pub invalid: AtomicU64,
    pub idle: AtomicU64,
    pub cancelled: AtomicU64,
    pub evicted: AtomicU64,
    pub pool_closed: AtomicU64,
    pub resized: AtomicU64,
    /// The pool is closed: every connection is closed as it comes back.
    pub closing: AtomicBool,
    /// The eviction generation: connections opened in an earlier one are closed.
    pub generation: AtomicU64,
    /// Statements cancelled for callers that left.
    pub cancels: AtomicU64,
    pub last_connect_error: Mutex<Option<String>>,
    /// When the last connect attempt failed; cleared by a success.
    pub failing_since: Mutex<Option<Instant>>,
    /// When the last connect attempt ended (either way).
    pub last_attempt: Mutex<Option<Instant>>,
    /// When the last successful connect attempt began.
    pub last_success: Mutex<Option<Instant>>,
}

impl Counters {
    pub(crate) fn new(events: Arc<dyn HandleEvent>) -> Counters {
        Counters {
            events,
            created: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            broken: AtomicU64::new(0),
            lifetime: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            idle: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            pool_closed: AtomicU64::new(0),
            resized: AtomicU64::new(0),
            closing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
            last_connect_error: Mutex::new(None),
            failing_since: Mutex::new(None),
            last_attempt: Mutex::new(None),
            last_success: Mutex::new(None),
        }
    }
}

/// A pooled connection and what the pool knows of it.
pub(crate) struct Tracked<C> {
    pub conn: C,
    /// Its number in the pool, in the order connections were opened.
    pub serial: u64,
    pub born: Instant,
    /// The pool's eviction generation when it was opened.
    pub generation: u64,
    pub expires: Option<Instant>,
    pub last_checkin: Instant,
    /// When it was last tested while idle (keepalive); its idle time for the test before a
    /// checkout counts from the later of the two.
    pub last_probe: Instant,
    /// Whether it may be inside a transaction that the driver cannot report.
    pub dirty: bool,
    /// Set when the pool decides to close it: r2d2 then discards it on return.
    pub close: Option<CloseReason>,
    /// Set when the check-in already decided (on the right thread) whether to close it, so
    /// that r2d2's `has_broken` does not decide again, maybe on a worker.
    pub decided: bool,
    /// What a backend's helpers keep per connection (PostgreSQL: prepared statements).
    pub cache: Option<Box<dyn Any + Send>>,
    /// How the backend's helpers send statements (the pool's settings).
    pub options: StatementOptions,
    /// The server's statement timeout, as the helpers left it.
    pub server_timeout: ServerTimeout,
    /// What stops its statements (made on first use; `Some(None)`: the backend has none).
    pub canceller: Option<Option<Arc<Canceller>>>,
    pub counters: Arc<Counters>,
}

impl<C> Tracked<C> {
    pub(crate) fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|at| now >= at)
    }

    /// Why it must not serve again although it works: the pool closed, an eviction, its
    /// lifetime.
    pub(crate) fn retired(&self, now: Instant) -> Option<CloseReason> {
        if self.counters.closing.load(Ordering::Acquire) {
            Some(CloseReason::PoolClosed)
        } else if self.generation < self.counters.generation.load(Ordering::Acquire) {
            Some(CloseReason::Evicted)
        } else if self.expired(now) {
            Some(CloseReason::Lifetime)
        } else {
            None
        }
    }
}

impl<C> Drop for Tracked<C> {
    fn drop(&mut self) {
        let c = &self.counters;
        // r2d2's reaper closes idle connections past their lifetime without asking us.
        let reason = self
            .close
            .or_else(|| self.retired(Instant::now()))
            .unwrap_or(CloseReason::Idle);
        let counter = match reason {
            CloseReason::Broken => &c.broken,
            CloseReason::Lifetime => &c.lifetime,
            CloseReason::Invalid => &c.invalid,
            CloseReason::Idle => &c.idle,
            CloseReason::Cancelled => &c.cancelled,
            CloseReason::Evicted => &c.evicted,
            CloseReason::PoolClosed => &c.pool_closed,
            CloseReason::Resized => &c.resized,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        c.events.closed(&events::Closed {
            connection: self.serial,
            reason,
            age: self.born.elapsed(),
        });
    }
}

pub(crate) struct Managed<M> {
    pub manager: Arc<M>,
    pub counters: Arc<Counters>,
    pub max_lifetime: Option<Duration>,
    pub options: StatementOptions,
    /// The pool's name, for the reports of an outage.
    pub name: String,
    jitter: RandomState,
}

impl<M> Managed<M> {
    pub(crate) fn new(
        manager: Arc<M>,
        counters: Arc<Counters>,
        max_lifetime: Option<Duration>,
        options: StatementOptions,
        name: String,
    ) -> Self {
        Managed {
            manager,
            counters,
            max_lifetime,
            options,
            name,
            jitter: RandomState::new(),
        }
    }

    /// The lifetime less a pseudo-random tenth at most, different for each connection.
    fn lifetime(&self, serial: u64) -> Option<Duration> {
        self.max_lifetime.map(|life| {
            let spread = life / 10;
            let nanos = spread.as_nanos() as u64;
            let cut = if nanos == 0 {
                0
            } else {
                self.jitter.hash_one(serial) % nanos
            };
            life - Duration::from_nanos(cut)
        })
    }
}

/// Why r2d2 got no connection: the driver's error, or the pool is closed (r2d2 would
/// otherwise open connections again to keep `min_idle`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError<E: std::error::Error + 'static> {
    #[error(transparent)]
    Driver(E),
    #[error("the pool is closed")]
    Closed,
}

impl<M: Backend> ManageConnection for Managed<M> {
    type Connection = Tracked<M::Connection>;
    type Error = ConnectError<M::Error>;

    fn connect(&self) -> Result<Self::Connection, Self::Error> {
        if self.counters.closing.load(Ordering::Acquire) {
            return Err(ConnectError::Closed);
        }
        let started = Instant::now();
        // Read first: a connect that began before an eviction belongs to the old generation.
        let generation = self.counters.generation.load(Ordering::Acquire);
        let result = self.manager.connect().map_err(ConnectError::Driver);
        // `last_attempt` is set after the failure state, so that a reader that sees this
        // attempt's time also sees its outcome.
        let done = || *self.counters.last_attempt.lock() = Some(Instant::now());
        match result {
            Ok(conn) => {
                *self.counters.last_connect_error.lock() = None;
                *self.counters.last_success.lock() = Some(started);
                // The end of an outage is said once, as its start was.
                if let Some(since) = self.counters.failing_since.lock().take() {
                    greenhub::ext::warn(&format!(
                        "greenhub-dbpool: pool {:?} reaches the database again (after {} ms of \
                         failed connects)",
                        self.name,
                        since.elapsed().as_millis()
                    ));
                }
                done();
                let serial = self.counters.created.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                self.counters.events.opened(&events::Opened {
                    connection: serial,
                    took: now.saturating_duration_since(started),
                });
                Ok(Tracked {
                    conn,
                    serial,
                    born: now,
                    generation,
                    expires: self.lifetime(serial).and_then(|l| now.checked_add(l)),
                    decided: false,
                    cache: None,
                    options: self.options,
                    server_timeout: ServerTimeout::Default,
                    canceller: None,
                    last_checkin: now,
                    last_probe: now,
                    dirty: false,
                    close: None,
                    counters: self.counters.clone(),
                })
            }
            Err(e) => {
                self.counters
                    .connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                let reason = crate::chain(&e);
                // An attempt that began before a later one succeeded says nothing of now: an
                // outage that has ended is not started again by a straggler.
                if self
                    .counters
                    .last_success
                    .lock()
                    .is_some_and(|ok| ok > started)
                {
                    done();
                    return Err(e);
                }
                *self.counters.last_connect_error.lock() = Some(reason.clone());
                // Said once per outage (and at start, when the database was never reached),
                // not once per retry.
                let mut failing = self.counters.failing_since.lock();
                let first = failing.is_none();
                if first {
                    *failing = Some(Instant::now());
                }
                drop(failing);
                done();
                if first {
                    greenhub::ext::warn(&format!(
                        "greenhub-dbpool: pool {:?} cannot connect to the database: {reason} \
                         (retrying; checkouts fail at once while no connection is open)",
                        self.name
                    ));
                }
                Err(e)
            }
        }
    }

    fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        self.manager
            .is_valid(&mut conn.conn)
            .map_err(ConnectError::Driver)
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        if std::mem::take(&mut conn.decided) || conn.close.is_some() {
            return conn.close.is_some();
        }
        if self.manager.has_broken(&mut conn.conn) {
            conn.close = Some(CloseReason::Broken);
        } else {
            conn.close = conn.retired(Instant::now());
        }
        conn.close.is_some()
    }
}
