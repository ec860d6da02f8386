//! [`Semaphore`] (plain and bounded) and the green [`Mutex`], on one fair permit core, and
//! the mutex's [`Condition`] variable.
//!
//! ```
//! use greenhub::Semaphore;
//! use std::time::Duration;
//!
//! let slots = Semaphore::new(2); // at most two at a time
//! let workers: Vec<_> = (0..6)
//!     .map(|_| {
//!         let slots = slots.clone();
//!         greenhub::spawn(move || {
//!             let _permit = slots.acquire().unwrap(); // released when dropped, even if killed
//!             greenhub::sleep(Duration::from_millis(2)).unwrap();
//!         })
//!     })
//!     .collect();
//! for w in workers { w.wait().unwrap(); }
//! assert_eq!(slots.available(), 2);
//! ```

use std::cell::UnsafeCell;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::core::context;
use greenhub_snapshot::{ObjectInfo, ObjectKind, WaitOn};

use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::timeout::TimedOut;
use crate::core::token::Token;
use crate::core::wait::Waiter;
use crate::core::waitlist::WaitList;

/// [`Semaphore::release`] on a bounded semaphore whose permits are all available already.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("semaphore released more times than acquired (bounded to {limit} permits)")]
pub struct OverRelease {
    /// The semaphore's bound.
    pub limit: usize,
}

/// The permit core: a count, an optional bound, and a FIFO of waiters that permits are handed
/// to directly. Invariant: permits are available only while nobody waits.
struct Core {
    reg: Registration,
    name: OnceLock<String>,
    kind: ObjectKind,
    state: parking_lot::Mutex<CoreState>,
}

struct CoreState {
    permits: usize,
    limit: Option<usize>,
    /// Each waiter's green thread id, to record the holder of a mutex handed to it.
    waiters: WaitList<Option<u64>>,
    holder: Option<u64>,
    acquired: u64,
}

impl Inspect for Core {
    fn inspect(&self) -> ObjectInfo {
        let st = self.state.lock();
        let mut info = ObjectInfo::new(
            self.kind,
            self.reg.id(),
            self.name.get().map(String::as_str),
            st.waiters.live(),
        )
        .total("acquired", st.acquired);
        if self.kind == ObjectKind::MUTEX {
            info = info.count("locked", u64::from(st.permits == 0));
            if let Some(h) = st.holder.filter(|_| st.permits == 0) {
                info = info.with_detail(serde_json::json!({ "holder": h }));
            }
        } else {
            info = info.count("permits", st.permits as u64);
            if let Some(limit) = st.limit {
                info = info.count("limit", limit as u64);
            }
        }
        info
    }

    fn held_by(&self) -> Vec<u64> {
        self.holders()
    }

    /// A locked mutex's holder, when a green thread holds it. A semaphore lists none: any
    /// thread may release it.
    fn holders(&self) -> Vec<u64> {
        let st = self.state.lock();
        match st.holder {
            Some(h) if self.kind == ObjectKind::MUTEX && st.permits == 0 => vec![h],
            _ => Vec::new(),
        }
    }
}

impl Core {
    fn new(kind: ObjectKind, permits: usize, limit: Option<usize>) -> Arc<Core> {
        Arc::new_cyclic(|weak: &Weak<Core>| Core {
            reg: Registration::new(weak.clone()),
            name: OnceLock::new(),
            kind,
            state: parking_lot::Mutex::new(CoreState {
                permits,
                limit,
                waiters: WaitList::default(),
                holder: None,
                acquired: 0,
            }),
        })
    }

    fn try_acquire(&self) -> bool {
        let mut st = self.state.lock();
        if st.permits > 0 {
            st.permits -= 1;
            st.acquired += 1;
            st.holder = context::current_id();
            true
        } else {
            false
        }
    }

    fn acquire_until(&self, deadline: Option<Instant>) -> Result<(), TimedOut> {
        let (waiter, token) = {
            let mut st = self.state.lock();
            if st.permits > 0 {
                st.permits -= 1;
                st.acquired += 1;
                st.holder = context::current_id();
                return Ok(());
            }
            let on = WaitOn::Object {
                object: self.kind,
                id: self.reg.id(),
            };
            let waiter = Waiter::until(on, deadline);
            let token = waiter.token().clone();
            st.waiters.push(token.clone(), context::current_id());
            (waiter, token)
        };
        let guard = ReleaseIfGranted {
            core: self,
            token: &token,
        };
        let r = waiter.wait();
        std::mem::forget(guard);
        r
    }

    /// Hands the permit to the first waiter, or makes it available.
    fn release(&self) -> Result<(), OverRelease> {
        let mut st = self.state.lock();
        if let Some(holder) = st.waiters.wake_first() {
            st.acquired += 1;
            st.holder = holder;
            return Ok(());
        }
        if let Some(limit) = st.limit
            && st.permits >= limit
        {
            return Err(OverRelease { limit });
        }
        st.permits += 1;
        Ok(())
    }
}

/// Gives back a permit granted to a waiter that unwinds (killed) before it could use it.
struct ReleaseIfGranted<'a> {
    core: &'a Core,
    token: &'a Arc<Token>,
}

impl Drop for ReleaseIfGranted<'_> {
    fn drop(&mut self) {
        // The waiter has given up by now (its token is abandoned) unless it was granted.
        if self.token.is_woken() {
            let _ = self.core.release();
        }
    }
}

/// A counting semaphore (eventlet's and gevent's `Semaphore` and `BoundedSemaphore`).
///
/// A handle: clones share the same permits. [`Semaphore::acquire`] returns a [`Permit`] that
/// gives the permit back when dropped, so a killed or panicking holder never leaks one; a
/// permit can also be kept with [`Permit::forget`] and returned later with
/// [`Semaphore::release`], eventlet-style. A semaphore made with [`Semaphore::bounded`] refuses
/// a release beyond its initial count ([`OverRelease`]).
///
/// Waiters are served in arrival order. In the snapshot it is an object of kind `semaphore`
/// with the counts `permits` and `limit` (when bounded), and the total `acquired`.
#[derive(Clone)]
pub struct Semaphore {
    core: Arc<Core>,
}

impl std::fmt::Debug for Semaphore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semaphore")
            .field("id", &self.core.reg.id())
            .field("available", &self.available())
            .finish()
    }
}

impl Semaphore {
    /// A semaphore with `permits` permits; [`Semaphore::release`] may raise the count beyond.
    pub fn new(permits: usize) -> Semaphore {
        Semaphore {
            core: Core::new(ObjectKind::SEMAPHORE, permits, None),
        }
    }

    /// A bounded semaphore: never more than `permits` available; over-release is an error.
    pub fn bounded(permits: usize) -> Semaphore {
        Semaphore {
            core: Core::new(ObjectKind::SEMAPHORE, permits, Some(permits)),
        }
    }

    /// Names the semaphore in the snapshot (the first name given sticks).
    pub fn named(self, name: impl Into<String>) -> Semaphore {
        let _ = self.core.name.set(name.into());
        self
    }

    /// The semaphore's id in the registry.
    pub fn id(&self) -> u64 {
        self.core.reg.id()
    }

    /// Takes a permit, waiting for one (bounded by the enclosing deadline scopes).
    pub fn acquire(&self) -> Result<Permit<'_>, TimedOut> {
        self.core.acquire_until(None)?;
        Ok(Permit { sem: self })
    }

    /// Like [`Semaphore::acquire`], giving up after `timeout`.
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<Permit<'_>, TimedOut> {
        self.core
            .acquire_until(Instant::now().checked_add(timeout))?;
        Ok(Permit { sem: self })
    }

    /// Takes a permit if one is available now.
    pub fn try_acquire(&self) -> Option<Permit<'_>> {
        // `then`, not `then_some`: a permit built and dropped on failure would release one.
        self.core.try_acquire().then(|| Permit { sem: self })
    }

    /// Adds a permit: hands it to the first waiter, or makes it available.
    pub fn release(&self) -> Result<(), OverRelease> {
        self.core.release()
    }

    /// Permits available now.
    pub fn available(&self) -> usize {
        self.core.state.lock().permits
    }

    /// Threads waiting for a permit now.
    pub fn waiting(&self) -> usize {
        self.core.state.lock().waiters.live()
    }
}

/// A permit of a [`Semaphore`], given back when dropped.
#[derive(Debug)]
#[must_use = "the permit is given back as soon as it is dropped"]
pub struct Permit<'a> {
    sem: &'a Semaphore,
}

impl Permit<'_> {
    /// Keeps the permit taken: give it back later with [`Semaphore::release`].
    pub fn forget(self) {
        std::mem::forget(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // A permit that was taken can always be given back.
        let _ = self.sem.core.release();
    }
}

/// A mutual-exclusion lock for green threads: waiting for it parks the green thread, not the
/// worker (a `std::sync::Mutex` held across a wait blocks the worker; see the crate docs).
///
/// Waiters get the lock in arrival order. The guard releases it when dropped, and a killed or
/// panicking holder drops its guard while unwinding, so the lock is never left held; there is
/// no poisoning. In the snapshot it is an object of kind `mutex` with the count `locked`, the
/// total `acquired` and, when a green thread holds it, the detail `{"holder": id}`.
///
/// ```
/// use std::sync::Arc;
/// use greenhub::Mutex;
///
/// let total = Arc::new(Mutex::new(0u64));
/// let adders: Vec<_> = (0..10)
///     .map(|_| {
///         let total = total.clone();
///         greenhub::spawn(move || {
///             let mut t = total.lock().unwrap();
///             let seen = *t;
///             greenhub::yield_now(); // safe: other green threads wait for the lock
///             *t = seen + 1;
///         })
///     })
///     .collect();
/// for a in adders { a.wait().unwrap(); }
/// assert_eq!(*total.lock().unwrap(), 10);
/// ```
pub struct Mutex<T: ?Sized> {
    core: Arc<Core>,
    data: UnsafeCell<T>,
}

// SAFETY: as for `std::sync::Mutex`: the permit core gives one holder at a time access to the
// data, so sharing the mutex only needs the data to be sendable between threads.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

impl<T: ?Sized> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field("id", &self.core.reg.id())
            .field("locked", &(self.core.state.lock().permits == 0))
            .finish()
    }
}

impl<T> Mutex<T> {
    /// A new, unlocked mutex.
    pub fn new(value: T) -> Mutex<T> {
        Mutex {
            core: Core::new(ObjectKind::MUTEX, 1, Some(1)),
            data: UnsafeCell::new(value),
        }
    }

    /// Names the mutex in the snapshot (the first name given sticks).
    pub fn named(self, name: impl Into<String>) -> Mutex<T> {
        let _ = self.core.name.set(name.into());
        self
    }

    /// The protected value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> Mutex<T> {
    /// The mutex's id in the registry.
    pub fn id(&self) -> u64 {
        self.core.reg.id()
    }

    /// Locks, waiting for the current holder (bounded by the enclosing deadline scopes).
    pub fn lock(&self) -> Result<MutexGuard<'_, T>, TimedOut> {
        self.core.acquire_until(None)?;
        Ok(MutexGuard { mutex: self })
    }

    /// Like [`Mutex::lock`], giving up after `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<MutexGuard<'_, T>, TimedOut> {
        self.core
            .acquire_until(Instant::now().checked_add(timeout))?;
        Ok(MutexGuard { mutex: self })
    }

    /// Locks if the mutex is free now.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        self.core.try_acquire().then(|| MutexGuard { mutex: self })
    }

    /// Whether the mutex is held now.
    pub fn is_locked(&self) -> bool {
        self.core.state.lock().permits == 0
    }

    /// The protected value, through an exclusive reference (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// Access to the value of a locked [`Mutex`]; unlocks when dropped.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct MutexGuard<'a, T: ?Sized> {
    mutex: &'a Mutex<T>,
}

// SAFETY: the guard only hands out `&T` to other threads when shared.
unsafe impl<T: ?Sized + Sync> Sync for MutexGuard<'_, T> {}

impl<T: ?Sized> std::ops::Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the mutex's only permit.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T: ?Sized> std::ops::DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the mutex's only permit.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T: ?Sized + std::fmt::Debug> std::fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: ?Sized> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        let _ = self.mutex.core.release();
    }
}

/// A condition variable for the green [`Mutex`] (Python's `threading.Condition`, Go's
/// `sync.Cond`): [`Condition::wait`] unlocks the mutex and waits for a notification, then
/// locks it again. Waiters are notified in arrival order; a notification finds every thread
/// that was waiting when it was sent (a wait joins the list before it unlocks, so none is
/// lost between the two). Waits are bounded by deadline scopes and end on a kill.
///
/// ```
/// use std::sync::Arc;
/// use greenhub::{Condition, Mutex};
///
/// let state = Arc::new((Mutex::new(false), Condition::new()));
/// let s = state.clone();
/// let waiter = greenhub::spawn(move || {
///     let (ready, cond) = &*s;
///     let mut r = ready.lock().unwrap();
///     while !*r {
///         r = cond.wait(r).unwrap();
///     }
/// });
/// let (ready, cond) = &*state;
/// *ready.lock().unwrap() = true;
/// cond.notify_all();
/// waiter.wait().unwrap();
/// ```
pub struct Condition {
    inner: Arc<CondInner>,
}

struct CondInner {
    reg: Registration,
    waiters: parking_lot::Mutex<WaitList<()>>,
}

impl Inspect for CondInner {
    fn inspect(&self) -> ObjectInfo {
        ObjectInfo::new(*CONDITION, self.reg.id(), None, self.waiters.lock().live())
    }
}

/// The kind of a condition variable in the snapshot.
static CONDITION: std::sync::LazyLock<ObjectKind> =
    std::sync::LazyLock::new(|| ObjectKind::named("condition"));

impl Default for Condition {
    fn default() -> Self {
        Condition::new()
    }
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("id", &self.inner.reg.id())
            .finish()
    }
}

impl Condition {
    /// A condition nobody waits on.
    pub fn new() -> Condition {
        Condition {
            inner: Arc::new_cyclic(|weak: &Weak<CondInner>| CondInner {
                reg: Registration::new(weak.clone()),
                waiters: parking_lot::Mutex::new(WaitList::default()),
            }),
        }
    }

    /// Unlocks `guard`'s mutex, waits for a notification, and locks it again. Past the
    /// enclosing deadline (while waiting for the notification or for the lock) it returns
    /// `Err(TimedOut)` with the mutex unlocked.
    pub fn wait<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
    ) -> Result<MutexGuard<'a, T>, TimedOut> {
        self.wait_until(guard, None)
    }

    /// Like [`Condition::wait`], giving up after `timeout`.
    pub fn wait_timeout<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        timeout: Duration,
    ) -> Result<MutexGuard<'a, T>, TimedOut> {
        self.wait_until(guard, Instant::now().checked_add(timeout))
    }

    fn wait_until<'a, T: ?Sized>(
        &self,
        guard: MutexGuard<'a, T>,
        deadline: Option<Instant>,
    ) -> Result<MutexGuard<'a, T>, TimedOut> {
        let mutex = guard.mutex;
        let on = WaitOn::Object {
            object: *CONDITION,
            id: self.inner.reg.id(),
        };
        let waiter = Waiter::until(on, deadline);
        let deadline = waiter.deadline();
        // On the list before the mutex is unlocked: a notification sent after the unlock
        // finds this wait.
        self.inner.waiters.lock().push(waiter.token().clone(), ());
        drop(guard);
        waiter.wait()?;
        mutex.core.acquire_until(deadline)?;
        Ok(MutexGuard { mutex })
    }

    /// Wakes the thread that has waited longest, if any; true if one was woken.
    pub fn notify_one(&self) -> bool {
        self.inner.waiters.lock().wake_first().is_some()
    }

    /// Wakes every thread waiting now.
    pub fn notify_all(&self) {
        self.inner.waiters.lock().wake_all(|_| {});
    }
}
