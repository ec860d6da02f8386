//! The pool: permits handed to waiters in arrival order, r2d2 underneath, and the books.
//!
//! A checkout is two steps. First the caller takes a *permit* (there are `max_size`), a green
//! wait on the pool's own FIFO that honours `connection_timeout`, deadline scopes and kill.
//! Then, holding it, the caller asks r2d2 for a connection on a pool thread: r2d2 has one idle
//! or room to open one, so that call only ever waits for a connect. The permit travels with
//! the call: if the caller gives up meanwhile, the call's result (a [`Lease`]) is dropped on
//! the pool thread, which returns the connection and the permit. A permit therefore always
//! has exactly one owner, and a waiter is never left behind by a failed connect.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use greenhub::ext::{Inspect, ObjectInfo, Registration};
use greenhub::ext::{Token, WaitOn, Waiter};
use greenhub_tpool::Durations;
use parking_lot::Mutex;

use crate::conn::{Books, Conn, Lease, Permit, Presence, StopsWaiting};
use crate::events::{self, HandleEvent, NoEvents};
use crate::job::{Delivery, Job, Reply, Slot, Work};
use crate::managed::{CloseReason, Counters, Managed, Tracked};
use crate::statements::{StatementOptions, Statements};
use crate::stats::{CheckoutInfo, Closed, DbPoolStats, DemandGauge, PoolState, SizeAdvice};
use crate::{Backend, Error};

/// Who waits for a connection: a green thread in [`Pool::get`], or a queued job.
enum Entry<M: Backend> {
    Green {
        token: Arc<Token>,
        since: Instant,
        /// The waiting green thread (`None`: a plain OS thread).
        thread: Option<u64>,
    },
    Job(Arc<Job<M>>),
}

impl<M: Backend> Entry<M> {
    fn live(&self) -> bool {
        match self {
            Entry::Green { token, .. } => token.is_waiting(),
            Entry::Job(job) => job.is_queued(),
        }
    }

    fn since(&self) -> Instant {
        match self {
            Entry::Green { since, .. } => *since,
            Entry::Job(job) => job.asked_at,
        }
    }
}

/// The permits (one per connection the pool may open) and everyone waiting for one, in
/// arrival order. Entries that gave up are skipped when reached and swept out as the queue
/// grows, as in greenhub's own objects.
struct Permits<M: Backend> {
    /// The pool's size now: permits in all, but for those `owed`.
    size: u32,
    /// Permits out beyond `size` after the pool was made smaller: each is kept as it comes
    /// back (and its connection closed) instead of being handed on.
    owed: u32,
    free: u32,
    queue: VecDeque<Entry<M>>,
    sweep_at: usize,
    /// New checkouts wait at the gate ([`Pool::suspend`]).
    suspended: bool,
    /// For good ([`Pool::close`]): checkouts fail.
    closed: bool,
    /// Permits made up to wake the waiters of a closed pool (each wakes, sees the pool
    /// closed and hands its permit on); consumed before the free count grows.
    phantom: u32,
    /// Green threads waiting at the gate of a suspended pool.
    gate: Vec<Arc<Token>>,
}

const MIN_SWEEP: usize = 16;

impl<M: Backend> Permits<M> {
    /// Permits held now (by checkouts, calls and the pool's own work).
    fn out(&self) -> u32 {
        (self.size + self.owed).saturating_sub(self.free)
    }

    fn push(&mut self, entry: Entry<M>) {
        if self.queue.len() >= self.sweep_at {
            self.queue.retain(Entry::live);
            self.sweep_at = (self.queue.len() * 2).max(MIN_SWEEP);
        }
        self.queue.push_back(entry);
    }

    fn waiting(&self) -> usize {
        self.queue.iter().filter(|e| e.live()).count()
            + self.gate.iter().filter(|t| t.is_waiting()).count()
    }
}

/// What a freed permit went to.
enum Freed<M: Backend> {
    /// A green thread took it, or it went back to the free count.
    Settled,
    /// A queued job claimed it: run it.
    Job(Arc<Job<M>>),
}

struct Checkout {
    holder: Option<u64>,
    holder_name: Option<String>,
    site: &'static Location<'static>,
    since: Instant,
    leaked: bool,
}

#[derive(Default)]
struct Book {
    acquire_wait: Durations,
    hold_time: Durations,
    checkouts: u64,
    timeouts: u64,
    leaks: u64,
    current: HashMap<u64, Checkout>,
    /// Connections held now by each green thread holding any.
    held_by: HashMap<u64, u32>,
    /// Checkouts held now by plain OS threads (each counts as its own holder).
    held_anonymously: u32,
    /// The last minutes, in slices, for the advisor.
    slices: VecDeque<Slice>,
}

/// What the advisor keeps of [`SLICE`] of the pool's life.
struct Slice {
    start: Instant,
    checkouts: u64,
    returns: u64,
    held: Duration,
    peak_demand: u32,
    most_held_by_one: u32,
    peak_holders: u32,
}

/// The advisor's slices, and how many it keeps: five minutes.
const SLICE: Duration = Duration::from_secs(10);
const SLICES: usize = 30;

impl Book {
    /// The slice `now` falls in, starting a new one (and forgetting the oldest) as time
    /// passes; a closed slice takes the demand's peak with it.
    fn slice(&mut self, now: Instant, demand: &DemandGauge) -> &mut Slice {
        let fresh = self
            .slices
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.start) >= SLICE);
        if fresh {
            if let Some(last) = self.slices.back_mut() {
                last.peak_demand = last.peak_demand.max(demand.take_peak());
            }
            // The last five minutes, however sparse the traffic.
            let horizon = now.checked_sub(SLICE * SLICES as u32);
            while self.slices.len() >= SLICES
                || self
                    .slices
                    .front()
                    .zip(horizon)
                    .is_some_and(|(s, h)| s.start < h)
            {
                self.slices.pop_front();
            }
            self.slices.push_back(Slice {
                start: now,
                checkouts: 0,
                returns: 0,
                held: Duration::ZERO,
                peak_demand: 0,
                most_held_by_one: 0,
                peak_holders: 0,
            });
        }
        self.slices.back_mut().expect("a slice was just made")
    }

    /// The advice from the slices kept; `max_size` for the summary.
    fn advice(&self, now: Instant, demand: &DemandGauge, max_size: u32) -> SizeAdvice {
        let horizon = now.checked_sub(SLICE * SLICES as u32);
        let recent: Vec<&Slice> = self
            .slices
            .iter()
            .filter(|s| horizon.is_none_or(|h| s.start >= h))
            .collect();
        let Some(first) = recent.first() else {
            return SizeAdvice {
                summary: "no checkouts in the last five minutes".into(),
                ..SizeAdvice::default()
            };
        };
        let window = now
            .saturating_duration_since(first.start)
            .max(Duration::from_millis(1));
        let checkouts: u64 = recent.iter().map(|s| s.checkouts).sum();
        let returns: u64 = recent.iter().map(|s| s.returns).sum();
        let held: Duration = recent.iter().map(|s| s.held).sum();
        let last = recent.len() - 1;
        let peak_demand = recent
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i == last {
                    s.peak_demand.max(demand.peak())
                } else {
                    s.peak_demand
                }
            })
            .max()
            .unwrap_or(0);
        let cm = recent.iter().map(|s| s.most_held_by_one).max().unwrap_or(0);
        let tn = recent.iter().map(|s| s.peak_holders).max().unwrap_or(0);
        let rate = checkouts as f64 / window.as_secs_f64();
        let mean_hold = if returns == 0 {
            0.0
        } else {
            held.as_secs_f64() / returns as f64
        };
        let deadlock_safe_min = if cm <= 1 { 1 } else { tn * (cm - 1) + 1 };
        let suggested = peak_demand.max(deadlock_safe_min).max(1);
        let mut summary = format!(
            "over {:.0} s: {:.1} checkouts/s held {:.2} ms on average, {:.2} in use on \
             average, {} at most wanted at once",
            window.as_secs_f64(),
            rate,
            mean_hold * 1e3,
            rate * mean_hold,
            peak_demand
        );
        if max_size < deadlock_safe_min {
            summary.push_str(&format!(
                "; max_size {max_size} is below the deadlock-safe minimum {deadlock_safe_min} \
                 ({tn} threads held up to {cm} connections each)"
            ));
        } else if suggested > max_size {
            summary.push_str(&format!(
                "; callers waited: {suggested} connections would have served them"
            ));
        } else {
            summary.push_str(&format!("; {suggested} would have been enough"));
        }
        SizeAdvice {
            window_s: window.as_secs_f64(),
            checkouts_per_s: rate,
            mean_hold_ms: mean_hold * 1e3,
            mean_in_use: rate * mean_hold,
            peak_demand,
            most_held_by_one_thread: cm,
            peak_holders: tn,
            deadlock_safe_min,
            suggested_max_size: suggested,
            summary,
        }
    }
}

/// The longest pause between two connect attempts while the database cannot be reached.
const RECONNECT_CAP: Duration = Duration::from_secs(1);

/// How long a checkout waits on r2d2 at a time before it looks at the connect attempts.
const CHECKOUT_SLICE: Duration = Duration::from_millis(50);

/// The longest duration a setting takes: beyond it, deadlines would overflow `Instant`.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

pub(crate) struct Settings {
    /// The size [`Inner::resize`] may grow the pool to (`Builder::grow_to`).
    pub size_limit: u32,
    pub min_idle: u32,
    pub idle_timeout: Option<Duration>,
    pub keepalive: Option<Duration>,
    pub connection_timeout: Duration,
    pub validate_after: Option<Duration>,
    pub leak_threshold: Option<Duration>,
}

pub(crate) struct Inner<M: Backend> {
    pub name: String,
    reg: Registration,
    /// Itself, for a request that comes through the registry (`Inspect::resize`).
    me: Weak<Inner<M>>,
    /// `Some` until the pool is closed or dropped.
    r2d2: Mutex<Option<r2d2::Pool<Managed<M>>>>,
    pub manager: Arc<M>,
    pub tpool: greenhub_tpool::Pool,
    permits: Mutex<Permits<M>>,
    pub settings: Settings,
    book: Mutex<Book>,
    counters: Arc<Counters>,
    /// Callers holding or waiting for a connection, for the advisor.
    demand: Arc<DemandGauge>,
    next_checkout: AtomicU64,
}

/// Gives back a permit handed to a waiter that unwinds (killed) before it could take it.
struct GiveBackIfGranted<'a, M: Backend> {
    inner: &'a Arc<Inner<M>>,
    token: &'a Arc<Token>,
}

impl<M: Backend> Drop for GiveBackIfGranted<'_, M> {
    fn drop(&mut self) {
        if self.token.is_woken() {
            self.inner.release();
        }
    }
}

impl<M: Backend> Books<M> for Inner<M> {
    fn has_broken(&self, conn: &mut M::Connection) -> bool {
        self.manager.has_broken(conn)
    }

    fn over_size(&self) -> bool {
        let p = self.permits.lock();
        p.owed > 0 && !p.closed
    }

    fn canceller(&self, conn: &mut M::Connection) -> Option<crate::Canceller> {
        self.manager.canceller(conn)
    }

    fn checked_in(&self, id: u64) {
        Inner::checked_in(self, id);
    }

    fn book_checkout(
        self: Arc<Self>,
        holder: Option<(u64, Option<String>)>,
        site: &'static Location<'static>,
        asked_at: Instant,
    ) -> (u64, Option<greenhub::thread::Timer>) {
        Inner::book_checkout(&self, holder, site, asked_at)
    }

    fn tpool(&self) -> &greenhub_tpool::Pool {
        &self.tpool
    }

    fn release(self: Arc<Self>) {
        Inner::release(&self);
    }
}

impl<M: Backend> Inner<M> {
    fn id(&self) -> u64 {
        self.reg.id()
    }

    /// Waits while the pool is suspended (bounded by the enclosing scope only); `Closed`
    /// once it is closed.
    fn pass_gate(&self, asked_at: Instant) -> Result<(), Error> {
        loop {
            let waiter = {
                let mut p = self.permits.lock();
                if p.closed {
                    return Err(Error::Closed);
                }
                if !p.suspended {
                    return Ok(());
                }
                let on = WaitOn::Object {
                    object: *crate::POOL_KIND,
                    id: self.id(),
                };
                let waiter = Waiter::until(on, greenhub::timeout::deadline());
                if p.gate.len() >= MIN_SWEEP && p.gate.len().is_power_of_two() {
                    p.gate.retain(|t| t.is_waiting());
                }
                p.gate.push(waiter.token().clone());
                waiter
            };
            if waiter.wait().is_err() {
                self.gave_up(asked_at);
                return Err(Error::TimedOut);
            }
        }
    }

    /// Suspends or resumes new checkouts, or closes the pool for good: whoever waits at the
    /// gate when it opens is woken, and on closing so is every queued waiter (each learns
    /// the pool is closed).
    fn set_gate(self: &Arc<Self>, suspended: bool, close: bool) {
        let (woken, phantoms, jobs) = {
            let mut p = self.permits.lock();
            let mut phantoms = 0;
            let mut jobs = Vec::new();
            if close && !p.closed {
                p.closed = true;
                self.counters.closing.store(true, Ordering::Release);
                // Queued jobs are answered here; green waiters get a made-up permit each.
                let queue = std::mem::take(&mut p.queue);
                for entry in queue {
                    match entry {
                        Entry::Job(job) if job.claim() => jobs.push(job),
                        Entry::Job(_) => {}
                        green if green.live() => p.queue.push_back(green),
                        _ => {}
                    }
                }
                phantoms = p.queue.len() as u32;
                p.phantom += phantoms;
            }
            p.suspended = suspended && !p.closed;
            let woken = if p.suspended {
                Vec::new()
            } else {
                std::mem::take(&mut p.gate)
            };
            (woken, phantoms, jobs)
        };
        // Outside the lock: a job's closure may own a connection, whose return takes it.
        for job in jobs {
            deliver(job.run(Err(Error::Closed)));
        }
        for token in woken {
            token.wake();
        }
        for _ in 0..phantoms {
            self.release();
        }
    }

    /// Takes a permit, waiting in arrival order until `deadline` (or the enclosing scope's):
    /// `Err(TimedOut)` past it, `Err(Closed)` once the pool is closed.
    fn acquire(self: &Arc<Self>, deadline: Instant) -> Result<Permit<M>, Error> {
        let (waiter, token) = {
            let mut p = self.permits.lock();
            if p.closed {
                return Err(Error::Closed);
            }
            if p.free > 0 {
                p.free -= 1;
                return Ok(Permit(self.clone()));
            }
            let on = WaitOn::Object {
                object: *crate::POOL_KIND,
                id: self.id(),
            };
            let waiter = Waiter::until(on, Some(deadline));
            let token = waiter.token().clone();
            p.push(Entry::Green {
                token: token.clone(),
                since: Instant::now(),
                thread: greenhub::current().map(|c| c.id()),
            });
            (waiter, token)
        };
        let guard = GiveBackIfGranted {
            inner: self,
            token: &token,
        };
        let outcome = waiter.wait();
        std::mem::forget(guard);
        // A deadline that lost the race with the hand-off returns Ok: the permit is ours.
        outcome.map_err(|greenhub::TimedOut| Error::TimedOut)?;
        let permit = Permit(self.clone());
        if self.permits.lock().closed {
            // Dropping it hands it on: to the next waiter, who learns the same.
            return Err(Error::Closed);
        }
        Ok(permit)
    }

    /// Gives a permit back: to the first green thread or job still waiting, or to the free
    /// count. A job that takes it is started on a pool thread with it.
    fn release(self: &Arc<Self>) {
        if let Freed::Job(job) = self.hand_on() {
            self.start(Permit(self.clone()), job);
        }
    }

    fn hand_on(&self) -> Freed<M> {
        let mut p = self.permits.lock();
        // A closed pool hands every permit on: each wakes a waiter who learns of the close.
        if p.owed > 0 && !p.closed {
            p.owed -= 1;
            return Freed::Settled;
        }
        while let Some(entry) = p.queue.pop_front() {
            match entry {
                Entry::Green { token, .. } => {
                    if token.wake() {
                        return Freed::Settled;
                    }
                }
                Entry::Job(job) => {
                    if job.claim() {
                        return Freed::Job(job);
                    }
                }
            }
        }
        if p.phantom > 0 {
            p.phantom -= 1;
        } else {
            p.free += 1;
        }
        Freed::Settled
    }

    /// The next job, if one heads the queue: the runner keeps its connection for it. A green
    /// thread at the head (or nobody) means the connection goes back instead.
    fn next_job(&self) -> Option<Arc<Job<M>>> {
        let mut p = self.permits.lock();
        loop {
            match p.queue.front() {
                Some(entry) if !entry.live() => {
                    p.queue.pop_front();
                }
                Some(Entry::Job(job)) => {
                    let job = job.clone();
                    p.queue.pop_front();
                    if job.claim() {
                        return Some(job);
                    }
                }
                _ => return None,
            }
        }
    }

    /// Queues a job, or starts it at once if a permit is free; `Closed` once the pool is.
    fn enqueue(self: &Arc<Self>, job: &Arc<Job<M>>) -> Result<(), Error> {
        let mut p = self.permits.lock();
        if p.closed {
            drop(p);
            // Outside the lock: the closure dropped here may own a connection.
            job.cancel();
            return Err(Error::Closed);
        }
        if p.free > 0 && job.claim() {
            p.free -= 1;
            drop(p);
            self.start(Permit(self.clone()), job.clone());
        } else {
            p.push(Entry::Job(job.clone()));
        }
        Ok(())
    }

    /// Runs a claimed job, and the jobs queued behind it, on a pool thread.
    fn start(self: &Arc<Self>, permit: Permit<M>, job: Arc<Job<M>>) {
        let inner = self.clone();
        let answer = job.clone();
        // The queue has room (every queued call holds a permit). If the pool's threads are
        // gone, the closure is dropped (its permit goes on) and the caller hears why.
        if let Err(e) = self.tpool.spawn(move || inner.run_jobs(permit, job)) {
            deliver(answer.run(Err(e.into())));
        }
    }

    fn run_jobs(self: &Arc<Self>, permit: Permit<M>, first: Arc<Job<M>>) {
        let checkout = self.checkout_blocking(
            permit,
            first.deadline,
            first.site,
            first.holder.clone(),
            first.asked_at,
        );
        let mut lease = match checkout {
            Ok(lease) => lease,
            Err(e) => {
                if e.is_checkout_failure() {
                    self.gave_up(first.asked_at);
                }
                deliver(first.run(Err(e)));
                return;
            }
        };
        let mut job = first;
        let mut result = job.run(Ok(&mut lease));
        while lease.reusable() {
            let Some(next) = self.next_job() else {
                break;
            };
            lease.hand_over(next.holder.clone(), next.site, next.asked_at);
            deliver(result);
            job = next;
            result = job.run(Ok(&mut lease));
        }
        drop(lease);
        deliver(result);
    }

    /// Makes the pool `size` connections large, from 1 to the limit it was built with
    /// (`Builder::grow_to`). Growing hands the new permits to waiters at once. Shrinking takes free permits back at
    /// once and the others as they come back, each closing its connection, and closes idle
    /// connections beyond the size on a pool thread.
    fn resize(self: &Arc<Self>, size: u32) -> Result<(), Error> {
        let ceiling = self.settings.size_limit;
        if size == 0 || size > ceiling {
            return Err(Error::Config(format!(
                "pool {:?} resizes from 1 to the limit it was built with ({ceiling}), not to \
                 {size}: build it with Builder::grow_to to grow it further",
                self.name
            )));
        }
        let (grown, shrunk) = {
            let mut p = self.permits.lock();
            if p.closed {
                return Err(Error::Closed);
            }
            let before = p.size;
            p.size = size;
            if size >= before {
                let mut more = size - before;
                let cancelled = more.min(p.owed);
                p.owed -= cancelled;
                more -= cancelled;
                (more, false)
            } else {
                let fewer = before - size;
                let taken = fewer.min(p.free);
                p.free -= taken;
                p.owed += fewer - taken;
                (0, true)
            }
        };
        for _ in 0..grown {
            self.release();
        }
        if shrunk {
            let inner = self.clone();
            // Busy or gone threads: the periodic sweep closes them instead.
            let _ = self.tpool.spawn(move || inner.trim());
        }
        Ok(())
    }

    /// On a pool thread: closes idle connections while more are open than the pool's size.
    fn trim(&self) {
        let Some(r2d2) = self.r2d2() else {
            return;
        };
        while r2d2.state().connections > self.permits.lock().size {
            // Never opens a connection, and never waits.
            let Some(mut pooled) = r2d2.try_get() else {
                break;
            };
            pooled.close = Some(CloseReason::Resized);
            drop(pooled);
        }
    }

    pub(crate) fn state(&self) -> PoolState {
        let r = self.r2d2().map(|r| r.state());
        let (size, out, waiting) = {
            let p = self.permits.lock();
            (p.size, p.out(), p.waiting() as u32)
        };
        PoolState {
            max_size: size,
            size: r.as_ref().map_or(0, |r| r.connections),
            idle: r.as_ref().map_or(0, |r| r.idle_connections),
            in_use: out,
            waiting,
        }
    }

    /// On a pool thread, holding a permit: a connection from r2d2, tested if it sat idle.
    ///
    /// It asks r2d2 in short slices so that a pool with no connection open and a connect
    /// that failed since the checkout began fails now, with the server's reason (a wrong
    /// password, a refused port), instead of at its timeout: nothing could come back to it
    /// sooner than the next connect. While connections are open, a checkout waits for one.
    fn checkout_blocking(
        self: &Arc<Self>,
        permit: Permit<M>,
        deadline: Instant,
        site: &'static Location<'static>,
        holder: Option<(u64, Option<String>)>,
        asked_at: Instant,
    ) -> Result<Lease<M>, Error> {
        let began = Instant::now();
        let r2d2 = self.r2d2().ok_or(Error::Closed)?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.out_of_time());
            }
            if self.counters.closing.load(Ordering::Acquire) {
                return Err(Error::Closed);
            }
            let mut pooled = match r2d2.get_timeout(left.min(CHECKOUT_SLICE)) {
                Ok(pooled) => pooled,
                Err(_) if left > CHECKOUT_SLICE => {
                    if let Some(reason) = self.refused_since(began) {
                        return Err(Error::Connect { reason });
                    }
                    continue;
                }
                // r2d2 says only that it timed out; why is in the last connect error.
                Err(_) => return Err(self.out_of_time()),
            };
            let now = Instant::now();
            if let Some(reason) = pooled.retired(now) {
                pooled.close = Some(reason);
                continue;
            }
            let idle_for =
                now.saturating_duration_since(pooled.last_checkin.max(pooled.last_probe));
            if self.settings.validate_after.is_some_and(|v| idle_for >= v)
                && self.manager.is_valid(&mut pooled.conn).is_err()
            {
                pooled.close = Some(CloseReason::Invalid);
                continue;
            }
            let (id, leak_timer) = self.book_checkout(holder, site, asked_at);
            return Ok(Lease::new(pooled, permit, id, leak_timer));
        }
    }

    /// Books a checkout out: its record, and its leak timer when a threshold is set.
    pub(crate) fn book_checkout(
        self: &Arc<Self>,
        holder: Option<(u64, Option<String>)>,
        site: &'static Location<'static>,
        asked_at: Instant,
    ) -> (u64, Option<greenhub::thread::Timer>) {
        let now = Instant::now();
        let id = self.next_checkout.fetch_add(1, Ordering::Relaxed);
        let (holder, holder_name) = holder.map_or((None, None), |(id, n)| (Some(id), n));
        {
            let mut book = self.book.lock();
            book.checkouts += 1;
            book.acquire_wait
                .record(now.saturating_duration_since(asked_at));
            let by_one = match holder {
                Some(h) => {
                    let n = book.held_by.entry(h).or_insert(0);
                    *n += 1;
                    *n
                }
                None => {
                    book.held_anonymously += 1;
                    1
                }
            };
            let holders = book.held_by.len() as u32 + book.held_anonymously;
            let slice = book.slice(now, &self.demand);
            slice.checkouts += 1;
            slice.most_held_by_one = slice.most_held_by_one.max(by_one);
            slice.peak_holders = slice.peak_holders.max(holders);
            book.current.insert(
                id,
                Checkout {
                    holder,
                    holder_name,
                    site,
                    since: now,
                    leaked: false,
                },
            );
        }
        self.counters.events.checked_out(&events::CheckedOut {
            checkout: id,
            waited: now.saturating_duration_since(asked_at),
        });
        let leak_timer = self.settings.leak_threshold.map(|threshold| {
            let weak = Arc::downgrade(self);
            greenhub::call_after(threshold, move || {
                if let Some(inner) = weak.upgrade() {
                    inner.report_leak(id, threshold);
                }
            })
        });
        (id, leak_timer)
    }

    /// The last connect error, when the pool has no connection open and a connect attempt
    /// has failed since `since`.
    fn refused_since(&self, since: Instant) -> Option<String> {
        if self.r2d2().is_some_and(|r| r.state().connections > 0) {
            return None;
        }
        // A success clears `failing_since` before it sets `last_attempt`.
        let last = (*self.counters.last_attempt.lock())?;
        self.counters.failing_since.lock().as_ref()?;
        if last < since {
            return None;
        }
        self.counters.last_connect_error.lock().clone()
    }

    /// The deadline passed before a connection could be had: the server's refusal when a
    /// connect failed, otherwise a plain timeout (the connect was still under way).
    fn out_of_time(&self) -> Error {
        match self.counters.last_connect_error.lock().clone() {
            Some(reason) => Error::Connect { reason },
            None => Error::TimedOut,
        }
    }

    /// How often idle connections are looked at: often enough for the keepalive and idle
    /// timeouts, at least twice a minute, at most every 10 ms.
    fn sweep_period(&self) -> Duration {
        let s = &self.settings;
        [s.keepalive, s.idle_timeout]
            .into_iter()
            .flatten()
            .map(|d| d / 4)
            .fold(Duration::from_secs(30), Duration::min)
            .max(Duration::from_millis(10))
    }

    /// Runs [`Inner::sweep_idle`] on a pool thread after the sweep period, and again after
    /// each, for as long as the pool lives and is open.
    fn schedule_sweep(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        greenhub::call_after(self.sweep_period(), move || {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            if inner.counters.closing.load(Ordering::Acquire) {
                return;
            }
            let tpool = inner.tpool.clone();
            // Full queue or no threads: the next period tries again.
            let again = inner.clone();
            if tpool.spawn(move || inner.sweep_idle()).is_err() {
                again.schedule_sweep();
            }
        });
    }

    /// On a pool thread: the idle connections are taken out of r2d2 (with free permits, and
    /// only while nobody waits) and looked at, oldest first: one evicted or past its lifetime
    /// is closed, so is one idle past `idle_timeout` while more than `min_idle` are open; the
    /// rest go back at once, but for those idle past `keepalive`, which are tested one at a
    /// time (closed if they fail), each holding one permit meanwhile. Then the next sweep is
    /// scheduled.
    fn sweep_idle(self: &Arc<Self>) {
        self.sweep_once();
        self.schedule_sweep();
    }

    fn sweep_once(self: &Arc<Self>) {
        let Some(r2d2) = self.r2d2() else {
            return;
        };
        let taken = {
            let mut p = self.permits.lock();
            if p.closed || p.queue.iter().any(Entry::live) {
                return;
            }
            let n = p.free.min(r2d2.state().idle_connections);
            p.free -= n;
            n
        };
        // Created outside the lock: each gives its permit back when dropped.
        let mut permits: Vec<Permit<M>> = (0..taken).map(|_| Permit(self.clone())).collect();
        let mut idle = Vec::new();
        for _ in 0..taken {
            // Never opens a connection, and never waits.
            match r2d2.try_get() {
                Some(pooled) => idle.push(pooled),
                None => break,
            }
        }
        let now = Instant::now();
        let s = &self.settings;
        let size = self.permits.lock().size;
        let mut open = r2d2.state().connections;
        // Oldest first (r2d2 hands out the most recently returned first): closed at once,
        // kept, or due for a keepalive test.
        let (mut back, mut due) = (Vec::new(), Vec::new());
        for mut pooled in idle.into_iter().rev() {
            let idle_for = now.saturating_duration_since(pooled.last_checkin);
            let tested = pooled.last_checkin.max(pooled.last_probe);
            if let Some(reason) = pooled.retired(now) {
                pooled.close = Some(reason);
            } else if open > size {
                pooled.close = Some(CloseReason::Resized);
            } else if s.idle_timeout.is_some_and(|t| idle_for >= t) && open > s.min_idle {
                pooled.close = Some(CloseReason::Idle);
            } else if s
                .keepalive
                .is_some_and(|k| now.saturating_duration_since(tested) >= k)
            {
                due.push(pooled);
                continue;
            }
            if pooled.close.is_some() {
                open = open.saturating_sub(1);
            }
            back.push(pooled);
        }
        // Back (oldest first, so that r2d2's stack keeps its order) with their permits, so
        // that a test that stalls (a silently dropped flow) holds one connection only.
        drop(back);
        permits.truncate(due.len());
        for mut pooled in due {
            pooled.last_probe = Instant::now();
            if self.manager.is_valid(&mut pooled.conn).is_err() {
                pooled.close = Some(CloseReason::Invalid);
            }
            drop(pooled);
            drop(permits.pop());
        }
        // Closed ones below `min_idle` are replaced here, not by the next caller.
        let _ = self.fill(None);
    }

    /// Connect attempts that have ended, either way.
    fn connect_attempts(&self) -> u64 {
        self.counters.created.load(Ordering::Acquire)
            + self.counters.connect_failures.load(Ordering::Acquire)
    }

    /// On a pool thread: opens connections until `min_idle` are open, with permits nobody
    /// waits for (callers that wait open connections themselves). Without a deadline it
    /// tries once per missing connection (the sweep); with one it fails at the deadline, or
    /// at once when a connect is refused while none is open (building the pool).
    fn fill(self: &Arc<Self>, deadline: Option<Instant>) -> Result<(), String> {
        let Some(r2d2) = self.r2d2() else {
            return Ok(());
        };
        let min_idle = self.settings.min_idle;
        let began = Instant::now();
        // Held until the end, so that each `get` opens a connection instead of handing back
        // one just taken.
        let mut held = Vec::new();
        let outcome = loop {
            if r2d2.state().connections >= min_idle || held.len() as u32 >= min_idle {
                break Ok(());
            }
            {
                let mut p = self.permits.lock();
                if p.closed || p.free == 0 || p.queue.iter().any(Entry::live) {
                    break Ok(());
                }
                p.free -= 1;
            }
            let permit = Permit(self.clone());
            let slice = deadline.map_or(CHECKOUT_SLICE, |d| {
                d.saturating_duration_since(Instant::now())
                    .min(CHECKOUT_SLICE)
            });
            let attempts = self.connect_attempts();
            match r2d2.get_timeout(slice) {
                Ok(pooled) => held.push((pooled, permit)),
                Err(_) => {
                    drop(permit);
                    // The connect that `get` started goes on: wait for it to end rather than
                    // start another with the next `get`.
                    while self.connect_attempts() == attempts
                        && deadline.is_some_and(|d| Instant::now() < d)
                    {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    if let Some(reason) = self.refused_since(began) {
                        break Err(reason);
                    }
                    match deadline {
                        None => break Ok(()),
                        Some(d) if Instant::now() >= d => {
                            break Err(self
                                .counters
                                .last_connect_error
                                .lock()
                                .clone()
                                .unwrap_or_else(|| {
                                    format!(
                                        "{} of {min_idle} connections opened within {} ms",
                                        r2d2.state().connections,
                                        self.settings.connection_timeout.as_millis()
                                    )
                                }));
                        }
                        Some(_) => {}
                    }
                }
            }
        };
        // Back in reverse, so that r2d2's stack keeps its order; each permit after its
        // connection.
        while let Some((pooled, permit)) = held.pop() {
            drop(pooled);
            drop(permit);
        }
        outcome
    }

    /// A caller that asked at `asked_at` gave up waiting for a connection.
    fn gave_up(&self, asked_at: Instant) {
        self.book.lock().timeouts += 1;
        self.counters
            .events
            .checkout_timed_out(&events::CheckoutTimedOut {
                waited: asked_at.elapsed(),
                state: self.state(),
            });
    }

    fn report_leak(&self, id: u64, threshold: Duration) {
        let mut book = self.book.lock();
        let Some(c) = book.current.get_mut(&id) else {
            return;
        };
        c.leaked = true;
        let line = format!(
            "greenhub-dbpool: pool {:?}: connection held for more than {} ms (leak threshold) by \
             green thread {} {:?}, checked out at {}",
            self.name,
            threshold.as_millis(),
            c.holder.map_or("-".to_string(), |h| format!("#{h}")),
            c.holder_name.as_deref().unwrap_or(""),
            c.site
        );
        let event = events::LeakSuspected {
            checkout: id,
            holder: c.holder,
            holder_name: c.holder_name.clone(),
            site: c.site.to_string(),
            held: c.since.elapsed(),
        };
        book.leaks += 1;
        drop(book);
        greenhub::ext::warn(&line);
        self.counters.events.leak_suspected(&event);
    }

    /// Books a connection back in (the connection itself has gone back to r2d2).
    pub(crate) fn checked_in(&self, id: u64) {
        let mut book = self.book.lock();
        if let Some(c) = book.current.remove(&id) {
            let now = Instant::now();
            let held = now.saturating_duration_since(c.since);
            book.hold_time.record(held);
            match c.holder {
                Some(h) => {
                    if let Some(n) = book.held_by.get_mut(&h) {
                        *n -= 1;
                        if *n == 0 {
                            book.held_by.remove(&h);
                        }
                    }
                }
                None => book.held_anonymously = book.held_anonymously.saturating_sub(1),
            }
            let slice = book.slice(now, &self.demand);
            slice.returns += 1;
            slice.held += held;
            drop(book);
            self.counters
                .events
                .checked_in(&events::CheckedIn { checkout: id, held });
            if c.leaked {
                greenhub::ext::warn(&format!(
                    "greenhub-dbpool: pool {:?}: the connection reported as leaked (checked out \
                     at {}) came back after {} ms",
                    self.name,
                    c.site,
                    held.as_millis()
                ));
            }
        }
    }

    fn stats(&self) -> DbPoolStats {
        let now = Instant::now();
        let state = self.state();
        let oldest_wait_us = self
            .permits
            .lock()
            .queue
            .iter()
            .find(|e| e.live())
            .map_or(0, |e| {
                now.saturating_duration_since(e.since()).as_micros() as u64
            });
        let c = &self.counters;
        let book = self.book.lock();
        let mut current: Vec<CheckoutInfo> = book
            .current
            .iter()
            .map(|(id, c)| CheckoutInfo {
                id: *id,
                holder: c.holder,
                holder_name: c.holder_name.clone(),
                site: c.site.to_string(),
                held_for_us: now.saturating_duration_since(c.since).as_micros() as u64,
                leaked: c.leaked,
            })
            .collect();
        current.sort_by_key(|c| std::cmp::Reverse(c.held_for_us));
        DbPoolStats {
            name: self.name.clone(),
            state,
            oldest_wait_us,
            checkouts: book.checkouts,
            timeouts: book.timeouts,
            created: c.created.load(Ordering::Relaxed),
            connect_failures: c.connect_failures.load(Ordering::Relaxed),
            last_connect_error: c.last_connect_error.lock().clone(),
            closed: Closed {
                broken: c.broken.load(Ordering::Relaxed),
                lifetime: c.lifetime.load(Ordering::Relaxed),
                invalid: c.invalid.load(Ordering::Relaxed),
                idle: c.idle.load(Ordering::Relaxed),
                cancelled: c.cancelled.load(Ordering::Relaxed),
                evicted: c.evicted.load(Ordering::Relaxed),
                pool_closed: c.pool_closed.load(Ordering::Relaxed),
                resized: c.resized.load(Ordering::Relaxed),
            },
            leaks: book.leaks,
            cancels: c.cancels.load(Ordering::Relaxed),
            acquire_wait: book.acquire_wait.summary(),
            hold_time: book.hold_time.summary(),
            advice: book.advice(now, &self.demand, state.max_size),
            current,
        }
    }
}

impl<M: Backend> Inspect for Inner<M> {
    fn inspect(&self) -> ObjectInfo {
        let stats = self.stats();
        let s = stats.state;
        let mut info = ObjectInfo::new(
            *crate::POOL_KIND,
            self.id(),
            Some(&self.name),
            s.waiting as usize,
        )
        .count("max_size", u64::from(s.max_size))
        .count("size", u64::from(s.size))
        .count("idle", u64::from(s.idle))
        .count("in_use", u64::from(s.in_use))
        .count("suggested_size", u64::from(stats.advice.suggested_max_size))
        .total("timeouts", stats.timeouts)
        .total("leaks", stats.leaks)
        .total("cancels", stats.cancels);
        if let Ok(detail) = serde_json::to_value(&stats) {
            info = info.with_detail(detail);
        }
        info
    }

    fn held_by(&self) -> Vec<u64> {
        let mut held: Vec<u64> = self.book.lock().held_by.keys().copied().collect();
        held.sort_unstable();
        held
    }

    /// The callers waiting for a permit: those waiting in `get` and those whose call is
    /// queued. A caller whose call runs waits on the pool for its result, not for a unit.
    fn unit_waiters(&self) -> Option<Vec<u64>> {
        let p = self.permits.lock();
        let mut ids: Vec<u64> = p
            .queue
            .iter()
            .filter(|e| e.live())
            .filter_map(|e| match e {
                Entry::Green { thread, .. } => *thread,
                Entry::Job(job) => job.holder.as_ref().map(|(id, _)| *id),
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Some(ids)
    }

    fn resize(&self, size: usize) -> Result<(), String> {
        let Some(me) = self.me.upgrade() else {
            return Err("the pool is being dropped".into());
        };
        let size = u32::try_from(size).map_err(|_| format!("{size} connections is too many"))?;
        Inner::resize(&me, size).map_err(|e| e.to_string())
    }

    /// The green threads holding connections, when they hold every permit (none free, none
    /// held by a plain OS thread or by a checkout still connecting).
    fn holders(&self) -> Vec<u64> {
        let size = {
            let p = self.permits.lock();
            if p.free > 0 {
                return Vec::new();
            }
            p.size
        };
        let book = self.book.lock();
        let held: u32 = book.held_by.values().sum();
        if book.held_anonymously > 0 || held < size {
            return Vec::new();
        }
        let mut holders: Vec<u64> = book.held_by.keys().copied().collect();
        holders.sort_unstable();
        holders
    }
}

/// A pool of database connections for green threads. Cheap to clone (a handle).
///
/// ```
/// use greenhub_dbpool::{Pool, SqliteConnectionManager};
///
/// let pool = Pool::builder().name("cache").max_size(2).build(SqliteConnectionManager::memory())?;
/// let t = greenhub::spawn(move || -> Result<i64, greenhub_dbpool::Error> {
///     let mut conn = pool.get()?;
///     conn.run(|c| c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);"))?
///         .map_err(|e| greenhub_dbpool::Error::Database(e.into()))?;
///     let n = conn.run(|c| c.query_row("SELECT count(*) FROM t", [], |r| r.get(0)))?;
///     n.map_err(|e| greenhub_dbpool::Error::Database(e.into()))
/// });
/// assert_eq!(t.wait().unwrap()?, 2);
/// # Ok::<(), greenhub_dbpool::Error>(())
/// ```
pub struct Pool<M: Backend> {
    pub(crate) inner: Arc<Inner<M>>,
}

impl<M: Backend> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<M: Backend> std::fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.inner.name)
            .field("id", &self.inner.id())
            .field("state", &self.inner.state())
            .finish()
    }
}

/// Configures a [`Pool`]. The defaults follow r2d2 and HikariCP.
pub struct Builder<M> {
    manager: PhantomData<fn() -> M>,
    name: String,
    max_size: u32,
    grow_to: Option<u32>,
    min_idle: u32,
    connection_timeout: Duration,
    idle_timeout: Option<Duration>,
    max_lifetime: Option<Duration>,
    validate_after: Option<Duration>,
    leak_threshold: Option<Duration>,
    keepalive: Option<Duration>,
    options: StatementOptions,
    events: Arc<dyn HandleEvent>,
}

impl<M> Clone for Builder<M> {
    fn clone(&self) -> Self {
        Builder {
            name: self.name.clone(),
            events: self.events.clone(),
            ..*self
        }
    }
}

impl<M> std::fmt::Debug for Builder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("name", &self.name)
            .field("max_size", &self.max_size)
            .field("grow_to", &self.grow_to)
            .field("min_idle", &self.min_idle)
            .field("connection_timeout", &self.connection_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_lifetime", &self.max_lifetime)
            .field("validate_after", &self.validate_after)
            .field("leak_threshold", &self.leak_threshold)
            .field("keepalive", &self.keepalive)
            .field("statements", &self.options.statements)
            .field("deadline_statement_timeout", &self.options.deadline_timeout)
            .finish()
    }
}

impl<M: Backend> Builder<M> {
    /// The pool's name, in the snapshot and in its threads' names (default `db`).
    pub fn name(mut self, name: impl Into<String>) -> Builder<M> {
        self.name = name.into();
        self
    }

    /// The most connections open at once (default 10).
    pub fn max_size(mut self, max_size: u32) -> Builder<M> {
        self.max_size = max_size;
        self
    }

    /// The most connections [`Pool::resize`] may grow the pool to at run time (default: its
    /// `max_size`). The pool's threads and its connection manager are sized for it; nothing
    /// more is opened until a resize asks for it.
    ///
    /// ```
    /// use greenhub_dbpool::{Pool, SqliteConnectionManager};
    ///
    /// let pool = Pool::builder()
    ///     .max_size(2)
    ///     .grow_to(8)
    ///     .build(SqliteConnectionManager::memory())
    ///     .unwrap();
    /// pool.resize(8).unwrap();
    /// assert_eq!(pool.state().max_size, 8);
    /// assert!(pool.resize(9).is_err());
    /// ```
    pub fn grow_to(mut self, limit: u32) -> Builder<M> {
        self.grow_to = Some(limit);
        self
    }

    /// The fewest connections kept open, idle or not (default 0): building the pool opens
    /// them, and the pool's sweep replaces those that close.
    pub fn min_idle(mut self, min_idle: u32) -> Builder<M> {
        self.min_idle = min_idle;
        self
    }

    /// How long a checkout waits for a connection, and building for `min_idle` connections
    /// (default 30 s).
    pub fn connection_timeout(mut self, timeout: Duration) -> Builder<M> {
        self.connection_timeout = timeout;
        self
    }

    /// Idle connections beyond `min_idle` are closed after this long (default 10 min; `None`:
    /// never).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Builder<M> {
        self.idle_timeout = timeout;
        self
    }

    /// The longest a connection lives, less a random jitter of up to a tenth (default 30 min;
    /// `None`: for ever).
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Builder<M> {
        self.max_lifetime = lifetime;
        self
    }

    /// A connection that sat idle this long is tested before it is handed out (default
    /// 500 ms, as HikariCP; `Some(Duration::ZERO)`: always; `None`: never).
    pub fn validate_after(mut self, idle: Option<Duration>) -> Builder<M> {
        self.validate_after = idle;
        self
    }

    /// A connection held longer than this is reported as a leak (default: off).
    pub fn leak_threshold(mut self, threshold: Option<Duration>) -> Builder<M> {
        self.leak_threshold = threshold;
        self
    }

    /// An idle connection is tested (one round trip) once it has sat idle this long, as
    /// HikariCP's `keepaliveTime`: a firewall or NAT that drops idle flows keeps it, and one
    /// that died meanwhile is closed before a caller meets it (default 2 min; `None`: never).
    /// A firewall that drops packets silently stalls the test until TCP gives up: set the
    /// driver's `tcp_user_timeout` (PostgreSQL) to bound it.
    pub fn keepalive(mut self, idle: Option<Duration>) -> Builder<M> {
        self.keepalive = idle;
        self
    }

    /// The hook told of the pool's events: connections opened and closed, checkouts,
    /// returns, timeouts, suspected leaks (default: none).
    pub fn events(mut self, handler: impl HandleEvent) -> Builder<M> {
        self.events = Arc::new(handler);
        self
    }

    /// Builds the pool, opening `min_idle` connections first. From a green thread it waits
    /// cooperatively (the connects run on the pool's threads).
    pub fn build(self, manager: M) -> Result<Pool<M>, Error> {
        if self.max_size == 0 {
            return Err(Error::Config("max_size must be at least 1".into()));
        }
        let limit = self.grow_to.unwrap_or(self.max_size);
        if limit < self.max_size {
            return Err(Error::Config(format!(
                "grow_to {limit} is less than max_size {}: the pool could not be as large as \
                 it starts",
                self.max_size
            )));
        }
        if self.min_idle > self.max_size {
            return Err(Error::Config(format!(
                "min_idle {} is more than max_size {}",
                self.min_idle, self.max_size
            )));
        }
        let positive = [
            ("connection_timeout", Some(self.connection_timeout)),
            ("idle_timeout", self.idle_timeout),
            ("max_lifetime", self.max_lifetime),
            ("leak_threshold", self.leak_threshold),
            ("keepalive", self.keepalive),
        ];
        for (what, value) in positive {
            if value.is_some_and(|v| v.is_zero()) {
                return Err(Error::Config(format!("{what} must be more than zero")));
            }
            if value.is_some_and(|v| v > MAX_DURATION) {
                return Err(Error::Config(format!(
                    "{what} must be at most a year (use None for no limit where allowed)"
                )));
            }
        }
        if self.options.deadline_timeout && self.options.statements == Statements::Unnamed {
            return Err(Error::Config(
                "deadline_statement_timeout sets a session parameter, which a pooler in \
                 transaction mode (Statements::Unnamed) would hand to other clients: use one \
                 or the other"
                    .into(),
            ));
        }
        if self.name.contains('\0') {
            return Err(Error::Config(
                "the pool name must not contain a NUL byte".into(),
            ));
        }
        let max = limit as usize;
        // Every call the pool queues holds a permit, so the queue never fills: a return from
        // a killed green thread can always be queued without waiting.
        let tpool = greenhub_tpool::Pool::builder()
            .name(format!("dbpool-{}", self.name))
            .threads(max + 1)
            .queue_capacity(4 * max + 16)
            .build()?;
        let manager = Arc::new(manager);
        let counters = Arc::new(Counters::new(self.events.clone()));
        let managed = Managed::new(
            manager.clone(),
            counters.clone(),
            self.max_lifetime,
            self.options,
            self.name.clone(),
        );
        let r2d2 = r2d2::Pool::builder()
            // The pool's permits bound what is open; r2d2 allows what a resize may reach.
            .max_size(limit)
            // The pool keeps `min_idle` connections open itself (`fill`): r2d2 would open
            // more each time its idle ones are taken out, by checkouts and by the sweep.
            .min_idle(Some(0))
            // r2d2 retries a failed connect after a delay that doubles up to half this:
            // capped so that the pool reconnects within a second of the server's return. The
            // pool's own `connection_timeout` bounds checkouts (`checkout_blocking`).
            .connection_timeout(self.connection_timeout.min(RECONNECT_CAP * 2))
            // Idle connections are closed by the pool's own sweep (`sweep_idle`): its
            // keepalive tests would make r2d2 count them as just used.
            .idle_timeout(None)
            .max_lifetime(self.max_lifetime)
            .test_on_check_out(false)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(managed);
        let settings = Settings {
            size_limit: limit,
            min_idle: self.min_idle,
            idle_timeout: self.idle_timeout,
            keepalive: self.keepalive,
            connection_timeout: self.connection_timeout,
            validate_after: self.validate_after,
            leak_threshold: self.leak_threshold,
        };
        let inner = Arc::new_cyclic(|weak: &Weak<Inner<M>>| Inner {
            name: self.name,
            reg: Registration::new(weak.clone()),
            me: weak.clone(),
            r2d2: Mutex::new(Some(r2d2)),
            manager,
            tpool,
            permits: Mutex::new(Permits {
                size: self.max_size,
                owed: 0,
                free: self.max_size,
                queue: VecDeque::new(),
                sweep_at: MIN_SWEEP,
                suspended: false,
                closed: false,
                phantom: 0,
                gate: Vec::new(),
            }),
            settings,
            book: Mutex::new(Book::default()),
            counters,
            demand: Arc::default(),
            next_checkout: AtomicU64::new(1),
        });
        // The whole `connection_timeout` for `min_idle` connections, failing at once when a
        // connect is refused with none open.
        let deadline = Instant::now() + self.connection_timeout;
        let filler = inner.clone();
        match inner.tpool.execute(move || filler.fill(Some(deadline))) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(Error::Connect { reason }),
            Err(e) => return Err(e.into()),
        }
        inner.schedule_sweep();
        Ok(Pool { inner })
    }
}

/// Settings for the PostgreSQL helpers ([`Pool::query`], [`Conn::execute`](crate::Conn::execute),
/// [`Pool::transaction`], ...).
impl Builder<crate::PgManager> {
    /// How the helpers send statements (default [`Statements::Prepared`]; behind pgbouncer
    /// or another pooler in transaction mode, [`Statements::Unnamed`]).
    pub fn statements(mut self, statements: Statements) -> Self {
        self.options.statements = statements;
        self
    }

    /// Bounds each helper statement on the server by the caller's deadline scope: the
    /// server's `statement_timeout` is set to what is left of it (one round trip, skipped
    /// while the value already set is within twice what is left; reset to the session's
    /// default for a caller without a deadline). The server then stops the statement itself
    /// even if a cancel request cannot reach it; the caller gets [`Error::TimedOut`]. Default
    /// off: the caller's deadline already cancels its statement (see [`Canceller`](crate::Canceller)).
    /// Not with [`Statements::Unnamed`]: a session setting would reach other clients.
    pub fn deadline_statement_timeout(mut self, on: bool) -> Self {
        self.options.deadline_timeout = on;
        self
    }
}

impl<M: Backend> Pool<M> {
    /// A builder with the defaults; the manager given to [`Builder::build`] picks the driver.
    pub fn builder() -> Builder<M> {
        Builder {
            manager: PhantomData,
            name: "db".into(),
            max_size: 10,
            grow_to: None,
            min_idle: 0,
            connection_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            max_lifetime: Some(Duration::from_secs(1800)),
            validate_after: Some(Duration::from_millis(500)),
            leak_threshold: None,
            keepalive: Some(Duration::from_secs(120)),
            options: StatementOptions::default(),
            events: Arc::new(NoEvents),
        }
    }
}

impl<M: Backend> Pool<M> {
    /// The pool's id in the snapshot (its waiters show `waiting on db pool #id`).
    pub fn id(&self) -> u64 {
        self.inner.id()
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sizes now: open, idle, in use, waiting.
    pub fn state(&self) -> PoolState {
        self.inner.state()
    }

    /// State, counters, histograms and the current checkouts.
    pub fn stats(&self) -> DbPoolStats {
        self.inner.stats()
    }

    /// Holds new checkouts (and calls) at the door until [`Pool::resume`], for a planned
    /// failover: they wait, bounded only by their own deadline scopes (the pool's
    /// `connection_timeout` counts from the resume), and nothing fails. Checkouts already
    /// waiting for a connection, and connections checked out, carry on.
    ///
    /// ```
    /// use greenhub_dbpool::{Pool, SqliteConnectionManager};
    ///
    /// let pool = Pool::builder().build(SqliteConnectionManager::memory()).unwrap();
    /// pool.suspend();
    /// let caller = { let pool = pool.clone(); greenhub::spawn(move || pool.run(|_| 7)) };
    /// greenhub::sleep(std::time::Duration::from_millis(20)).unwrap();
    /// assert!(!caller.is_done()); // waiting at the door
    /// pool.evict(); // the connections opened so far will not serve again
    /// pool.resume();
    /// assert_eq!(caller.wait().unwrap().unwrap(), 7);
    /// ```
    pub fn suspend(&self) {
        self.inner.set_gate(true, false);
    }

    /// Lets the checkouts held by [`Pool::suspend`] through.
    pub fn resume(&self) {
        self.inner.set_gate(false, false);
    }

    /// Whether new checkouts wait for [`Pool::resume`].
    pub fn is_suspended(&self) -> bool {
        self.inner.permits.lock().suspended
    }

    /// Makes the pool `size` connections large, from 1 to the limit it was built with
    /// ([`Builder::grow_to`], by default its `max_size`; an error otherwise, and nothing
    /// changes). Growing serves waiting callers at once.
    /// Shrinking takes effect as connections are free: idle ones beyond the size are closed
    /// at once (on a pool thread), checked-out ones when they come back, and no checkout
    /// starts while as many as the new size are out. `min_idle` applies up to the size.
    /// Closes for this reason count as `resized` in [`Pool::stats`]. `inspector resize <pid>
    /// <pool id> <size>` does the same from outside.
    ///
    /// ```
    /// use greenhub_dbpool::{Pool, SqliteConnectionManager};
    ///
    /// let pool = Pool::builder().max_size(8).build(SqliteConnectionManager::memory()).unwrap();
    /// pool.resize(2).unwrap();
    /// assert_eq!(pool.state().max_size, 2);
    /// assert!(pool.resize(9).is_err()); // beyond the limit it was built with (here max_size)
    /// pool.resize(8).unwrap();
    /// ```
    pub fn resize(&self, size: u32) -> Result<(), Error> {
        self.inner.resize(size)
    }

    /// Closes every connection opened until now as soon as it is not in use: the idle ones
    /// at once (on a pool thread), the checked-out ones when they come back. New connections
    /// are opened as needed: after a failover, they reach the new server.
    pub fn evict(&self) {
        self.inner
            .counters
            .generation
            .fetch_add(1, Ordering::AcqRel);
        let inner = self.inner.clone();
        // If the pool's threads are busy or gone, the periodic sweep or the next checkout
        // of each idle connection closes it.
        let _ = self.inner.tpool.spawn(move || inner.sweep_once());
    }

    /// Closes the pool: new checkouts and calls, and those waiting, fail with
    /// [`Error::Closed`]; idle connections are closed at once; the caller then waits (up to
    /// `grace`, cooperatively on a green thread) for the checked-out connections to come
    /// back, each closed as it does. What is still out after `grace` is closed when it comes
    /// back. Closing again does nothing more.
    ///
    /// ```
    /// use greenhub_dbpool::{Error, Pool, SqliteConnectionManager};
    /// use std::time::Duration;
    ///
    /// let pool = Pool::builder().build(SqliteConnectionManager::memory()).unwrap();
    /// let conn = pool.get().unwrap();
    /// let returner = greenhub::spawn(move || {
    ///     greenhub::sleep(Duration::from_millis(20)).unwrap();
    ///     drop(conn);
    /// });
    /// let report = pool.close(Duration::from_secs(10));
    /// assert_eq!(report.still_out, 0);
    /// assert!(matches!(pool.get(), Err(Error::Closed)));
    /// # returner.wait().unwrap();
    /// ```
    pub fn close(&self, grace: Duration) -> crate::CloseReport {
        let began = Instant::now();
        let inner = &self.inner;
        inner.set_gate(false, true);
        // Taken out first: the lock is not held while the connections close.
        let taken = inner.r2d2.lock().take();
        if let Some(r2d2) = taken {
            // Closing idle connections talks to the server: on a pool thread.
            let drain = move || {
                while let Some(mut pooled) = r2d2.try_get() {
                    pooled.close = Some(CloseReason::PoolClosed);
                }
            };
            if inner.tpool.execute(drain).is_err() {
                greenhub::ext::warn(&format!(
                    "greenhub-dbpool: pool {:?}: its threads are gone; its idle connections \
                     close when the pool is dropped",
                    inner.name
                ));
            }
        }
        // `Duration::MAX`: as long as it takes.
        let deadline = began.checked_add(grace);
        let out = || inner.permits.lock().out();
        while out() > 0 && deadline.is_none_or(|d| Instant::now() < d) {
            let nap = deadline.map_or(Duration::from_millis(5), |d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(5))
            });
            if greenhub::sleep(nap).is_err() {
                break; // the caller's own deadline
            }
        }
        crate::CloseReport {
            still_out: out(),
            waited: began.elapsed(),
        }
    }

    /// Checks a connection out, waiting cooperatively (first come, first served) up to the
    /// pool's `connection_timeout` and the enclosing deadline scope.
    #[track_caller]
    pub fn get(&self) -> Result<Conn<M>, Error> {
        self.checkout_then(|lease, _| Conn::new(lease))
    }

    /// Checks a connection out, runs `f` with it on a pool thread, and returns it there: one
    /// round trip to a pool thread for the checkout, any number of statements and the return.
    ///
    /// As with [`Conn::run`], a caller that stops waiting (deadline, kill) has the running
    /// statement cancelled and leaves `f` to run to its end; the connection is then rolled
    /// back if needed and returned. A call that has not started when its caller leaves never
    /// runs.
    #[track_caller]
    pub fn run<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut M::Connection) -> R + Send + 'static,
    {
        self.call(move |t, _| crate::conn::run_raw::<M, R>(t, f))
    }

    /// [`Pool::run`] for a closure that returns a `Result` whose error converts into the pool's
    /// [`Error`](enum@crate::Error) (SQLite's and PostgreSQL's do): one `?` takes both.
    ///
    /// ```
    /// use greenhub_dbpool::{Pool, SqliteConnectionManager};
    ///
    /// let pool = Pool::builder().max_size(2).build(SqliteConnectionManager::memory()).unwrap();
    /// let n: i64 = pool.try_run(|c| c.query_row("SELECT 6 * 7", [], |r| r.get(0))).unwrap();
    /// assert_eq!(n, 42);
    /// ```
    #[track_caller]
    pub fn try_run<T, E, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        E: Into<Error> + Send + 'static,
        F: FnOnce(&mut M::Connection) -> Result<T, E> + Send + 'static,
    {
        self.run(f)?.map_err(Into::into)
    }

    /// Runs `f` on a connection as a job: queued in arrival order with the green threads
    /// waiting in [`Pool::get`], run on a pool thread by whoever frees a connection (see
    /// `job.rs`), the connection returned after it. `f` learns through the flag whether the
    /// caller has stopped waiting.
    #[track_caller]
    pub(crate) fn call<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut Tracked<M::Connection>, &Presence) -> R + Send + 'static,
    {
        let site = Location::caller();
        let inner = &self.inner;
        let asked_at = Instant::now();
        inner.pass_gate(asked_at)?;
        // Counted from past the gate: callers held by a suspend are not demand on the size.
        let _demand = inner.demand.arrive();
        // Time spent suspended does not count against the pool's own timeout.
        let own = Instant::now() + inner.settings.connection_timeout;
        let scope = greenhub::timeout::deadline();
        let deadline = scope.map_or(own, |scope| scope.min(own));
        let slot = Slot::new();
        let reply = Reply::new(slot.clone());
        let (mut caller, gone) = StopsWaiting::arm();
        let work: Work<M> = Box::new(move |lease| {
            let value = lease.and_then(|lease| {
                // The panic stays here: the connection is rolled back and returned by the
                // runner, which goes on with the next job.
                greenhub::catch_panic(|| lease.run_for(&gone, f))
                    .map_err(|p| Error::Panicked { message: p.message })?
            });
            Box::new(move || reply.send(value))
        });
        let holder = greenhub::current().map(|c| (c.id(), c.name().map(str::to_string)));
        let job = Arc::new(Job::new(work, site, holder, asked_at, deadline));
        inner.enqueue(&job)?;
        let on = WaitOn::Object {
            object: *crate::POOL_KIND,
            id: inner.id(),
        };
        // Killed while waiting: withdraw the job if it has not started, and leave.
        let leave = Withdraw { job: &job };
        let mut until = Some(deadline);
        loop {
            let waiter = Waiter::until(on, until);
            if let Some(value) = slot.take_or_register(waiter.token()) {
                std::mem::forget(leave);
                caller.disarm();
                return value;
            }
            if waiter.wait().is_ok() {
                continue;
            }
            if job.cancel() {
                std::mem::forget(leave);
                caller.disarm();
                inner.gave_up(asked_at);
                return Err(if Instant::now() < own {
                    Error::TimedOut
                } else {
                    Error::PoolTimeout {
                        pool: inner.name.clone(),
                        waited_ms: asked_at.elapsed().as_millis() as u64,
                        state: inner.state(),
                    }
                });
            }
            // The job runs: it is bounded by the caller's scope only, as any call on a pool
            // thread is.
            if scope.is_some_and(|scope| Instant::now() >= scope) {
                std::mem::forget(leave);
                // A result in before the caller leaves is its own.
                if let Some(value) = slot.take_ready() {
                    caller.disarm();
                    return value;
                }
                if !caller.leave() {
                    // A commit under way: its outcome is the caller's, deadline or not.
                    let value = greenhub::ext::without_deadline(|| {
                        loop {
                            let waiter = Waiter::until(on, None);
                            if let Some(value) = slot.take_or_register(waiter.token()) {
                                return value;
                            }
                            // Only a kill ends this wait early; it unwinds from here.
                            let _ = waiter.wait();
                        }
                    });
                    caller.disarm();
                    return value;
                }
                // One that lands after it is the cancel's doing (or too late): dropped there.
                slot.abandon();
                return Err(Error::TimedOut);
            }
            until = None;
        }
    }

    /// Takes a permit (the green wait), then checks a connection out on a pool thread and
    /// hands it to `then` there. `then` learns through the flag whether the caller has
    /// stopped waiting.
    #[track_caller]
    fn checkout_then<R, F>(&self, then: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(Lease<M>, &Presence) -> R + Send + 'static,
    {
        let site = Location::caller();
        let inner = &self.inner;
        let asked_at = Instant::now();
        inner.pass_gate(asked_at)?;
        let demand = inner.demand.arrive();
        let own = Instant::now() + inner.settings.connection_timeout;
        // The checkout call keeps a permit until it ends: bound it by the scope too.
        let deadline = greenhub::timeout::deadline().map_or(own, |scope| scope.min(own));
        let permit = match inner.acquire(deadline) {
            Ok(permit) => permit,
            Err(Error::TimedOut) => {
                inner.gave_up(asked_at);
                if Instant::now() < own {
                    return Err(Error::TimedOut);
                }
                return Err(Error::PoolTimeout {
                    pool: inner.name.clone(),
                    waited_ms: asked_at.elapsed().as_millis() as u64,
                    state: inner.state(),
                });
            }
            Err(e) => return Err(e),
        };
        let holder = greenhub::current().map(|c| (c.id(), c.name().map(str::to_string)));
        let worker = inner.clone();
        let (mut caller, gone) = StopsWaiting::arm();
        let outcome = inner.tpool.execute(move || {
            worker
                .checkout_blocking(permit, deadline, site, holder, asked_at)
                .map(|mut lease| {
                    // The holder's share of the demand lasts as long as the lease.
                    lease.demand = Some(demand);
                    then(lease, &gone)
                })
        });
        match outcome {
            Ok(Ok(value)) => {
                caller.disarm();
                Ok(value)
            }
            Ok(Err(e)) => {
                if e.is_checkout_failure() {
                    inner.gave_up(asked_at);
                }
                Err(e)
            }
            Err(e) => {
                if matches!(e, greenhub_tpool::Error::TimedOut) {
                    inner.gave_up(asked_at);
                }
                Err(e.into())
            }
        }
    }
}

fn deliver(result: Option<Delivery>) {
    if let Some(send) = result {
        send();
    }
}

/// Withdraws a queued job whose caller unwinds (killed) while waiting for it.
struct Withdraw<'a, M: Backend> {
    job: &'a Arc<Job<M>>,
}

impl<M: Backend> Drop for Withdraw<'_, M> {
    fn drop(&mut self) {
        self.job.cancel();
    }
}

impl<M: Backend> Inner<M> {
    /// r2d2's pool, until the pool is closed.
    fn r2d2(&self) -> Option<r2d2::Pool<Managed<M>>> {
        self.r2d2.lock().clone()
    }
}

impl<M: Backend> Drop for Inner<M> {
    fn drop(&mut self) {
        // The pool's threads end with it; calls still queued get `ShutDown`.
        self.tpool.shutdown(Duration::ZERO);
        // Closing the idle connections talks to the server: never on a worker.
        if let Some(r2d2) = self.r2d2.get_mut().take()
            && may::coroutine::is_coroutine()
        {
            let closer = std::thread::Builder::new()
                .name(format!("dbpool-{}-close", self.name))
                .spawn(move || drop(r2d2));
            // Without a thread, close here rather than leak the connections.
            if let Err(e) = closer {
                greenhub::ext::warn(&format!(
                    "greenhub-dbpool: closing idle connections on a worker: {e}"
                ));
            }
        }
    }
}
