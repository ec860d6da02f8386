//! [`Queue`]: FIFO, LIFO and priority queues, unbounded, bounded or rendezvous, shared by green
//! threads and OS threads (eventlet's and gevent's `queue` modules).
//!
//! ```
//! use greenhub::Queue;
//!
//! let jobs: Queue<u32> = Queue::bounded(2); // put waits while two items are queued
//! let worker = {
//!     let jobs = jobs.clone();
//!     greenhub::spawn(move || {
//!         let mut sum = 0;
//!         while let Ok(n) = jobs.get() {   // Err(Closed) once closed and drained
//!             sum += n;
//!             jobs.task_done().unwrap();
//!         }
//!         sum
//!     })
//! };
//! for n in 1..=10 {
//!     jobs.put(n).unwrap();
//! }
//! jobs.join().unwrap(); // every item taken and marked done
//! jobs.close();
//! assert_eq!(worker.wait().unwrap(), 55);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;

use greenhub_snapshot::{ObjectInfo, ObjectKind, WaitOn};

use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::timeout::{IsTimeout, TimedOut};
use crate::core::token::Token;
use crate::core::wait::Waiter;
use crate::core::waitlist::{self, Slot, WaitList};
use crate::sync::select::{self, Arm, Key, Outcome, Select};

/// Why a put did not queue its item. The item comes back in every case.
#[derive(Clone, Copy, PartialEq, Eq, Error)]
pub enum PutError<T> {
    /// [`Queue::try_put`] on a full queue (or on a rendezvous queue nobody is getting from).
    #[error("the queue is full")]
    Full(T),
    /// The put's timeout or the enclosing deadline passed while the queue stayed full.
    #[error("timed out waiting for room in the queue")]
    TimedOut(T),
    /// The queue was closed, before the put or while it waited.
    #[error("the queue is closed")]
    Closed(T),
}

impl<T> PutError<T> {
    /// The item that was not queued.
    pub fn into_inner(self) -> T {
        match self {
            PutError::Full(v) | PutError::TimedOut(v) | PutError::Closed(v) => v,
        }
    }
}

impl<T> std::fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PutError::Full(_) => "Full(..)",
            PutError::TimedOut(_) => "TimedOut(..)",
            PutError::Closed(_) => "Closed(..)",
        })
    }
}

/// Why a get returned no item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum GetError {
    /// [`Queue::try_get`] on an empty queue.
    #[error("the queue is empty")]
    Empty,
    /// The get's timeout or the enclosing deadline passed while the queue stayed empty.
    #[error("timed out waiting for an item")]
    TimedOut,
    /// The queue is closed and drained: no item will ever come.
    #[error("the queue is closed and empty")]
    Closed,
}

impl From<TimedOut> for GetError {
    fn from(_: TimedOut) -> GetError {
        GetError::TimedOut
    }
}

impl IsTimeout for GetError {
    fn is_timeout(&self) -> bool {
        matches!(self, GetError::TimedOut)
    }
}

/// A put error carries its item back, so it cannot be made from a bare [`TimedOut`]; it still
/// answers whether it timed out.
impl<T> IsTimeout for PutError<T> {
    fn is_timeout(&self) -> bool {
        matches!(self, PutError::TimedOut(_))
    }
}

/// [`Queue::task_done`] called more often than items were put.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("task_done called more times than items were put in the queue")]
pub struct TaskDoneError;

/// How a queue orders its items.
trait Buffer<T>: Send {
    fn push(&mut self, v: T);
    fn pop(&mut self) -> Option<T>;
    /// Puts an item back where `pop` took it from.
    fn unpop(&mut self, v: T);
    fn len(&self) -> usize;
}

struct Fifo<T>(VecDeque<T>);
struct Lifo<T>(Vec<T>);
struct Priority<T>(BinaryHeap<Reverse<T>>);

impl<T: Send> Buffer<T> for Fifo<T> {
    fn push(&mut self, v: T) {
        self.0.push_back(v)
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop_front()
    }
    fn unpop(&mut self, v: T) {
        self.0.push_front(v)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl<T: Send> Buffer<T> for Lifo<T> {
    fn push(&mut self, v: T) {
        self.0.push(v)
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop()
    }
    fn unpop(&mut self, v: T) {
        self.0.push(v)
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

impl<T: Ord + Send> Buffer<T> for Priority<T> {
    fn push(&mut self, v: T) {
        self.0.push(Reverse(v))
    }
    fn pop(&mut self) -> Option<T> {
        self.0.pop().map(|r| r.0)
    }
    fn unpop(&mut self, v: T) {
        self.0.push(Reverse(v))
    }
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// A queue of `T` for green threads and OS threads alike.
///
/// A handle: clones share the same queue. Build one with [`Queue::unbounded`],
/// [`Queue::bounded`] or [`Queue::builder`] (LIFO, priority, a name).
///
/// - **Capacity.** Unbounded: `put` never waits. Bounded: `put` waits while the queue is full.
///   Capacity 0 is a rendezvous: `put` waits until a `get` takes the item.
/// - **Fairness.** Waiting getters are served in arrival order, and so are waiting putters:
///   an item or a free place is handed to the first waiter, never raced for.
/// - **Waits** (`put`, `get`, `join`) honour the enclosing deadline scopes and kill, and lose
///   nothing: an item handed to a getter that is killed before it returns goes back to the
///   queue; a put that times out returns its item.
/// - **Close.** [`Queue::close`] refuses further puts (the item comes back in
///   [`PutError::Closed`]) and wakes every waiting putter the same way; getters drain what is
///   queued, then get [`GetError::Closed`].
/// - **Tasks.** Every item put counts as unfinished until a [`Queue::task_done`];
///   [`Queue::join`] waits until none is (Python's `Queue.join`).
///
/// In the snapshot it is an object of kind `queue` with the counts `len`, `capacity` (when
/// bounded), `unfinished`, `getters`, `putters`, `joiners` and `closed`, and the totals `puts`
/// and `gets`.
pub struct Queue<T> {
    inner: Arc<Inner<T>>,
}

struct Inner<T> {
    reg: Registration,
    name: OnceLock<String>,
    kind: ObjectKind,
    capacity: Option<usize>,
    state: Mutex<State<T>>,
}

struct State<T> {
    buf: Box<dyn Buffer<T>>,
    getters: WaitList<Slot<T>>,
    putters: WaitList<Slot<T>>,
    joiners: WaitList<()>,
    unfinished: usize,
    puts: u64,
    gets: u64,
    closed: bool,
}

impl<T> State<T> {
    /// Takes the next item: from the buffer (refilling it from the first waiting putter) or,
    /// on a rendezvous, straight from a putter.
    fn take(&mut self) -> Option<T> {
        let v = match self.buf.pop() {
            Some(v) => {
                if let Some(p) = self.putters.take_offer() {
                    self.buf.push(p);
                    self.put_done();
                }
                v
            }
            None => {
                let v = self.putters.take_offer()?;
                self.put_done();
                v
            }
        };
        self.gets += 1;
        Some(v)
    }

    fn put_done(&mut self) {
        self.unfinished += 1;
        self.puts += 1;
    }

    /// Returns an item a killed getter had been handed: to the next getter, or to the head.
    fn give_back(&mut self, v: T) {
        self.gets -= 1;
        if let Some(v) = self.getters.hand_off(v) {
            self.buf.unpop(v);
        } else {
            self.gets += 1;
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.state.lock();
        f.debug_struct("Queue")
            .field("id", &self.inner.reg.id())
            .field("len", &st.buf.len())
            .field("capacity", &self.inner.capacity)
            .field("closed", &st.closed)
            .finish()
    }
}

impl<T: Send> Inspect for Inner<T> {
    fn inspect(&self) -> ObjectInfo {
        let st = self.state.lock();
        let (getters, putters, joiners) = (st.getters.live(), st.putters.live(), st.joiners.live());
        let mut info = ObjectInfo::new(
            self.kind,
            self.reg.id(),
            self.name.get().map(String::as_str),
            getters + putters + joiners,
        )
        .count("len", st.buf.len() as u64)
        .count("unfinished", st.unfinished as u64)
        .count("getters", getters as u64)
        .count("putters", putters as u64)
        .count("joiners", joiners as u64)
        .total("puts", st.puts)
        .total("gets", st.gets)
        .count("closed", u64::from(st.closed));
        if let Some(c) = self.capacity {
            info = info.count("capacity", c as u64);
        }
        info
    }
}

/// Builds a [`Queue`]: order, capacity and name.
///
/// ```
/// use greenhub::Queue;
///
/// let q: Queue<u32> = Queue::builder().priority().build().named("jobs");
/// for n in [5, 1, 3] { q.put(n).unwrap(); }
/// assert_eq!(q.get(), Ok(1)); // lowest first, as in eventlet's and gevent's PriorityQueue
///
/// let stack: Queue<u32> = Queue::builder().lifo().bounded(8).build();
/// stack.put(1).unwrap();
/// stack.put(2).unwrap();
/// assert_eq!(stack.get(), Ok(2));
/// ```
pub struct QueueBuilder<T> {
    capacity: Option<usize>,
    kind: ObjectKind,
    make: fn() -> Box<dyn Buffer<T>>,
}

impl<T> std::fmt::Debug for QueueBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueBuilder")
            .field("capacity", &self.capacity)
            .field("kind", &self.kind)
            .finish()
    }
}

impl<T: Send + 'static> QueueBuilder<T> {
    /// At most `capacity` items queued; `put` waits while full. 0 makes a rendezvous queue.
    pub fn bounded(mut self, capacity: usize) -> Self {
        self.capacity = Some(capacity);
        self
    }

    /// Last in, first out.
    pub fn lifo(mut self) -> Self {
        self.make = || Box::new(Lifo(Vec::new()));
        self
    }

    /// Lowest item first.
    pub fn priority(mut self) -> Self
    where
        T: Ord,
    {
        self.make = || Box::new(Priority(BinaryHeap::new()));
        self
    }

    /// The kind the queue shows as in the snapshot and in its waiters' [`WaitOn`] (`queue`
    /// unless set): a crate that builds, say, a thread pool's request queue on it sets its own.
    pub fn kind(mut self, kind: ObjectKind) -> Self {
        self.kind = kind;
        self
    }

    /// The queue.
    pub fn build(self) -> Queue<T> {
        let inner = Arc::new_cyclic(|weak: &Weak<Inner<T>>| Inner {
            reg: Registration::new(weak.clone()),
            name: OnceLock::new(),
            kind: self.kind,
            capacity: self.capacity,
            state: Mutex::new(State {
                buf: (self.make)(),
                getters: WaitList::default(),
                putters: WaitList::default(),
                joiners: WaitList::default(),
                unfinished: 0,
                puts: 0,
                gets: 0,
                closed: false,
            }),
        });
        Queue { inner }
    }
}

impl<T: Send + 'static> Queue<T> {
    /// Names the queue in the snapshot and the run info (`waiting on queue "jobs" #6`), as
    /// every greenhub object is named; a name is set once.
    pub fn named(self, name: impl Into<String>) -> Queue<T> {
        let _ = self.inner.name.set(name.into());
        self
    }

    /// A builder: FIFO and unbounded until told otherwise.
    pub fn builder() -> QueueBuilder<T> {
        QueueBuilder {
            capacity: None,
            kind: ObjectKind::QUEUE,
            make: || Box::new(Fifo(VecDeque::new())),
        }
    }

    /// An unbounded FIFO queue.
    pub fn unbounded() -> Queue<T> {
        Queue::builder().build()
    }

    /// A FIFO queue holding at most `capacity` items (0: rendezvous).
    pub fn bounded(capacity: usize) -> Queue<T> {
        Queue::builder().bounded(capacity).build()
    }

    /// The queue's id in the registry.
    pub fn id(&self) -> u64 {
        self.inner.reg.id()
    }

    /// The capacity (`None`: unbounded).
    pub fn capacity(&self) -> Option<usize> {
        self.inner.capacity
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        self.inner.state.lock().buf.len()
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether [`Queue::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.state.lock().closed
    }

    /// Threads (green or OS) waiting in `get` now.
    pub fn waiting_getters(&self) -> usize {
        self.inner.state.lock().getters.live()
    }

    /// Threads (green or OS) waiting in `put` for room now.
    pub fn waiting_putters(&self) -> usize {
        self.inner.state.lock().putters.live()
    }

    /// Items put and not yet marked done with [`Queue::task_done`].
    pub fn unfinished(&self) -> usize {
        self.inner.state.lock().unfinished
    }

    fn on(&self) -> WaitOn {
        WaitOn::Object {
            object: self.inner.kind,
            id: self.inner.reg.id(),
        }
    }

    /// Puts an item, waiting while the queue is full (bounded by the enclosing deadlines).
    pub fn put(&self, item: T) -> Result<(), PutError<T>> {
        self.put_until(item, None)
    }

    /// Like [`Queue::put`], giving up after `timeout` with the item in
    /// [`PutError::TimedOut`].
    pub fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        self.put_until(item, Instant::now().checked_add(timeout))
    }

    /// Puts an item if that needs no wait: [`PutError::Full`] otherwise.
    pub fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        let mut st = self.inner.state.lock();
        match self.put_now(&mut st, item) {
            Ok(()) => Ok(()),
            Err(PutError::TimedOut(v)) => Err(PutError::Full(v)),
            Err(e) => Err(e),
        }
    }

    /// Queues the item if it can go now; `Err(TimedOut(item))` means "must wait".
    fn put_now(&self, st: &mut State<T>, item: T) -> Result<(), PutError<T>> {
        if st.closed {
            return Err(PutError::Closed(item));
        }
        // A waiting getter means an empty buffer: hand the item over directly.
        let item = match st.getters.hand_off(item) {
            None => {
                st.put_done();
                st.gets += 1;
                return Ok(());
            }
            Some(item) => item,
        };
        if self.inner.capacity.is_none_or(|c| st.buf.len() < c) {
            st.buf.push(item);
            st.put_done();
            return Ok(());
        }
        Err(PutError::TimedOut(item))
    }

    fn put_until(&self, item: T, deadline: Option<Instant>) -> Result<(), PutError<T>> {
        let (waiter, slot) = {
            let mut st = self.inner.state.lock();
            let item = match self.put_now(&mut st, item) {
                Err(PutError::TimedOut(item)) => item,
                done => return done,
            };
            let waiter = Waiter::until(self.on(), deadline);
            let slot: Slot<T> = Arc::new(Mutex::new(Some(item)));
            st.putters.push(waiter.token().clone(), slot.clone());
            (waiter, slot)
        };
        let woken = waiter.wait();
        // An empty slot means a getter took the item; a full one, that the wait ended without
        // (deadline) or the queue was closed.
        let left = slot.lock().take();
        match (woken, left) {
            (_, None) => Ok(()),
            (Ok(()), Some(item)) => Err(PutError::Closed(item)),
            (Err(TimedOut), Some(item)) => Err(PutError::TimedOut(item)),
        }
    }

    /// Takes the next item, waiting while the queue is empty (bounded by the enclosing
    /// deadlines). After [`Queue::close`], drains what is queued, then returns
    /// [`GetError::Closed`].
    pub fn get(&self) -> Result<T, GetError> {
        self.get_until(None)
    }

    /// Like [`Queue::get`], giving up after `timeout`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T, GetError> {
        self.get_until(Instant::now().checked_add(timeout))
    }

    /// Takes the next item if there is one now: [`GetError::Empty`] otherwise.
    pub fn try_get(&self) -> Result<T, GetError> {
        let mut st = self.inner.state.lock();
        match st.take() {
            Some(v) => Ok(v),
            None if st.closed => Err(GetError::Closed),
            None => Err(GetError::Empty),
        }
    }

    fn get_until(&self, deadline: Option<Instant>) -> Result<T, GetError> {
        let (waiter, slot) = {
            let mut st = self.inner.state.lock();
            if let Some(v) = st.take() {
                return Ok(v);
            }
            if st.closed {
                return Err(GetError::Closed);
            }
            let waiter = Waiter::until(self.on(), deadline);
            let slot = waitlist::slot();
            st.getters.push(waiter.token().clone(), slot.clone());
            (waiter, slot)
        };
        let guard = GiveBack {
            inner: &self.inner,
            slot: &slot,
        };
        let woken = waiter.wait();
        std::mem::forget(guard);
        match woken {
            Ok(()) => slot.lock().take().ok_or(GetError::Closed),
            Err(TimedOut) => Err(GetError::TimedOut),
        }
    }

    /// Marks one item taken from the queue as processed.
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let mut st = self.inner.state.lock();
        if st.unfinished == 0 {
            return Err(TaskDoneError);
        }
        st.unfinished -= 1;
        if st.unfinished == 0 {
            st.joiners.wake_all(|_| {});
        }
        Ok(())
    }

    /// Waits until every item put has been marked done with [`Queue::task_done`].
    pub fn join(&self) -> Result<(), TimedOut> {
        self.join_until(None)
    }

    /// Like [`Queue::join`], giving up after `timeout`.
    pub fn join_timeout(&self, timeout: Duration) -> Result<(), TimedOut> {
        self.join_until(Instant::now().checked_add(timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<(), TimedOut> {
        let waiter = {
            let mut st = self.inner.state.lock();
            if st.unfinished == 0 {
                return Ok(());
            }
            let waiter = Waiter::until(self.on(), deadline);
            st.joiners.push(waiter.token().clone(), ());
            waiter
        };
        waiter.wait()
    }

    /// Closes the queue: puts fail from now on with their item returned, waiting putters get
    /// their item back in [`PutError::Closed`], and getters drain what is queued and then get
    /// [`GetError::Closed`]. Closing twice does nothing more.
    pub fn close(&self) {
        let mut st = self.inner.state.lock();
        st.closed = true;
        st.getters.wake_all(|_| {});
        st.putters.wake_all(|_| {});
    }
}

/// Puts back an item handed to a getter that unwinds (killed) before it could return it.
struct GiveBack<'a, T> {
    inner: &'a Inner<T>,
    slot: &'a Slot<T>,
}

impl<T> Drop for GiveBack<'_, T> {
    fn drop(&mut self) {
        // The queue's lock first: a hand-off in progress holds it, so the slot is settled.
        let mut st = self.inner.state.lock();
        if let Some(v) = self.slot.lock().take() {
            st.give_back(v);
        }
    }
}

/// A get from a queue as one branch of a wait on several things: the queue's side of
/// [`Select::get`], also used by objects built on a queue (a signal subscription's bell).
pub(crate) struct GetArm<T: Send + 'static> {
    queue: Queue<T>,
    /// Where the queue hands this wait its item: a new slot per wait, so that the entry a
    /// finished wait leaves in the getters' list never reaches a later one.
    slot: Slot<T>,
}

impl<T: Send + 'static> GetArm<T> {
    pub(crate) fn new(queue: &Queue<T>) -> GetArm<T> {
        GetArm {
            queue: queue.clone(),
            slot: waitlist::slot(),
        }
    }

    /// Joins the getters, or, if an item is there, claims the token and then takes it. The
    /// claim comes first: a take that failed to claim would have to put the item back, and a
    /// take can let a waiting putter's item into the buffer, which would then hold one too
    /// many.
    pub(crate) fn arm(&mut self, token: &Arc<Token>) {
        let mut st = self.queue.inner.state.lock();
        if st.buf.len() > 0 || st.putters.front().is_some() {
            if token.claim()
                && let Some(v) = st.take()
            {
                *self.slot.lock() = Some(v);
            }
            // Claimed with nothing taken (the putter gave up meanwhile): the select looks
            // at its branches again.
            return;
        }
        if st.closed {
            token.claim();
            return;
        }
        self.slot = waitlist::slot();
        st.getters.push(token.clone(), self.slot.clone());
    }

    /// The item the queue handed this wait, if any.
    pub(crate) fn handed(&mut self) -> Option<T> {
        self.slot.lock().take()
    }

    /// Whether the queue is closed and empty: a get would return [`GetError::Closed`].
    pub(crate) fn drained(&self) -> bool {
        let st = self.queue.inner.state.lock();
        st.closed && st.buf.len() == 0
    }

    /// Gives back an item handed and not taken.
    pub(crate) fn disarm(&mut self) {
        // The queue's lock first, as in `GiveBack`.
        let mut st = self.queue.inner.state.lock();
        if let Some(v) = self.slot.lock().take() {
            st.give_back(v);
        }
    }

    /// The queue, as a branch describes it.
    pub(crate) fn describe(&self) -> String {
        let inner = &self.queue.inner;
        select::describe_object(
            inner.kind,
            inner.reg.id(),
            inner.name.get().map(String::as_str),
        )
    }
}

struct QueueArm<T: Send + 'static> {
    get: GetArm<T>,
    out: Outcome<Result<T, GetError>>,
}

impl<T: Send + 'static> Arm for QueueArm<T> {
    fn arm(&mut self, token: &Arc<Token>) {
        self.get.arm(token);
    }

    fn settle(&mut self, handed_only: bool) -> bool {
        if let Some(v) = self.get.handed() {
            self.out.set(Ok(v));
            return true;
        }
        if !handed_only && self.get.drained() {
            self.out.set(Err(GetError::Closed));
            return true;
        }
        false
    }

    fn disarm(&mut self) {
        self.get.disarm();
    }

    fn describe(&self) -> String {
        self.get.describe()
    }
}

impl Select<'_> {
    /// A branch that takes the next item of `queue`: `Ok(item)`, or `Err(GetError::Closed)`
    /// once the queue is closed and drained. It takes an item only when it wins: otherwise
    /// the item stays in the queue (or goes back to it) for its other getters.
    ///
    /// ```
    /// use greenhub::{Queue, Select};
    ///
    /// let high: Queue<&str> = Queue::unbounded();
    /// let low: Queue<&str> = Queue::unbounded();
    /// low.put("later").unwrap();
    /// high.put("now").unwrap();
    /// let mut sel = Select::new();
    /// let h = sel.get(&high);
    /// let l = sel.get(&low);
    /// assert_eq!(sel.wait(), Ok(h.index()));
    /// assert_eq!(h.take(), Some(Ok("now")));
    /// assert_eq!(l.take(), None);
    /// assert_eq!(low.len(), 1); // untouched
    /// ```
    pub fn get<T: Send + 'static>(&mut self, queue: &Queue<T>) -> Key<Result<T, GetError>> {
        let get = GetArm::new(queue);
        self.add(|out| Box::new(QueueArm { get, out }))
    }
}
