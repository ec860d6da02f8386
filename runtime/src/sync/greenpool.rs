//! [`GreenPool`]: a bounded set of green threads with backpressure, and [`GreenPile`]: results
//! collected in spawn order (eventlet's `greenpool` module).
//!
//! ```
//! use greenhub::GreenPool;
//!
//! let pool = GreenPool::new(4); // at most four at a time; spawn waits for a free slot
//! let squares: Vec<u64> = pool
//!     .imap(1..=10u64, |n| n * n) // results in input order, computed four at a time
//!     .map(Result::unwrap)
//!     .collect();
//! assert_eq!(squares[9], 100);
//! pool.waitall().unwrap();
//! assert_eq!(pool.running(), 0);
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::panic::Location;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use parking_lot::Mutex;
use thiserror::Error;

use crate::core::context;
use greenhub_snapshot::{ObjectInfo, ObjectKind, WaitOn};

use crate::core::limits::SpawnError;
use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::timeout::{IsTimeout, TimedOut};
use crate::core::token::Token;
use crate::core::wait::Waiter;
use crate::core::waitlist::WaitList;
use crate::green::thread::{Builder, GreenThread, JoinError};
use crate::sync::queue::Queue;

/// What went wrong with a pool operation.
#[derive(Debug, Clone, Error)]
pub enum PoolError {
    /// The enclosing deadline passed while waiting for a free slot (or for `waitall`).
    #[error("timed out waiting for the green pool")]
    TimedOut,
    /// [`GreenPool::try_spawn`] on a full pool.
    #[error("the green pool is full")]
    Full,
    /// The green thread could not be created.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// A green thread of the pool panicked or was killed (from [`GreenPool::imap`] and
    /// [`GreenPile`]).
    #[error(transparent)]
    Failed(#[from] JoinError),
    /// [`GreenPool::waitall`] from a green thread of the same pool would wait for itself.
    #[error("waitall called from a green thread of the same pool would wait for itself forever")]
    InsidePool,
}

impl IsTimeout for PoolError {
    fn is_timeout(&self) -> bool {
        match self {
            PoolError::TimedOut => true,
            PoolError::Failed(e) => e.is_timeout(),
            _ => false,
        }
    }
}

impl From<TimedOut> for PoolError {
    fn from(_: TimedOut) -> PoolError {
        PoolError::TimedOut
    }
}

/// A bounded set of green threads (eventlet's `GreenPool`, gevent's `Pool`).
///
/// A handle: clones share the same pool.
///
/// - [`GreenPool::spawn`] waits while the pool is full: a server spawning per connection gets
///   backpressure instead of unbounded growth. [`GreenPool::try_spawn`] does not wait.
/// - A green thread of the pool that spawns into the same full pool does not wait (it would
///   wait for itself, as could every member): its child is admitted over the size, so a pool
///   whose tasks spawn subtasks cannot deadlock.
/// - Slots are handed to waiting spawners in arrival order. A slot is freed when its thread
///   ends, however it ends (returned, panicked, killed), and also if it is killed before it
///   started.
/// - [`GreenPool::resize`] changes the size at run time; lowering it lets running threads
///   finish and admits no more until the count is below the new size.
///
/// In the snapshot it is an object of kind `greenpool` with the counts `size`, `running`,
/// `spawners` (waiting for a slot) and `waitall` (waiting for the pool to drain), and the total
/// `spawned`.
#[derive(Clone)]
pub struct GreenPool {
    inner: Arc<Inner>,
}

struct Inner {
    reg: Registration,
    name: OnceLock<String>,
    state: Mutex<State>,
}

struct State {
    size: usize,
    running: usize,
    members: HashSet<u64>,
    spawners: WaitList<()>,
    idlers: WaitList<()>,
    spawned: u64,
}

impl Inspect for Inner {
    fn inspect(&self) -> ObjectInfo {
        let st = self.state.lock();
        let (spawners, idlers) = (st.spawners.live(), st.idlers.live());
        ObjectInfo::new(
            ObjectKind::GREENPOOL,
            self.reg.id(),
            self.name.get().map(String::as_str),
            spawners + idlers,
        )
        .count("size", st.size as u64)
        .count("running", st.running as u64)
        .count("spawners", spawners as u64)
        .count("waitall", idlers as u64)
        .total("spawned", st.spawned)
    }

    fn resize(&self, size: usize) -> Result<(), String> {
        if size == 0 {
            return Err("a green pool runs at least one thread".into());
        }
        let mut st = self.state.lock();
        st.size = size;
        st.admit();
        Ok(())
    }
}

impl State {
    /// Hands free slots to waiting spawners, in order.
    fn admit(&mut self) {
        while self.running < self.size {
            if self.spawners.wake_first().is_none() {
                break;
            }
            self.running += 1;
        }
    }
}

impl Inner {
    fn release(&self) {
        let mut st = self.state.lock();
        st.running -= 1;
        st.admit();
        if st.running == 0 {
            st.idlers.wake_all(|_| {});
        }
    }

    fn on(&self) -> WaitOn {
        WaitOn::Object {
            object: ObjectKind::GREENPOOL,
            id: self.reg.id(),
        }
    }
}

/// A slot of the pool, owned by the closure of the thread that uses it: freed when the closure
/// is dropped, whether it ran (returned, panicked, killed) or never did.
struct Ticket {
    pool: Arc<Inner>,
    member: Option<u64>,
}

impl Ticket {
    fn enter(&mut self) {
        if let Some(id) = context::current_id() {
            self.pool.state.lock().members.insert(id);
            self.member = Some(id);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(id) = self.member {
            self.pool.state.lock().members.remove(&id);
        }
        self.pool.release();
    }
}

/// Gives back a slot granted to a spawner that unwinds (killed) before it could use it.
struct ReleaseIfGranted<'a> {
    pool: &'a Inner,
    token: &'a Arc<Token>,
}

impl Drop for ReleaseIfGranted<'_> {
    fn drop(&mut self) {
        if self.token.is_woken() {
            self.pool.release();
        }
    }
}

impl std::fmt::Debug for GreenPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("GreenPool")
            .field("id", &self.inner.reg.id())
            .field("size", &st.size)
            .field("running", &st.running)
            .finish()
    }
}

impl GreenPool {
    /// A pool running at most `size` green threads at a time.
    pub fn new(size: usize) -> GreenPool {
        GreenPool {
            inner: Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
                reg: Registration::new(weak.clone()),
                name: OnceLock::new(),
                state: Mutex::new(State {
                    size,
                    running: 0,
                    members: HashSet::new(),
                    spawners: WaitList::default(),
                    idlers: WaitList::default(),
                    spawned: 0,
                }),
            }),
        }
    }

    /// Names the pool in the snapshot (the first name given sticks).
    pub fn named(self, name: impl Into<String>) -> GreenPool {
        let _ = self.inner.name.set(name.into());
        self
    }

    /// The pool's id in the registry.
    pub fn id(&self) -> u64 {
        self.inner.reg.id()
    }

    /// Spawns `f` in the pool, first waiting for a free slot (bounded by the enclosing
    /// deadline scopes). The thread's spawn site is the caller's.
    #[track_caller]
    pub fn spawn<F, T>(&self, f: F) -> Result<GreenThread<T>, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let site = Location::caller();
        self.acquire(None)?;
        self.start(site, f)
    }

    /// Spawns `f` if a slot is free now: [`PoolError::Full`] otherwise.
    #[track_caller]
    pub fn try_spawn<F, T>(&self, f: F) -> Result<GreenThread<T>, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let site = Location::caller();
        {
            let mut st = self.inner.state.lock();
            if !Self::admits_now(&st) {
                return Err(PoolError::Full);
            }
            st.running += 1;
        }
        self.start(site, f)
    }

    fn admits_now(st: &State) -> bool {
        st.running < st.size || context::current_id().is_some_and(|id| st.members.contains(&id))
    }

    fn acquire(&self, deadline: Option<Instant>) -> Result<(), TimedOut> {
        let (waiter, token) = {
            let mut st = self.inner.state.lock();
            if Self::admits_now(&st) {
                st.running += 1;
                return Ok(());
            }
            let waiter = Waiter::until(self.inner.on(), deadline);
            let token = waiter.token().clone();
            st.spawners.push(token.clone(), ());
            (waiter, token)
        };
        let guard = ReleaseIfGranted {
            pool: &self.inner,
            token: &token,
        };
        let r = waiter.wait();
        std::mem::forget(guard);
        r
    }

    fn start<F, T>(
        &self,
        site: &'static Location<'static>,
        f: F,
    ) -> Result<GreenThread<T>, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let ticket = Ticket {
            pool: self.inner.clone(),
            member: None,
        };
        let body = move || {
            let mut ticket = ticket;
            ticket.enter();
            let value = f();
            drop(ticket);
            value
        };
        let thread = Builder::new().spawn_from(site, context::current_id(), body)?;
        self.inner.state.lock().spawned += 1;
        Ok(thread)
    }

    /// Waits until no green thread of the pool runs (bounded by the enclosing deadlines).
    pub fn waitall(&self) -> Result<(), PoolError> {
        let waiter = {
            let mut st = self.inner.state.lock();
            if context::current_id().is_some_and(|id| st.members.contains(&id)) {
                return Err(PoolError::InsidePool);
            }
            if st.running == 0 {
                return Ok(());
            }
            let waiter = Waiter::until(self.inner.on(), None);
            st.idlers.push(waiter.token().clone(), ());
            waiter
        };
        Ok(waiter.wait()?)
    }

    /// Changes the size. Raising it admits waiting spawners at once; lowering it admits no
    /// one until enough running threads have ended.
    pub fn resize(&self, size: usize) {
        let mut st = self.inner.state.lock();
        st.size = size;
        st.admit();
    }

    /// The size.
    pub fn size(&self) -> usize {
        self.inner.state.lock().size
    }

    /// Green threads of the pool running now (admitted, not yet ended).
    pub fn running(&self) -> usize {
        self.inner.state.lock().running
    }

    /// Free slots now.
    pub fn free(&self) -> usize {
        let st = self.inner.state.lock();
        st.size.saturating_sub(st.running)
    }

    /// Spawners waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.inner.state.lock().spawners.live()
    }

    /// Applies `f` to every item on the pool's green threads and yields the results in input
    /// order (eventlet's `imap`). Lazy: at most the pool's size of items are in flight for this
    /// iterator, and none is taken from `items` before it is needed.
    #[track_caller]
    pub fn imap<I, F, T>(&self, items: I, f: F) -> Imap<I::IntoIter, F, T>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        Imap {
            feed: Feed::new(self, items, f),
            pending: VecDeque::new(),
        }
    }

    /// Like [`GreenPool::imap`], yielding each result as soon as its thread ends.
    #[track_caller]
    pub fn imap_unordered<I, F, T>(&self, items: I, f: F) -> ImapUnordered<I::IntoIter, F, T>
    where
        I: IntoIterator,
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        ImapUnordered {
            feed: Feed::new(self, items, f),
            running: HashMap::new(),
            next_index: 0,
            done: Queue::unbounded(),
        }
    }
}

/// What `imap` and `imap_unordered` share: the input, the function and the window.
struct Feed<I, F> {
    pool: GreenPool,
    items: I,
    f: Arc<F>,
    site: &'static Location<'static>,
}

impl<I: Iterator, F> Feed<I, F> {
    #[track_caller]
    fn new(pool: &GreenPool, items: impl IntoIterator<IntoIter = I>, f: F) -> Feed<I, F> {
        Feed {
            pool: pool.clone(),
            items: items.into_iter(),
            f: Arc::new(f),
            site: Location::caller(),
        }
    }

    fn window(&self) -> usize {
        self.pool.size().max(1)
    }

    /// Spawns the call for `item`, running `wrap` around it inside the thread.
    fn spawn<T, R>(
        &self,
        item: I::Item,
        wrap: impl FnOnce(T) -> R + Send + 'static,
    ) -> Result<GreenThread<R>, PoolError>
    where
        I::Item: Send + 'static,
        F: Fn(I::Item) -> T + Send + Sync + 'static,
        T: Send + 'static,
        R: Send + 'static,
    {
        let f = self.f.clone();
        self.pool.acquire(None)?;
        self.pool.start(self.site, move || wrap(f(item)))
    }
}

/// The iterator of [`GreenPool::imap`]: results in input order.
pub struct Imap<I, F, T> {
    feed: Feed<I, F>,
    pending: VecDeque<Result<GreenThread<T>, PoolError>>,
}

impl<I, F, T> Iterator for Imap<I, F, T>
where
    I: Iterator,
    I::Item: Send + 'static,
    F: Fn(I::Item) -> T + Send + Sync + 'static,
    T: Send + 'static,
{
    type Item = Result<T, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.pending.len() < self.feed.window() {
            let Some(item) = self.feed.items.next() else {
                break;
            };
            let thread = self.feed.spawn(item, |v| v);
            self.pending.push_back(thread);
        }
        let thread = self.pending.pop_front()?;
        Some(thread.and_then(|t| Ok(t.wait()?)))
    }
}

impl<I, F, T> std::fmt::Debug for Imap<I, F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Imap")
            .field("in_flight", &self.pending.len())
            .finish()
    }
}

/// Tells the iterator, however the thread ends, that its result can be collected.
struct Done {
    index: u64,
    done: Queue<u64>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.done.put(self.index);
    }
}

/// The iterator of [`GreenPool::imap_unordered`]: results as their threads end.
pub struct ImapUnordered<I, F, T> {
    feed: Feed<I, F>,
    running: HashMap<u64, Result<GreenThread<T>, PoolError>>,
    next_index: u64,
    done: Queue<u64>,
}

impl<I, F, T> Iterator for ImapUnordered<I, F, T>
where
    I: Iterator,
    I::Item: Send + 'static,
    F: Fn(I::Item) -> T + Send + Sync + 'static,
    T: Send + 'static,
{
    type Item = Result<T, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.running.len() < self.feed.window() {
            // The marker exists only for an item that is being spawned: a marker for nothing
            // would queue an index no thread has.
            let Some(item) = self.feed.items.next() else {
                break;
            };
            let index = self.next_index;
            self.next_index += 1;
            let marker = Done {
                index,
                done: self.done.clone(),
            };
            // A failed spawn drops the marker with the closure: its index is in `done` already.
            let thread = self.feed.spawn(item, move |v| {
                drop(marker);
                v
            });
            self.running.insert(index, thread);
        }
        if self.running.is_empty() {
            return None;
        }
        let index = match self.done.get() {
            Ok(i) => i,
            Err(_) => return Some(Err(PoolError::TimedOut)),
        };
        let thread = self.running.remove(&index)?;
        Some(thread.and_then(|t| Ok(t.wait()?)))
    }
}

impl<I, F, T> std::fmt::Debug for ImapUnordered<I, F, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapUnordered")
            .field("in_flight", &self.running.len())
            .finish()
    }
}

/// Results of green threads collected in spawn order (eventlet's `GreenPile`), on a
/// [`GreenPool`] so that at most the pool's size run at once.
///
/// ```
/// use greenhub::{GreenPile, GreenPool};
///
/// let mut pile = GreenPile::new(&GreenPool::new(10));
/// for n in 0..5u32 {
///     pile.spawn(move || n * 10).unwrap();
/// }
/// let results: Vec<u32> = pile.map(Result::unwrap).collect();
/// assert_eq!(results, vec![0, 10, 20, 30, 40]);
/// ```
pub struct GreenPile<T> {
    pool: GreenPool,
    pending: VecDeque<GreenThread<T>>,
}

impl<T> std::fmt::Debug for GreenPile<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreenPile")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<T: Send + 'static> GreenPile<T> {
    /// A pile spawning on `pool`.
    pub fn new(pool: &GreenPool) -> GreenPile<T> {
        GreenPile {
            pool: pool.clone(),
            pending: VecDeque::new(),
        }
    }

    /// Spawns `f` on the pool (waiting for a slot); its result comes out in spawn order.
    #[track_caller]
    pub fn spawn<F>(&mut self, f: F) -> Result<(), PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let t = self.pool.spawn(f)?;
        self.pending.push_back(t);
        Ok(())
    }

    /// Results not yet taken.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether every result has been taken.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl<T: Send + 'static> Iterator for GreenPile<T> {
    type Item = Result<T, PoolError>;

    fn next(&mut self) -> Option<Self::Item> {
        let t = self.pending.pop_front()?;
        Some(t.wait().map_err(PoolError::from))
    }
}
