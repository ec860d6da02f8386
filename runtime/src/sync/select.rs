//! [`Select`]: one wait on several things at once (Go's `select`, gevent's `wait` and
//! `iwait`): queue gets, events, the ends of green threads, timers, signals and descriptor
//! readiness.
//!
//! ```
//! use std::time::Duration;
//! use greenhub::{Event, Queue, Select};
//!
//! let jobs: Queue<u32> = Queue::unbounded();
//! let stop: Event = Event::new();
//! jobs.put(7).unwrap();
//!
//! let mut sel = Select::new();
//! let job = sel.get(&jobs);
//! let stopped = sel.event(&stop);
//! let tick = sel.after(Duration::from_secs(1));
//! sel.wait().unwrap();
//! if let Some(item) = job.take() {
//!     assert_eq!(item, Ok(7)); // taken from the queue: exactly one item, by this select
//! } else if stopped.take().is_some() || tick.take().is_some() {
//!     unreachable!("the queue had an item, and ready branches are taken in order");
//! }
//! ```

// How it works: a select is one `Waiter` whose token sits in the waiter list of every
// branch's object at once. Objects hand things to waiters only through the token's one-time
// wake, so the first object to hand something over wins, and every other object finds the
// token woken and keeps what it would have handed (a queue keeps its item). A branch whose
// object is ready when it is armed wakes the token itself. What a branch was handed but did
// not win with (a killed wait) goes back where it came from.
//
// Each object adds its own branch method to `Select` in its own file (`Select::get` in
// `queue.rs`, `Select::readable` in the `net` layer), through the `Arm` trait here, so this
// file knows no object but green threads and timers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;

use greenhub_snapshot::{ObjectInfo, ObjectKind, WaitOn};

use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::timeout::{IsTimeout, TimedOut};
use crate::core::token::Token;
use crate::core::wait::Waiter;
use crate::green::thread::{EndWatch, GreenThread};

static KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("select"));

/// How many characters of the branches' description the snapshot shows as the select's name.
const MAX_NAME: usize = 200;

/// Why [`Select::wait`] returned no branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum SelectError {
    /// The wait's timeout or the enclosing deadline passed before any branch fired.
    #[error("timed out: no branch of the select fired before the deadline")]
    TimedOut,
    /// Every branch has fired in earlier waits (or none was added): nothing is left to wait
    /// for. Add branches, or build a new select.
    #[error("every branch of the select has fired already; nothing is left to wait for")]
    Exhausted,
}

impl From<TimedOut> for SelectError {
    fn from(_: TimedOut) -> SelectError {
        SelectError::TimedOut
    }
}

impl IsTimeout for SelectError {
    fn is_timeout(&self) -> bool {
        matches!(self, SelectError::TimedOut)
    }
}

/// One branch of a [`Select`]: what it fired with, once it has.
///
/// Returned by the method that added the branch; [`Key::take`] gives the branch's value after
/// the wait that fired it (and `None` for every other branch).
pub struct Key<V> {
    index: usize,
    cell: Arc<Mutex<Option<V>>>,
}

impl<V> Key<V> {
    /// The branch's index: what [`Select::wait`] returns when this branch fires.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The value the branch fired with, once: `None` if it has not fired (or was taken).
    pub fn take(&self) -> Option<V> {
        self.cell.lock().take()
    }
}

impl<V> std::fmt::Debug for Key<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("index", &self.index)
            .field("fired", &self.cell.lock().is_some())
            .finish()
    }
}

/// The branch's side of a [`Key`]: where a branch puts its value when it wins.
pub(crate) struct Outcome<V>(Arc<Mutex<Option<V>>>);

impl<V> Outcome<V> {
    /// Records the value the branch fired with.
    pub(crate) fn set(&self, value: V) {
        *self.0.lock() = Some(value);
    }
}

/// A branch of a select, as each object implements it.
///
/// The select calls, for every wait: [`Arm::arm`] on each live branch in order (until the
/// token is woken), then after the wait [`Arm::settle`] until one branch fires, then
/// [`Arm::disarm`] on every live branch, the winner included. If the wait unwinds (a kill),
/// only `disarm` runs.
pub(crate) trait Arm {
    /// Puts the wait's token among the object's waiters, or, if the object is ready now,
    /// takes what it offers and claims the token ([`Token::claim`]); if the claim fails
    /// (another branch won meanwhile), gives it back at once.
    fn arm(&mut self, token: &Arc<Token>);

    /// After the wait: whether this branch fired, recording its value in its key if so.
    /// With `handed_only`, only a branch that was handed something (an item, a value) fires;
    /// without, also one whose object is ready in another way (a closed queue, an ended
    /// thread, a due timer).
    fn settle(&mut self, handed_only: bool) -> bool;

    /// The wait is over: give back anything handed and not settled, leave the object.
    fn disarm(&mut self);

    /// When the branch fires by itself (a timer).
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// What the branch waits on, for the snapshot: `queue "jobs" #6`, `fd 9 (read)`.
    fn describe(&self) -> String;
}

struct Branch<'a> {
    arm: Box<dyn Arm + 'a>,
    spent: bool,
}

/// A wait on several things at once: the first branch to fire ends it (Go's `select`,
/// gevent's `wait(count=1)`), and waiting again waits for the branches that have not fired
/// yet (gevent's `iwait`).
///
/// Add branches with [`Select::get`] (a queue), [`Select::event`], [`Select::join`] (a green
/// thread's end), [`Select::after`] and [`Select::at`] (timers), [`Select::signal`] and
/// [`Select::readable`] / [`Select::writable`] (descriptors); each returns a [`Key`] that
/// holds the branch's value once it fires. Then [`Select::wait`] returns the index of the
/// branch that fired.
///
/// - **Exactly once.** A queue branch takes exactly one item, and only when it wins: when
///   another branch wins, the deadline passes or the thread is killed, the queue keeps the
///   item (or gets it back) for its other getters.
/// - **Order.** When several branches are ready at once, the first added wins (like tokio's
///   `biased` select). A busy first branch can starve the others: put the one that must not
///   wait behind (a stop event) first.
/// - **Waits** honour the enclosing deadline scopes and kill, from green threads and plain OS
///   threads alike. In the snapshot the thread waits on one object of kind `select`, named
///   after its branches (`queue "jobs" #6 | event #9 | timer`).
/// - **Cost.** An arm per branch and per wait, so a select per loop iteration is fine; a
///   descriptor branch also costs a duplicate descriptor while it waits (see
///   [`Select::readable`]).
///
/// ```
/// use std::time::Duration;
/// use greenhub::{Select, sleep, spawn};
///
/// // Each of several green threads, in the order they end (gevent's iwait).
/// let threads: Vec<_> = [30u64, 10, 20]
///     .into_iter()
///     .map(|ms| spawn(move || { sleep(Duration::from_millis(ms)).unwrap(); ms }))
///     .collect();
/// let mut sel = Select::new();
/// for t in &threads {
///     sel.join(t);
/// }
/// let mut order = Vec::new();
/// while let Ok(i) = sel.wait() {
///     order.push(threads[i].wait().unwrap());
/// }
/// assert_eq!(order.len(), 3);
/// ```
pub struct Select<'a> {
    branches: Vec<Branch<'a>>,
    listing: Option<Arc<Listing>>,
}

impl std::fmt::Debug for Select<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Select")
            .field("branches", &self.branches.len())
            .field("left", &self.left())
            .finish()
    }
}

impl Default for Select<'_> {
    fn default() -> Self {
        Select::new()
    }
}

impl<'a> Select<'a> {
    /// A select with no branches yet.
    pub fn new() -> Select<'a> {
        Select {
            branches: Vec::new(),
            listing: None,
        }
    }

    /// Adds a branch made by `make` from the outcome its key will read.
    pub(crate) fn add<V>(&mut self, make: impl FnOnce(Outcome<V>) -> Box<dyn Arm + 'a>) -> Key<V> {
        let cell = Arc::new(Mutex::new(None));
        let index = self.branches.len();
        self.branches.push(Branch {
            arm: make(Outcome(cell.clone())),
            spent: false,
        });
        Key { index, cell }
    }

    /// A branch that fires after `delay`.
    pub fn after(&mut self, delay: Duration) -> Key<()> {
        // A delay past the end of time never fires.
        match Instant::now().checked_add(delay) {
            Some(at) => self.at(at),
            None => self.add(|out| Box::new(TimerArm { at: None, out })),
        }
    }

    /// A branch that fires at `when` (at once if it has passed).
    pub fn at(&mut self, when: Instant) -> Key<()> {
        self.add(|out| {
            Box::new(TimerArm {
                at: Some(when),
                out,
            })
        })
    }

    /// A branch that fires when `thread` has ended. Its value stays in the thread, for
    /// [`GreenThread::wait`].
    pub fn join<T: Send + 'static>(&mut self, thread: &GreenThread<T>) -> Key<()> {
        let watched = thread.end_watch();
        self.add(|out| Box::new(JoinArm { watched, out }))
    }

    /// Branches that have not fired yet.
    pub fn left(&self) -> usize {
        self.branches.iter().filter(|b| !b.spent).count()
    }

    /// Waits until a branch fires and returns its index (the [`Key::index`] of its key, where
    /// its value now is), bounded by the enclosing deadline scopes.
    pub fn wait(&mut self) -> Result<usize, SelectError> {
        self.wait_until(None)
    }

    /// Like [`Select::wait`], giving up after `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<usize, SelectError> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&mut self, deadline: Option<Instant>) -> Result<usize, SelectError> {
        loop {
            if self.left() == 0 {
                return Err(SelectError::Exhausted);
            }
            let timer = self
                .branches
                .iter()
                .filter(|b| !b.spent)
                .filter_map(|b| b.arm.deadline())
                .min();
            let until = match (deadline, timer) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut waiter = Waiter::until(
                WaitOn::Object {
                    object: *KIND,
                    id: 0,
                },
                until,
            );
            let token = waiter.token().clone();
            let mut armed = Armed {
                branches: &mut self.branches,
                listing: None,
            };
            for b in armed.branches.iter_mut().filter(|b| !b.spent) {
                b.arm.arm(&token);
                if !token.is_waiting() {
                    break;
                }
            }
            if token.is_waiting() {
                let listing = self
                    .listing
                    .get_or_insert_with(|| Listing::new(armed.branches));
                listing.show(armed.branches);
                waiter.set_on(WaitOn::Object {
                    object: *KIND,
                    id: listing.reg.id(),
                });
                armed.listing = Some(listing.clone());
            }
            let woken = waiter.wait().is_ok();
            let fired = armed.settle(woken);
            drop(armed);
            match fired {
                Some(i) => return Ok(i),
                None if woken => continue,
                None => return Err(SelectError::TimedOut),
            }
        }
    }
}

/// The branches of one wait, disarmed however the wait ends (a kill unwinds through it).
struct Armed<'s, 'a> {
    branches: &'s mut Vec<Branch<'a>>,
    listing: Option<Arc<Listing>>,
}

impl Armed<'_, '_> {
    /// Finds the branch that fired: first one that was handed something (if the token was
    /// woken), then one that is ready now, each in the order added.
    fn settle(&mut self, woken: bool) -> Option<usize> {
        let passes: &[bool] = if woken { &[true, false] } else { &[false] };
        for &handed_only in passes {
            for (i, b) in self.branches.iter_mut().enumerate() {
                if !b.spent && b.arm.settle(handed_only) {
                    b.spent = true;
                    return Some(i);
                }
            }
        }
        None
    }
}

impl Drop for Armed<'_, '_> {
    fn drop(&mut self) {
        // Every branch, the winner included: each leaves its object and gives back what it
        // holds unsettled.
        for b in self.branches.iter_mut() {
            b.arm.disarm();
        }
        if let Some(l) = &self.listing {
            l.waiting.store(false, Ordering::Relaxed);
        }
    }
}

/// The select as the snapshot lists it while a thread parks on it: one object, named after
/// its branches.
struct Listing {
    reg: Registration,
    waiting: AtomicBool,
    /// The live branches' descriptions, and how many branches were live when they were made.
    shown: Mutex<(String, usize)>,
}

impl Listing {
    fn new(branches: &[Branch<'_>]) -> Arc<Listing> {
        let listing = Arc::new_cyclic(|weak: &Weak<Listing>| Listing {
            reg: Registration::new(weak.clone()),
            waiting: AtomicBool::new(false),
            shown: Mutex::new((String::new(), usize::MAX)),
        });
        listing.show(branches);
        listing
    }

    /// Marks the select waited on, with its live branches described.
    fn show(&self, branches: &[Branch<'_>]) {
        let live = branches.iter().filter(|b| !b.spent).count();
        let mut shown = self.shown.lock();
        if shown.1 != live {
            let mut name = String::new();
            for b in branches.iter().filter(|b| !b.spent) {
                if !name.is_empty() {
                    name.push_str(" | ");
                }
                name.push_str(&b.arm.describe());
                if name.len() > MAX_NAME {
                    let mut end = MAX_NAME;
                    while !name.is_char_boundary(end) {
                        end -= 1;
                    }
                    name.truncate(end);
                    name.push_str("...");
                    break;
                }
            }
            *shown = (name, live);
        }
        self.waiting.store(true, Ordering::Relaxed);
    }
}

impl Inspect for Listing {
    fn inspect(&self) -> ObjectInfo {
        let shown = self.shown.lock();
        let waiting = self.waiting.load(Ordering::Relaxed);
        ObjectInfo::new(*KIND, self.reg.id(), Some(&shown.0), usize::from(waiting))
            .count("branches", shown.1 as u64)
    }
}

/// How a branch names an object it waits on: `queue "jobs" #6`, or `queue #6` unnamed.
pub(crate) fn describe_object(kind: ObjectKind, id: u64, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{} \"{n}\" #{id}", kind.name()),
        None => format!("{} #{id}", kind.name()),
    }
}

struct TimerArm {
    at: Option<Instant>,
    out: Outcome<()>,
}

impl Arm for TimerArm {
    fn arm(&mut self, token: &Arc<Token>) {
        if self.at.is_some_and(|at| Instant::now() >= at) {
            token.claim();
        }
    }

    fn settle(&mut self, handed_only: bool) -> bool {
        let due = !handed_only && self.at.is_some_and(|at| Instant::now() >= at);
        if due {
            self.out.set(());
        }
        due
    }

    fn disarm(&mut self) {}

    fn deadline(&self) -> Option<Instant> {
        self.at
    }

    fn describe(&self) -> String {
        "timer".to_owned()
    }
}

struct JoinArm {
    watched: Arc<dyn EndWatch>,
    out: Outcome<()>,
}

impl Arm for JoinArm {
    fn arm(&mut self, token: &Arc<Token>) {
        if !self.watched.watch(token) {
            token.claim();
        }
    }

    fn settle(&mut self, handed_only: bool) -> bool {
        let ended = !handed_only && self.watched.ended();
        if ended {
            self.out.set(());
        }
        ended
    }

    fn disarm(&mut self) {}

    fn describe(&self) -> String {
        format!("join #{}", self.watched.id())
    }
}
