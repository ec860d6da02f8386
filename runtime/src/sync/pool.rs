//! [`Pool`]: a pool of any reusable thing (clients, channels, parsers), eventlet's
//! `pools.Pool`, with the checkout books, deadlines and leak reports of greenhub's database
//! pool.
//!
//! ```
//! use greenhub::pool::Pool;
//!
//! struct Client { calls: u32 }
//!
//! let pool = Pool::builder(|| Ok::<_, std::io::Error>(Client { calls: 0 }))
//!     .max_size(4)
//!     .name("clients")
//!     .build()
//!     .unwrap();
//! let workers: Vec<_> = (0..20)
//!     .map(|_| {
//!         let pool = pool.clone();
//!         greenhub::spawn(move || {
//!             let mut client = pool.get().unwrap(); // waits while all four are out
//!             client.calls += 1;
//!         }) // back in the pool here
//!     })
//!     .collect();
//! for w in workers { w.wait().unwrap(); }
//! assert!(pool.size() <= 4);
//! ```

use std::collections::{HashMap, VecDeque};
use std::panic::Location;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;

use greenhub_snapshot::{ObjectInfo, ObjectKind, WaitOn};

use crate::core::context;
use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::report;
use crate::core::timeout::{IsTimeout, TimedOut};
use crate::core::wait::Waiter;
use crate::core::waitlist::{self, Slot, WaitList};
use crate::green::time::with_timeout;
use crate::green::timer::{Timer, call_after};

static KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("pool"));

/// The error a pool's `create` function returns, boxed.
pub type CreateError = Box<dyn std::error::Error + Send + Sync>;

/// Why a pool gave no item.
#[derive(Debug, Error)]
pub enum PoolError {
    /// Every item stayed checked out until the get's timeout or the enclosing deadline
    /// passed. Raise the pool's size, hold items for less time, or find who holds them (the
    /// snapshot lists every checkout, and a leak threshold reports long ones).
    #[error("timed out waiting for an item of the pool; all are checked out")]
    TimedOut,
    /// The pool's `create` function failed; the place it would have filled is free again.
    #[error("could not create an item for the pool: {0}")]
    Create(#[source] CreateError),
    /// [`Pool::try_get`] found no idle item and no room to create one.
    #[error("the pool has no idle item and no room to create one")]
    Exhausted,
}

impl From<TimedOut> for PoolError {
    fn from(_: TimedOut) -> PoolError {
        PoolError::TimedOut
    }
}

impl IsTimeout for PoolError {
    fn is_timeout(&self) -> bool {
        matches!(self, PoolError::TimedOut)
    }
}

type Create<T> = dyn Fn() -> Result<T, CreateError> + Send + Sync;
type Check<T> = dyn Fn(&mut T) -> bool + Send + Sync;

/// What a getter is handed: an idle item, or the right to create one.
enum Grant<T> {
    Item(Idle<T>),
    Create,
}

/// An item with its age.
struct Idle<T> {
    item: T,
    created: Instant,
    returned: Instant,
}

/// A pool of reusable items: created on demand by the pool's `create` function up to
/// `max_size`, handed out one caller at a time, and taken back when the [`Pooled`] guard drops.
///
/// A handle: clones share the same pool. Build one with [`Pool::builder`].
///
/// - **Waits.** When every item is out and the pool is full, [`Pool::get`] waits, in arrival
///   order: a returned item (or room to create one) is handed to the first waiter. The wait
///   honours deadline scopes and kill, from green threads and OS threads, and shows in the
///   snapshot as a wait on the pool.
/// - **Creating** runs `create` in the getter's thread (so it may connect cooperatively),
///   within the get's deadline. A failure returns [`PoolError::Create`] and frees the place.
/// - **Checking.** `validate` runs on an idle item before it is handed out (a ping), and
///   `recycle` on an item coming back (still usable?); `false` from either discards the item.
///   Items past `max_lifetime`, or idle past `idle_timeout`, are discarded at their next
///   checkout. An item whose holder panics or is killed while holding it is discarded: it may
///   be half-way through an operation.
/// - **Order.** The most recently returned idle item goes out first (a stack: the fewest
///   items stay warm, and the rest age out), unless built [`fifo`](PoolBuilder::fifo).
/// - **Books.** In the snapshot the pool is an object of kind `pool` with the counts
///   `max_size`, `size`, `idle` and `in_use`, the totals `checkouts`, `created`,
///   `create_errors`, `discarded`, `timeouts`, `leaks`, `wait_us` (time getters waited) and
///   `held_us` (time returned items were held), and in its detail every checkout:
///   holder, where it was checked out, for how long. With a leak threshold, a checkout held
///   longer is reported through `log` (and again when it comes back).
pub struct Pool<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Pool<T> {
    fn clone(&self) -> Self {
        Pool {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Pool<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("Pool")
            .field("id", &self.inner.reg.id())
            .field("name", &self.inner.settings.name)
            .field("max_size", &st.max)
            .field("size", &st.live)
            .field("idle", &st.idle.len())
            .finish()
    }
}

struct Inner<T> {
    reg: Registration,
    settings: Settings<T>,
    state: Mutex<State<T>>,
    book: Mutex<Book>,
    next_checkout: AtomicU64,
}

struct State<T> {
    max: usize,
    /// Items in existence or being created (a handed `Create` counts).
    live: usize,
    idle: VecDeque<Idle<T>>,
    waiters: WaitList<Slot<Grant<T>>>,
}

#[derive(Default)]
struct Book {
    current: HashMap<u64, Checkout>,
    checkouts: u64,
    created: u64,
    create_errors: u64,
    discarded: u64,
    timeouts: u64,
    leaks: u64,
    /// Time getters waited for their items, summed over checkouts.
    wait_us: u64,
    /// Time items were held, summed over returned checkouts.
    held_us: u64,
}

struct Checkout {
    holder: Option<u64>,
    holder_name: Option<Arc<str>>,
    site: &'static Location<'static>,
    since: Instant,
    leaked: bool,
}

/// What a pool is made with: its builder's settings, kept by the pool.
struct Settings<T> {
    create: Box<Create<T>>,
    validate: Option<Box<Check<T>>>,
    recycle: Option<Box<Check<T>>>,
    max_lifetime: Option<Duration>,
    idle_timeout: Option<Duration>,
    leak_threshold: Option<Duration>,
    fifo: bool,
    name: Option<String>,
}

/// Builds a [`Pool`]: its `create` function, size, checks, ages, order and name.
pub struct PoolBuilder<T> {
    settings: Settings<T>,
    max_size: usize,
    min_size: usize,
}

impl<T> std::fmt::Debug for PoolBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBuilder")
            .field("max_size", &self.max_size)
            .field("min_size", &self.min_size)
            .field("name", &self.settings.name)
            .finish()
    }
}

impl<T: Send + 'static> PoolBuilder<T> {
    /// At most `n` items exist at once (default 10; at least 1).
    pub fn max_size(mut self, n: usize) -> Self {
        self.max_size = n.max(1);
        self
    }

    /// Creates `n` items when the pool is built (default 0; capped at `max_size`).
    pub fn min_size(mut self, n: usize) -> Self {
        self.min_size = n;
        self
    }

    /// Checks an idle item before handing it out; `false` discards it and the get goes on
    /// with the next one (or creates one).
    pub fn validate(mut self, check: impl Fn(&mut T) -> bool + Send + Sync + 'static) -> Self {
        self.settings.validate = Some(Box::new(check));
        self
    }

    /// Checks an item coming back; `false` discards it instead of keeping it idle.
    pub fn recycle(mut self, check: impl Fn(&mut T) -> bool + Send + Sync + 'static) -> Self {
        self.settings.recycle = Some(Box::new(check));
        self
    }

    /// Discards an item older than this at its next checkout.
    pub fn max_lifetime(mut self, age: Duration) -> Self {
        self.settings.max_lifetime = Some(age);
        self
    }

    /// Discards an item idle longer than this at its next checkout.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.settings.idle_timeout = Some(idle);
        self
    }

    /// Reports (through `log`) a checkout held longer than this.
    pub fn leak_threshold(mut self, held: Duration) -> Self {
        self.settings.leak_threshold = Some(held);
        self
    }

    /// Hands idle items out oldest-returned first (eventlet's default), spreading use over
    /// every item, instead of most-recently-returned first.
    pub fn fifo(mut self) -> Self {
        self.settings.fifo = true;
        self
    }

    /// Names the pool in the snapshot and in its reports.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = Some(name.into());
        self
    }

    /// The pool, with its `min_size` items created (in the caller). The first failure to
    /// create one is returned.
    pub fn build(self) -> Result<Pool<T>, PoolError> {
        let min = self.min_size.min(self.max_size);
        let inner = Arc::new_cyclic(|weak: &Weak<Inner<T>>| Inner {
            reg: Registration::new(weak.clone()),
            settings: self.settings,
            state: Mutex::new(State {
                max: self.max_size,
                live: 0,
                idle: VecDeque::new(),
                waiters: WaitList::default(),
            }),
            book: Mutex::new(Book::default()),
            next_checkout: AtomicU64::new(1),
        });
        for _ in 0..min {
            let item = inner.make()?;
            inner.state.lock().live += 1;
            let now = Instant::now();
            inner.put_back(item, now, now);
        }
        Ok(Pool { inner })
    }
}

impl<T: Send + 'static> Pool<T> {
    /// A builder for a pool whose items `create` makes.
    pub fn builder<E>(create: impl Fn() -> Result<T, E> + Send + Sync + 'static) -> PoolBuilder<T>
    where
        E: Into<CreateError>,
    {
        PoolBuilder {
            settings: Settings {
                create: Box::new(move || create().map_err(Into::into)),
                validate: None,
                recycle: None,
                max_lifetime: None,
                idle_timeout: None,
                leak_threshold: None,
                fifo: false,
                name: None,
            },
            max_size: 10,
            min_size: 0,
        }
    }

    /// The pool's id in the registry.
    pub fn id(&self) -> u64 {
        self.inner.reg.id()
    }

    /// The most items that may exist at once.
    pub fn max_size(&self) -> usize {
        self.inner.state.lock().max
    }

    /// Items that exist now (idle, checked out, or being created).
    pub fn size(&self) -> usize {
        self.inner.state.lock().live
    }

    /// Idle items now.
    pub fn idle(&self) -> usize {
        self.inner.state.lock().idle.len()
    }

    /// Threads (green or OS) waiting for an item now.
    pub fn waiting(&self) -> usize {
        self.inner.state.lock().waiters.live()
    }

    /// Changes the most items that may exist at once (eventlet's `resize`). Growing hands
    /// the new room to waiting getters at once; shrinking discards idle items now and
    /// checked-out ones as they come back, until the pool fits.
    pub fn resize(&self, max_size: usize) {
        self.inner.resize_to(max_size);
    }

    /// Checks an item out, waiting while every item is out and the pool is full (bounded by
    /// the enclosing deadline scopes). The item comes back when the guard drops.
    #[track_caller]
    pub fn get(&self) -> Result<Pooled<T>, PoolError> {
        self.get_until(None, Location::caller())
    }

    /// Like [`Pool::get`], giving up after `timeout`.
    #[track_caller]
    pub fn get_timeout(&self, timeout: Duration) -> Result<Pooled<T>, PoolError> {
        self.get_until(Instant::now().checked_add(timeout), Location::caller())
    }

    /// Checks an item out if that needs no wait: an idle one, or a new one if there is room
    /// ([`PoolError::Exhausted`] otherwise).
    #[track_caller]
    pub fn try_get(&self) -> Result<Pooled<T>, PoolError> {
        let site = Location::caller();
        let asked = Instant::now();
        loop {
            let grant = self.inner.grant_now().ok_or(PoolError::Exhausted)?;
            if let Some(p) = self.inner.redeem(grant, None, site, asked)? {
                return Ok(p);
            }
        }
    }

    fn get_until(
        &self,
        deadline: Option<Instant>,
        site: &'static Location<'static>,
    ) -> Result<Pooled<T>, PoolError> {
        let asked = Instant::now();
        loop {
            let grant = self.inner.wait_grant(deadline)?;
            if let Some(p) = self.inner.redeem(grant, deadline, site, asked)? {
                return Ok(p);
            }
        }
    }
}

impl<T: Send + 'static> Inner<T> {
    /// An idle item, or room to create one, if either is there now.
    fn grant_now(&self) -> Option<Grant<T>> {
        self.grant_locked(&mut self.state.lock())
    }

    fn grant_locked(&self, st: &mut State<T>) -> Option<Grant<T>> {
        let idle = if self.settings.fifo {
            st.idle.pop_front()
        } else {
            st.idle.pop_back()
        };
        if let Some(idle) = idle {
            return Some(Grant::Item(idle));
        }
        if st.live < st.max {
            st.live += 1;
            return Some(Grant::Create);
        }
        None
    }

    /// Waits to be handed an item or room to create one (unless one is there now).
    fn wait_grant(&self, deadline: Option<Instant>) -> Result<Grant<T>, PoolError> {
        let (waiter, slot) = {
            let mut st = self.state.lock();
            if let Some(g) = self.grant_locked(&mut st) {
                return Ok(g);
            }
            let waiter = Waiter::until(
                WaitOn::Object {
                    object: *KIND,
                    id: self.reg.id(),
                },
                deadline,
            );
            let slot = waitlist::slot();
            st.waiters.push(waiter.token().clone(), slot.clone());
            (waiter, slot)
        };
        let guard = GiveBack {
            inner: self,
            slot: &slot,
        };
        let woken = waiter.wait();
        std::mem::forget(guard);
        match woken {
            Ok(()) => Ok(slot
                .lock()
                .take()
                .expect("the pool fills the slot before waking")),
            Err(TimedOut) => {
                self.book.lock().timeouts += 1;
                Err(PoolError::TimedOut)
            }
        }
    }

    /// Turns a grant into a checked-out item: checks an idle one (`None` if it was
    /// discarded: the caller asks again), or creates one.
    fn redeem(
        self: &Arc<Self>,
        grant: Grant<T>,
        deadline: Option<Instant>,
        site: &'static Location<'static>,
        asked: Instant,
    ) -> Result<Option<Pooled<T>>, PoolError> {
        // Room held across the check or the creation: a kill there gives it back.
        let mut held = Held {
            inner: self,
            item: matches!(grant, Grant::Item(_)),
            done: false,
        };
        // One reading of the clock for the hand-out: the idle item's age, and the checkout's
        // wait and start.
        let (item, created, now) = match grant {
            Grant::Item(mut idle) => {
                let now = Instant::now();
                let expired = self
                    .settings
                    .max_lifetime
                    .is_some_and(|age| now.saturating_duration_since(idle.created) >= age)
                    || self
                        .settings
                        .idle_timeout
                        .is_some_and(|t| now.saturating_duration_since(idle.returned) >= t);
                if expired
                    || !self
                        .settings
                        .validate
                        .as_ref()
                        .is_none_or(|ok| ok(&mut idle.item))
                {
                    held.done = true;
                    drop(held);
                    self.discard(idle.item);
                    return Ok(None);
                }
                // A validation talks to the item's server: the checkout starts after it.
                let now = if self.settings.validate.is_some() {
                    Instant::now()
                } else {
                    now
                };
                (idle.item, idle.created, now)
            }
            Grant::Create => {
                let made = match deadline {
                    Some(d) => {
                        with_timeout(d.saturating_duration_since(Instant::now()), || self.make())
                    }
                    None => self.make(),
                };
                match made {
                    Ok(item) => {
                        let now = Instant::now();
                        (item, now, now)
                    }
                    Err(e) => {
                        held.done = true;
                        drop(held);
                        self.free_place();
                        return Err(e);
                    }
                }
            }
        };
        held.done = true;
        let id = self.book_checkout(site, asked, now);
        let leak_timer = self.settings.leak_threshold.map(|threshold| {
            let weak = Arc::downgrade(self);
            call_after(threshold, move || {
                if let Some(inner) = weak.upgrade() {
                    inner.report_leak(id, threshold);
                }
            })
        });
        Ok(Some(Pooled {
            item: Some(item),
            created,
            pool: self.clone(),
            checkout: id,
            leak_timer,
        }))
    }

    fn make(&self) -> Result<T, PoolError> {
        match (self.settings.create)() {
            Ok(item) => {
                self.book.lock().created += 1;
                Ok(item)
            }
            Err(e) => {
                self.book.lock().create_errors += 1;
                Err(PoolError::Create(e))
            }
        }
    }

    /// An item is back: to the first waiter, or idle; discarded if the pool has shrunk.
    fn put_back(&self, item: T, created: Instant, returned: Instant) {
        let idle = Idle {
            item,
            created,
            returned,
        };
        let mut st = self.state.lock();
        if st.live > st.max {
            st.live -= 1;
            drop(st);
            self.book.lock().discarded += 1;
            drop(idle);
            return;
        }
        if let Some(Grant::Item(idle)) = st.waiters.hand_off(Grant::Item(idle)) {
            st.idle.push_back(idle);
        }
    }

    /// An item is gone for good: its place goes to the first waiter, as room to create.
    fn discard(&self, item: T) {
        self.book.lock().discarded += 1;
        drop(item);
        self.free_place();
    }

    fn free_place(&self) {
        let mut st = self.state.lock();
        st.live -= 1;
        if st.live < st.max {
            st.live += 1;
            if st.waiters.hand_off(Grant::Create).is_some() {
                st.live -= 1;
            }
        }
    }

    /// Gives a grant back: the item to the next waiter or idle, the room freed.
    fn give_back(&self, grant: Grant<T>) {
        match grant {
            Grant::Item(idle) => self.put_back(idle.item, idle.created, idle.returned),
            Grant::Create => self.free_place(),
        }
    }

    /// Books a checkout handed out at `now` to the current green thread (if any), asked for
    /// at `asked`.
    fn book_checkout(&self, site: &'static Location<'static>, asked: Instant, now: Instant) -> u64 {
        let id = self.next_checkout.fetch_add(1, Ordering::Relaxed);
        let (holder, holder_name) = context::current_identity().unzip();
        let mut book = self.book.lock();
        book.checkouts += 1;
        book.wait_us += now.saturating_duration_since(asked).as_micros() as u64;
        book.current.insert(
            id,
            Checkout {
                holder,
                holder_name: holder_name.flatten(),
                site,
                since: now,
                leaked: false,
            },
        );
        id
    }

    /// Books the end of checkout `id`, at `now`.
    fn checked_in(&self, id: u64, now: Instant) {
        let mut book = self.book.lock();
        let Some(c) = book.current.remove(&id) else {
            return;
        };
        book.held_us += now.saturating_duration_since(c.since).as_micros() as u64;
        if c.leaked {
            drop(book);
            report::warn(&format!(
                "greenhub: pool {}: the item reported as leaked (checked out at {}) came back \
                 after {} ms",
                self.label(),
                c.site,
                c.since.elapsed().as_millis()
            ));
        }
    }

    fn report_leak(&self, id: u64, threshold: Duration) {
        let mut book = self.book.lock();
        let Some(c) = book.current.get_mut(&id) else {
            return;
        };
        c.leaked = true;
        let line = format!(
            "greenhub: pool {}: item held for more than {} ms (leak threshold) by {}, checked \
             out at {}",
            self.label(),
            threshold.as_millis(),
            holder(c.holder, c.holder_name.as_deref()),
            c.site
        );
        book.leaks += 1;
        drop(book);
        report::warn(&line);
    }

    fn label(&self) -> String {
        match &self.settings.name {
            Some(n) => format!("{n:?} #{}", self.reg.id()),
            None => format!("#{}", self.reg.id()),
        }
    }
}

fn holder(id: Option<u64>, name: Option<&str>) -> String {
    match (id, name) {
        (Some(id), Some(name)) => format!("green thread #{id} {name:?}"),
        (Some(id), None) => format!("green thread #{id}"),
        (None, _) => "an OS thread".to_owned(),
    }
}

impl<T: Send + 'static> Inner<T> {
    /// [`Pool::resize`].
    fn resize_to(&self, max_size: usize) {
        let max_size = max_size.max(1);
        let mut dropped = Vec::new();
        {
            let mut st = self.state.lock();
            st.max = max_size;
            while st.live > st.max {
                let Some(idle) = st.idle.pop_front() else {
                    break;
                };
                st.live -= 1;
                dropped.push(idle);
            }
            while st.live < st.max && st.waiters.live() > 0 {
                st.live += 1;
                if st.waiters.hand_off(Grant::Create).is_some() {
                    st.live -= 1;
                    break;
                }
            }
        }
        self.book.lock().discarded += dropped.len() as u64;
    }
}

impl<T: Send + 'static> Inspect for Inner<T> {
    fn inspect(&self) -> ObjectInfo {
        let (max, live, idle, waiters) = {
            let st = self.state.lock();
            (st.max, st.live, st.idle.len(), st.waiters.live())
        };
        let book = self.book.lock();
        let now = Instant::now();
        let mut checkouts: Vec<_> = book.current.iter().collect();
        checkouts.sort_by_key(|(id, _)| **id);
        let detail: Vec<serde_json::Value> = checkouts
            .into_iter()
            .map(|(_, c)| {
                serde_json::json!({
                    "holder": c.holder,
                    "holder_name": c.holder_name.as_deref(),
                    "site": c.site.to_string(),
                    "held_us": now.saturating_duration_since(c.since).as_micros() as u64,
                    "leaked": c.leaked,
                })
            })
            .collect();
        ObjectInfo::new(*KIND, self.reg.id(), self.settings.name.as_deref(), waiters)
            .count("max_size", max as u64)
            .count("size", live as u64)
            .count("idle", idle as u64)
            .count("in_use", book.current.len() as u64)
            .total("checkouts", book.checkouts)
            .total("created", book.created)
            .total("create_errors", book.create_errors)
            .total("discarded", book.discarded)
            .total("timeouts", book.timeouts)
            .total("leaks", book.leaks)
            .total("wait_us", book.wait_us)
            .total("held_us", book.held_us)
            .with_detail(serde_json::json!({ "checkouts": detail }))
    }

    fn held_by(&self) -> Vec<u64> {
        let mut held: Vec<u64> = self
            .book
            .lock()
            .current
            .values()
            .filter_map(|c| c.holder)
            .collect();
        held.sort_unstable();
        held.dedup();
        held
    }

    /// The holders of every item, when the pool is at its size with none idle or being made
    /// and green threads hold them all.
    fn holders(&self) -> Vec<u64> {
        let (max, live, idle) = {
            let st = self.state.lock();
            (st.max, st.live, st.idle.len())
        };
        if live < max || idle > 0 {
            return Vec::new();
        }
        let book = self.book.lock();
        if book.current.len() != live {
            return Vec::new();
        }
        let holders: Option<Vec<u64>> = book.current.values().map(|c| c.holder).collect();
        let mut holders = holders.unwrap_or_default();
        holders.sort_unstable();
        holders.dedup();
        holders
    }

    fn resize(&self, size: usize) -> Result<(), String> {
        if size == 0 {
            return Err("a pool keeps at least one item".into());
        }
        self.resize_to(size);
        Ok(())
    }
}

/// Gives back a grant handed to a getter that unwinds (killed) before it could take it.
struct GiveBack<'a, T: Send + 'static> {
    inner: &'a Inner<T>,
    slot: &'a Slot<Grant<T>>,
}

impl<T: Send + 'static> Drop for GiveBack<'_, T> {
    fn drop(&mut self) {
        // The pool's lock first: a hand-off in progress holds it, so the slot is settled.
        let grant = {
            let _st = self.inner.state.lock();
            self.slot.lock().take()
        };
        if let Some(g) = grant {
            self.inner.give_back(g);
        }
    }
}

/// Frees the place a getter holds while it checks or creates an item, if it unwinds there.
struct Held<'a, T: Send + 'static> {
    inner: &'a Inner<T>,
    /// An idle item is being checked (it is discarded with the frame), not created.
    item: bool,
    done: bool,
}

impl<T: Send + 'static> Drop for Held<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            if self.item {
                self.inner.book.lock().discarded += 1;
            }
            self.inner.free_place();
        }
    }
}

/// An item checked out of a [`Pool`]: derefs to it, and goes back when dropped (checked by
/// the pool's `recycle`; discarded if its holder is unwinding).
pub struct Pooled<T: Send + 'static> {
    item: Option<T>,
    created: Instant,
    pool: Arc<Inner<T>>,
    checkout: u64,
    leak_timer: Option<Timer>,
}

impl<T: Send + 'static> Pooled<T> {
    /// Discards the item (it is broken): the pool creates another when one is needed.
    pub fn discard(mut self) {
        let item = self
            .item
            .take()
            .expect("a pooled item is present until dropped");
        self.finish(Instant::now());
        self.pool.discard(item);
    }

    /// Takes the item out of the pool for good; its place is free for a new one.
    pub fn detach(mut self) -> T {
        let item = self
            .item
            .take()
            .expect("a pooled item is present until dropped");
        self.finish(Instant::now());
        self.pool.free_place();
        item
    }

    /// Ends the checkout's booking (at `now`) and its leak timer.
    fn finish(&mut self, now: Instant) {
        if let Some(t) = self.leak_timer.take() {
            t.cancel();
        }
        self.pool.checked_in(self.checkout, now);
    }
}

impl<T: Send + 'static> std::ops::Deref for Pooled<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.item
            .as_ref()
            .expect("a pooled item is present until dropped")
    }
}

impl<T: Send + 'static> std::ops::DerefMut for Pooled<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item
            .as_mut()
            .expect("a pooled item is present until dropped")
    }
}

impl<T: Send + 'static> Drop for Pooled<T> {
    fn drop(&mut self) {
        let Some(mut item) = self.item.take() else {
            return;
        };
        // One reading of the clock: the end of the checkout and the item's return.
        let now = Instant::now();
        self.finish(now);
        let keep = !std::thread::panicking()
            && self
                .pool
                .settings
                .recycle
                .as_ref()
                .is_none_or(|ok| ok(&mut item));
        if keep {
            self.pool.put_back(item, self.created, now);
        } else {
            self.pool.discard(item);
        }
    }
}

impl<T: Send + std::fmt::Debug + 'static> std::fmt::Debug for Pooled<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pooled")
            .field("item", &self.item)
            .field("checkout", &self.checkout)
            .finish()
    }
}
