//! A checked-out connection: the [`Lease`] that owns it (and returns it, from wherever it is
//! dropped) and the [`Conn`] guard green threads hold.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use r2d2::PooledConnection;

use std::panic::Location;

use crate::managed::{CloseReason, Managed, ServerTimeout, Tracked};
use crate::stats::Demand;
use crate::{Backend, Canceller, Error};

/// What a lease needs of the pool it came from: the pool implements it, so this file does
/// not depend on `pool.rs` (the pool depends on this one).
pub(crate) trait Books<M: Backend>: Send + Sync {
    /// Whether the driver says the connection is broken.
    fn has_broken(&self, conn: &mut M::Connection) -> bool;
    /// Whether the pool was made smaller than the permits out: a connection coming back then
    /// closes, since its permit is kept.
    fn over_size(&self) -> bool;
    /// What stops the statement running on the connection (the backend's [`Canceller`]).
    fn canceller(&self, conn: &mut M::Connection) -> Option<Canceller>;
    /// Books checkout `id` in.
    fn checked_in(&self, id: u64);
    /// Books a checkout out: its id, and its leak timer when a threshold is set.
    fn book_checkout(
        self: Arc<Self>,
        holder: Option<(u64, Option<String>)>,
        site: &'static Location<'static>,
        asked_at: Instant,
    ) -> (u64, Option<greenhub::thread::Timer>);
    /// The pool's own threads, where rollbacks and closes run.
    fn tpool(&self) -> &greenhub_tpool::Pool;
    /// Hands a permit on: to the first green thread or job waiting, or back to the free ones.
    fn release(self: Arc<Self>);
}

/// A permit to hold one connection; handed on when dropped, unless a [`Lease`] took it over.
pub(crate) struct Permit<M: Backend>(pub Arc<dyn Books<M>>);

impl<M: Backend> Drop for Permit<M> {
    fn drop(&mut self) {
        self.0.clone().release();
    }
}

/// One connection out of the pool, with the permit it holds. Dropping it returns both: the
/// connection rolled back if it may be inside a transaction, then booked in, then the permit
/// handed to the next waiter. It travels into every call on the connection, so a call that
/// its caller abandoned returns the connection from the pool thread when it ends.
pub(crate) struct Lease<M: Backend> {
    pooled: Option<PooledConnection<Managed<M>>>,
    permit: Option<Permit<M>>,
    id: u64,
    leak_timer: Option<greenhub::thread::Timer>,
    /// Set on a lease handed to a pool thread to be returned there: never hand it on again.
    on_pool_thread: bool,
    /// The holder's share of the pool's demand, for a checkout held by a [`Conn`].
    pub demand: Option<Demand>,
}

impl<M: Backend> Lease<M> {
    pub(crate) fn new(
        pooled: PooledConnection<Managed<M>>,
        permit: Permit<M>,
        id: u64,
        leak_timer: Option<greenhub::thread::Timer>,
    ) -> Lease<M> {
        Lease {
            pooled: Some(pooled),
            permit: Some(permit),
            id,
            leak_timer,
            on_pool_thread: false,
            demand: None,
        }
    }

    /// On the pool thread that just ran a job on it: rolls back if needed and says whether
    /// the connection can serve the next job without going back to r2d2.
    pub(crate) fn reusable(&mut self) -> bool {
        let (Some(pooled), Some(permit)) = (self.pooled.as_mut(), self.permit.as_ref()) else {
            return false;
        };
        let books = &permit.0;
        if M::in_transaction(&mut pooled.conn).unwrap_or(pooled.dirty) {
            if M::rollback(&mut pooled.conn).is_err() {
                pooled.close = Some(CloseReason::Broken);
            }
            pooled.dirty = false;
        }
        pooled.close.is_none()
            && pooled.retired(Instant::now()).is_none()
            && !books.has_broken(&mut pooled.conn)
            && !books.over_size()
    }

    /// Books this checkout in and the next one out (the next job's, asked for by `holder` at
    /// `site` at `asked_at`), on the same connection.
    pub(crate) fn hand_over(
        &mut self,
        holder: Option<(u64, Option<String>)>,
        site: &'static Location<'static>,
        asked_at: Instant,
    ) {
        let Some(permit) = self.permit.as_ref() else {
            return;
        };
        let books = permit.0.clone();
        if let Some(timer) = self.leak_timer.take() {
            timer.cancel();
        }
        books.checked_in(self.id);
        let (id, leak_timer) = books.book_checkout(holder, site, asked_at);
        self.id = id;
        self.leak_timer = leak_timer;
    }

    /// On a pool thread: runs a caller's call on the connection, stoppable on the server
    /// while it runs if the caller leaves. `Err(Returned)` without a connection, and
    /// `Err(TimedOut)` without running `f` when the caller has left already.
    ///
    /// A cancel that may still land (a PostgreSQL cancel request: the server acts on it
    /// asynchronously, under load tens of milliseconds later, and says nothing of when)
    /// closes the connection when it comes back: it could stop the next statement.
    pub(crate) fn run_for<R>(
        &mut self,
        presence: &Presence,
        f: impl FnOnce(&mut Tracked<M::Connection>, &Presence) -> R,
    ) -> Result<R, Error> {
        let (Some(pooled), Some(permit)) = (self.pooled.as_mut(), self.permit.as_ref()) else {
            return Err(Error::Returned);
        };
        let books = &permit.0;
        // Made once per connection: a PostgreSQL cancel token copies the connection's
        // configuration, too much to do for every call.
        let canceller = match &pooled.canceller {
            Some(made) => made.clone(),
            None => {
                let made = books.canceller(&mut pooled.conn).map(Arc::new);
                pooled.canceller = Some(made.clone());
                made
            }
        };
        if !presence.arm(canceller, books.tpool()) {
            return Err(Error::TimedOut);
        }
        let t: &mut Tracked<M::Connection> = pooled;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(t, presence)));
        let cancelled = presence.disarm();
        if cancelled != Cancelled::No {
            t.counters.cancels.fetch_add(1, Ordering::Relaxed);
        }
        if cancelled == Cancelled::MayLand && t.close.is_none() {
            t.close = Some(CloseReason::Cancelled);
        }
        match outcome {
            Ok(value) => Ok(value),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    fn tpool(&self) -> Option<greenhub_tpool::Pool> {
        self.permit.as_ref().map(|p| p.0.tpool().clone())
    }
}

impl<M: Backend> Drop for Lease<M> {
    fn drop(&mut self) {
        let (Some(mut pooled), Some(permit)) = (self.pooled.take(), self.permit.take()) else {
            return;
        };
        let books = permit.0.clone();
        let needs_rollback = M::in_transaction(&mut pooled.conn).unwrap_or(pooled.dirty);
        // Closing a connection talks to the server too.
        if pooled.close.is_none() {
            if books.has_broken(&mut pooled.conn) {
                pooled.close = Some(CloseReason::Broken);
            } else if books.over_size() {
                pooled.close = Some(CloseReason::Resized);
            } else {
                pooled.close = pooled.retired(Instant::now());
            }
        }
        let closing = pooled.close.is_some();
        if (needs_rollback || closing) && !self.on_pool_thread && may::coroutine::is_coroutine() {
            // A round trip to the server: not on a worker. The pool's queue always has room
            // for it (every queued call holds a permit), so this never waits, even while a
            // killed green thread unwinds.
            let lease = Lease {
                pooled: Some(pooled),
                permit: Some(permit),
                id: self.id,
                leak_timer: self.leak_timer.take(),
                on_pool_thread: true,
                demand: self.demand.take(),
            };
            // If the pool's threads are shut down the closure is dropped here and the lease
            // returns inline (`on_pool_thread` stops it from being handed on again).
            let _ = books.tpool().spawn(move || drop(lease));
            return;
        }
        if needs_rollback && M::rollback(&mut pooled.conn).is_err() {
            pooled.close = Some(CloseReason::Broken);
        }
        pooled.dirty = false;
        pooled.decided = true;
        pooled.last_checkin = Instant::now();
        if let Some(timer) = self.leak_timer.take() {
            timer.cancel();
        }
        drop(pooled); // back to r2d2, which closes it if `has_broken` says so
        books.checked_in(self.id);
        drop(permit);
    }
}

/// Runs code the pool does not see into on the connection, on a pool thread: the session as
/// its default (no `statement_timeout` left by a helper), and the connection counted as
/// possibly inside a transaction afterwards.
pub(crate) fn run_raw<M: Backend, R>(
    t: &mut Tracked<M::Connection>,
    f: impl FnOnce(&mut M::Connection) -> R,
) -> R {
    if t.server_timeout != ServerTimeout::Default {
        t.server_timeout = match M::reset_session(&mut t.conn) {
            Ok(()) => ServerTimeout::Default,
            Err(_) => ServerTimeout::Unknown,
        };
    }
    // Whatever `f` does, the pool cannot know whether it left a transaction open.
    t.dirty = true;
    f(&mut t.conn)
}

/// A connection checked out of a [`Pool`](crate::Pool). It goes back when dropped (see the
/// [crate rules](crate)); calls on it run on the pool's threads.
///
/// ```
/// use greenhub_dbpool::{Pool, SqliteConnectionManager};
///
/// let pool = Pool::builder().max_size(1).build(SqliteConnectionManager::memory()).unwrap();
/// let t = greenhub::spawn(move || {
///     let mut conn = pool.get().unwrap();
///     conn.run(|c| c.execute_batch("BEGIN; CREATE TABLE t(x); INSERT INTO t VALUES (1);"))
///         .unwrap()
///         .unwrap();
///     drop(conn); // returned inside a transaction: rolled back
///     pool.run(|c| c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0)))
/// });
/// assert_eq!(t.wait().unwrap().unwrap().unwrap(), 0);
/// ```
pub struct Conn<M: Backend> {
    lease: Option<Lease<M>>,
}

impl<M: Backend> std::fmt::Debug for Conn<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("checkout", &self.lease.as_ref().map(|l| l.id))
            .finish()
    }
}

impl<M: Backend> Conn<M> {
    pub(crate) fn new(lease: Lease<M>) -> Conn<M> {
        Conn { lease: Some(lease) }
    }

    /// Runs `f` with the raw connection on a pool thread and returns its value; the calling
    /// green thread waits cooperatively (bounded by the enclosing deadline scope).
    ///
    /// If the caller stops waiting (deadline, kill), the statement `f` is running is
    /// cancelled on the database and `f` runs on to its end (its statements fail); the
    /// connection then goes back to the pool from there (closed if a PostgreSQL cancel could
    /// still land on it) and this `Conn` is left empty ([`Error::Returned`] on later calls). A panic in `f` comes back as
    /// [`Error::Panicked`] and the connection, rolled back, goes back to the pool.
    #[track_caller]
    pub fn run<R, F>(&mut self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut M::Connection) -> R + Send + 'static,
    {
        self.call(move |t, _| run_raw::<M, R>(t, f))
    }

    /// [`Conn::run`] for a closure that returns a `Result` whose error converts into the pool's
    /// [`Error`](enum@crate::Error) (SQLite's and PostgreSQL's do): the driver's error and the pool's come back
    /// as one, so a single `?` takes both.
    ///
    /// ```
    /// use greenhub_dbpool::{Pool, SqliteConnectionManager};
    ///
    /// let pool = Pool::builder().max_size(1).build(SqliteConnectionManager::memory()).unwrap();
    /// let mut conn = pool.get().unwrap();
    /// let n: i64 = conn.try_run(|c| c.query_row("SELECT 6 * 7", [], |r| r.get(0))).unwrap();
    /// assert_eq!(n, 42);
    /// let bad = conn.try_run(|c| c.execute("NOT SQL", [])).unwrap_err();
    /// assert!(matches!(bad, greenhub_dbpool::Error::Database(_)));
    /// ```
    #[track_caller]
    pub fn try_run<T, E, F>(&mut self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        E: Into<Error> + Send + 'static,
        F: FnOnce(&mut M::Connection) -> Result<T, E> + Send + 'static,
    {
        self.run(f)?.map_err(Into::into)
    }

    /// Runs `f` on the tracked connection on a pool thread, the lease travelling along. `f`
    /// is told (through the [`Presence`]) whether its caller still waits, so that a helper can
    /// roll back instead of committing work nobody will hear of, or claim its commit so that
    /// the caller waits for the outcome even past its deadline.
    #[track_caller]
    pub(crate) fn call<R, F>(&mut self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut Tracked<M::Connection>, &Presence) -> R + Send + 'static,
    {
        let mut lease = self.lease.take().ok_or(Error::Returned)?;
        let tpool = lease.tpool().ok_or(Error::Returned)?;
        let (mut caller, presence) = StopsWaiting::arm();
        let mut call = tpool.submit(move || {
            let value = lease.run_for(&presence, f);
            (lease, value)
        })?;
        let outcome = match call.wait() {
            // A commit under way: its outcome is the caller's, deadline or not.
            Err(greenhub_tpool::Error::TimedOut) if !caller.leave() => {
                greenhub::ext::without_deadline(|| call.wait())
            }
            other => other,
        };
        let (lease, value) = outcome?;
        caller.disarm();
        self.lease = Some(lease);
        value
    }
}

/// Whether the caller of a pool-thread call still waits for its outcome: shared by the two,
/// so that a commit and a caller giving up exclude each other. The call claims its commit
/// point ([`Presence::commit`]) before committing; a caller whose deadline passes leaves
/// ([`StopsWaiting::leave`]) unless the commit was claimed first, and then waits for the
/// outcome. So a caller never reports as failed a commit that happened, and work whose caller
/// has gone is never committed.
///
/// It also carries the call's [`Canceller`] while the call runs: a caller that leaves then
/// has the statement stopped (on a pool thread), and the call learns whether that happened.
pub(crate) struct Presence {
    state: AtomicU8,
    cancel: Mutex<Cancel>,
}

const WAITING: u8 = 0;
const GONE: u8 = 1;
const COMMITTING: u8 = 2;

/// Where a call's cancel stands. The pool thread that sends it holds the lock while it does,
/// so the call, which takes the lock when it ends, never moves on with a cancel half-sent.
enum Cancel {
    /// Nothing runs for the caller (not yet started, or ended).
    Idle,
    /// The call runs; this stops it, from one of these threads. The server stops the
    /// statement itself by `server_stops_by` (its `statement_timeout`), if set.
    Armed {
        canceller: Arc<Canceller>,
        tpool: greenhub_tpool::Pool,
        server_stops_by: Option<Instant>,
    },
    /// The caller left while the call ran: the cancel is sent, and sent again while the call
    /// runs (one that reached the database before the statement is lost).
    Cancelling {
        canceller: Arc<Canceller>,
        tpool: greenhub_tpool::Pool,
        sent: u32,
    },
}

/// What a call learns of its cancel when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// No cancel was sent (or none could be).
    No,
    /// Sent, and taken effect (or never will) by now.
    Settled,
    /// Sent, and may still land on a later statement.
    MayLand,
}

/// The first pause before a cancel is sent again; it doubles up to [`RESEND_CAP`].
const RESEND_FIRST: Duration = Duration::from_millis(50);
const RESEND_CAP: Duration = Duration::from_secs(1);

/// A caller that leaves this close to the moment the server stops its statement (its
/// `statement_timeout`, rounded up to the millisecond) leaves the stopping to the server.
const SERVER_STOPS_SOON: Duration = Duration::from_millis(5);

impl Presence {
    /// On the pool thread, just before committing: claims the outcome for the caller, who
    /// then waits for it even past its deadline. `false` if the caller has gone: roll back.
    pub(crate) fn commit(&self) -> bool {
        self.state
            .compare_exchange(WAITING, COMMITTING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// On the pool thread, as the call starts: keeps what stops it. `false` if the caller
    /// has gone already: then the call does not run at all.
    fn arm(&self, canceller: Option<Arc<Canceller>>, tpool: &greenhub_tpool::Pool) -> bool {
        let mut cancel = self.cancel.lock();
        // Checked under the lock: a caller that leaves after this finds the canceller.
        if self.state.load(Ordering::Acquire) == GONE {
            return false;
        }
        if let Some(canceller) = canceller {
            *cancel = Cancel::Armed {
                canceller,
                tpool: tpool.clone(),
                server_stops_by: None,
            };
        }
        true
    }

    /// On the pool thread, as the call ends: whether its statement was cancelled. No cancel
    /// is sent for it after this.
    fn disarm(&self) -> Cancelled {
        match std::mem::replace(&mut *self.cancel.lock(), Cancel::Idle) {
            Cancel::Cancelling { sent: 0, .. } | Cancel::Idle | Cancel::Armed { .. } => {
                Cancelled::No
            }
            Cancel::Cancelling { canceller, .. } if canceller.lands_late() => Cancelled::MayLand,
            Cancel::Cancelling { .. } => Cancelled::Settled,
        }
    }

    /// On the pool thread, while the call runs: the server stops the running statement
    /// itself by `at` (a `statement_timeout`); a caller leaving at about that time sends no
    /// cancel of its own, which could race the server's and reach a later statement.
    pub(crate) fn server_stops_by(&self, at: Instant) {
        if let Cancel::Armed {
            server_stops_by, ..
        } = &mut *self.cancel.lock()
        {
            *server_stops_by = Some(at);
        }
    }

    /// The caller has left: a running call's statement is stopped from a pool thread,
    /// unless the server is about to stop it.
    fn request_cancel(self: &Arc<Self>) {
        let mut cancel = self.cancel.lock();
        let Cancel::Armed {
            canceller,
            tpool,
            server_stops_by,
        } = std::mem::replace(&mut *cancel, Cancel::Idle)
        else {
            return;
        };
        if server_stops_by.is_some_and(|at| Instant::now() + SERVER_STOPS_SOON >= at) {
            return;
        }
        *cancel = Cancel::Cancelling {
            canceller,
            tpool: tpool.clone(),
            sent: 0,
        };
        drop(cancel);
        self.clone().send_cancel_on(&tpool, RESEND_FIRST);
    }

    /// Queues a send on the pool's threads. The queue has room: at most one send per
    /// checked-out connection waits in it. If the pool's threads are gone, nothing is sent
    /// and the call runs to its end.
    fn send_cancel_on(self: Arc<Self>, tpool: &greenhub_tpool::Pool, next: Duration) {
        let _ = tpool.spawn(move || self.send_cancel(next));
    }

    /// On a pool thread: sends the cancel if the call still runs, and schedules the next.
    fn send_cancel(self: Arc<Self>, next: Duration) {
        let mut cancel = self.cancel.lock();
        let Cancel::Cancelling {
            canceller, sent, ..
        } = &mut *cancel
        else {
            return; // the call ended first
        };
        // An error does not prove the request never reached the server (the connection
        // may fail after it was read): every attempt counts as one that may land.
        let _ = canceller.send();
        *sent += 1;
        drop(cancel);
        let presence = self;
        greenhub::call_after(next, move || {
            let tpool = match &*presence.cancel.lock() {
                Cancel::Cancelling { tpool, .. } => tpool.clone(),
                _ => return,
            };
            presence.send_cancel_on(&tpool, (next * 2).min(RESEND_CAP));
        });
    }
}

/// The caller's side of a [`Presence`]: leaves when the caller stops waiting, on an error
/// (deadline) or while unwinding (kill). Disarmed once the result is in.
pub(crate) struct StopsWaiting(Option<Arc<Presence>>);

impl StopsWaiting {
    pub(crate) fn arm() -> (StopsWaiting, Arc<Presence>) {
        let presence = Arc::new(Presence {
            state: AtomicU8::new(WAITING),
            cancel: Mutex::new(Cancel::Idle),
        });
        (StopsWaiting(Some(presence.clone())), presence)
    }

    pub(crate) fn disarm(&mut self) {
        self.0 = None;
    }

    /// The caller gives up, and a statement running for it is cancelled. `false` if the call
    /// has claimed its commit: the caller must wait for the outcome instead.
    pub(crate) fn leave(&self) -> bool {
        let Some(p) = &self.0 else {
            return true;
        };
        match p
            .state
            .compare_exchange(WAITING, GONE, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                p.request_cancel();
                true
            }
            Err(state) => state == GONE,
        }
    }
}

impl Drop for StopsWaiting {
    fn drop(&mut self) {
        // A killed caller unwinds whatever the call does: it cannot wait for the outcome.
        self.leave();
    }
}
