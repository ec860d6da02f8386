//! [`RwLock`]: a reader-writer lock for green threads, fair in arrival order.
//!
//! Readers share the lock, a writer has it alone. Waiters are served in arrival order: a reader
//! that arrives while a writer waits queues behind it (no writer starves), and when a writer
//! releases the lock, the readers at the front of the queue all get it at once. A lock is
//! handed to its next holder, never raced for; a waiter killed after it was handed the lock
//! passes it on. Guards release it when dropped, unwinding included: there is no poisoning.
//!
//! ```
//! use std::sync::Arc;
//! use greenhub::RwLock;
//!
//! let config = Arc::new(RwLock::new(vec![1, 2, 3]));
//! let readers: Vec<_> = (0..4)
//!     .map(|_| {
//!         let config = config.clone();
//!         greenhub::spawn(move || config.read().unwrap().len())
//!     })
//!     .collect();
//! config.write().unwrap().push(4);
//! for r in readers {
//!     assert!(r.wait().unwrap() >= 3);
//! }
//! assert_eq!(config.read().unwrap().len(), 4);
//! ```

use std::cell::UnsafeCell;
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::{Duration, Instant};

use greenhub_snapshot::{ObjectInfo, ObjectKind, WaitOn};
use parking_lot::Mutex;

use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::timeout::TimedOut;
use crate::core::token::Token;
use crate::core::wait::Waiter;
use crate::core::waitlist::WaitList;

/// The kind of a reader-writer lock in the snapshot.
static KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("rwlock"));

/// What a waiter wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    Read,
    Write,
}

struct State {
    readers: usize,
    writer: bool,
    waiters: WaitList<Want>,
}

impl State {
    /// Hands the lock to the waiters at the front that can have it now: a writer alone once
    /// nobody holds it, or every reader up to the next writer while no writer holds it.
    fn grant(&mut self) {
        while let Some(&want) = self.waiters.front() {
            match want {
                Want::Write => {
                    if self.writer || self.readers > 0 {
                        return;
                    }
                    if self.waiters.wake_front() {
                        self.writer = true;
                        return;
                    }
                }
                Want::Read => {
                    if self.writer {
                        return;
                    }
                    if self.waiters.wake_front() {
                        self.readers += 1;
                    }
                }
            }
        }
    }

    /// Takes the lock for `want` if it is free for it and nobody waits to pass.
    fn try_take(&mut self, want: Want) -> bool {
        let free = match want {
            Want::Read => !self.writer,
            Want::Write => !self.writer && self.readers == 0,
        };
        if !free || self.waiters.front().is_some() {
            return false;
        }
        match want {
            Want::Read => self.readers += 1,
            Want::Write => self.writer = true,
        }
        true
    }

    fn release(&mut self, had: Want) {
        match had {
            Want::Read => self.readers -= 1,
            Want::Write => self.writer = false,
        }
        self.grant();
    }
}

struct Core {
    reg: Registration,
    name: OnceLock<String>,
    state: Mutex<State>,
}

impl Inspect for Core {
    fn inspect(&self) -> ObjectInfo {
        let st = self.state.lock();
        ObjectInfo::new(
            *KIND,
            self.reg.id(),
            self.name.get().map(String::as_str),
            st.waiters.live(),
        )
        .count("readers", st.readers as u64)
        .count("writer", u64::from(st.writer))
    }
}

impl Core {
    fn acquire(&self, want: Want, deadline: Option<Instant>) -> Result<(), TimedOut> {
        let (waiter, token) = {
            let mut st = self.state.lock();
            if st.try_take(want) {
                return Ok(());
            }
            let on = WaitOn::Object {
                object: *KIND,
                id: self.reg.id(),
            };
            let waiter = Waiter::until(on, deadline);
            let token = waiter.token().clone();
            st.waiters.push(token.clone(), want);
            (waiter, token)
        };
        let guard = PassOnIfGranted {
            core: self,
            token: &token,
            want,
        };
        let r = waiter.wait();
        std::mem::forget(guard);
        r
    }

    fn try_acquire(&self, want: Want) -> bool {
        self.state.lock().try_take(want)
    }
}

/// Passes on a lock handed to a waiter that unwinds (killed) before it could use it.
struct PassOnIfGranted<'a> {
    core: &'a Core,
    token: &'a Arc<Token>,
    want: Want,
}

impl Drop for PassOnIfGranted<'_> {
    fn drop(&mut self) {
        if self.token.is_woken() {
            self.core.state.lock().release(self.want);
        }
    }
}

/// A reader-writer lock for green threads: any number of readers or one writer, served in
/// arrival order (see the [module docs](self)). Waiting parks the green thread, not the
/// worker; waits are bounded by deadline scopes and end on a kill. In the snapshot it is an
/// object of kind `rwlock` with the counts `readers` and `writer`.
pub struct RwLock<T: ?Sized> {
    core: Arc<Core>,
    data: UnsafeCell<T>,
}

// SAFETY: as for `std::sync::RwLock`: the core gives shared access to readers and exclusive
// access to one writer, so sharing needs `Send` for the writer and `Sync` for the readers.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}
// SAFETY: see above.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}

impl<T: Default> Default for RwLock<T> {
    fn default() -> Self {
        RwLock::new(T::default())
    }
}

impl<T: ?Sized> std::fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.core.state.lock();
        f.debug_struct("RwLock")
            .field("id", &self.core.reg.id())
            .field("readers", &st.readers)
            .field("writer", &st.writer)
            .finish()
    }
}

impl<T> RwLock<T> {
    /// A new lock, free.
    pub fn new(value: T) -> RwLock<T> {
        RwLock {
            core: Arc::new_cyclic(|weak: &Weak<Core>| Core {
                reg: Registration::new(weak.clone()),
                name: OnceLock::new(),
                state: Mutex::new(State {
                    readers: 0,
                    writer: false,
                    waiters: WaitList::default(),
                }),
            }),
            data: UnsafeCell::new(value),
        }
    }

    /// Names the lock in the snapshot (the first name given sticks).
    pub fn named(self, name: impl Into<String>) -> RwLock<T> {
        let _ = self.core.name.set(name.into());
        self
    }

    /// The protected value.
    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> RwLock<T> {
    /// The lock's id in the registry.
    pub fn id(&self) -> u64 {
        self.core.reg.id()
    }

    /// Shared access, waiting behind a writer (and behind writers that arrived first).
    pub fn read(&self) -> Result<ReadGuard<'_, T>, TimedOut> {
        self.core.acquire(Want::Read, None)?;
        Ok(ReadGuard { lock: self })
    }

    /// Like [`RwLock::read`], giving up after `timeout`.
    pub fn read_timeout(&self, timeout: Duration) -> Result<ReadGuard<'_, T>, TimedOut> {
        self.core
            .acquire(Want::Read, Instant::now().checked_add(timeout))?;
        Ok(ReadGuard { lock: self })
    }

    /// Shared access if it can be had now without passing anyone.
    pub fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        self.core
            .try_acquire(Want::Read)
            .then(|| ReadGuard { lock: self })
    }

    /// Exclusive access, waiting for the readers and writers before it.
    pub fn write(&self) -> Result<WriteGuard<'_, T>, TimedOut> {
        self.core.acquire(Want::Write, None)?;
        Ok(WriteGuard { lock: self })
    }

    /// Like [`RwLock::write`], giving up after `timeout`.
    pub fn write_timeout(&self, timeout: Duration) -> Result<WriteGuard<'_, T>, TimedOut> {
        self.core
            .acquire(Want::Write, Instant::now().checked_add(timeout))?;
        Ok(WriteGuard { lock: self })
    }

    /// Exclusive access if nobody holds the lock or waits for it now.
    pub fn try_write(&self) -> Option<WriteGuard<'_, T>> {
        self.core
            .try_acquire(Want::Write)
            .then(|| WriteGuard { lock: self })
    }

    /// The protected value, through an exclusive reference (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// Shared access to the value of a read-locked [`RwLock`]; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ReadGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

/// Exclusive access to the value of a write-locked [`RwLock`]; releases it when dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct WriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

// SAFETY: a read guard only hands out `&T`.
unsafe impl<T: ?Sized + Sync> Sync for ReadGuard<'_, T> {}
// SAFETY: a write guard shared between threads only hands out `&T`.
unsafe impl<T: ?Sized + Sync> Sync for WriteGuard<'_, T> {}

impl<T: ?Sized> std::ops::Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard is one of the lock's readers: no writer holds it.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> std::ops::Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard is the lock's only holder.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> std::ops::DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard is the lock's only holder.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T: ?Sized> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.core.state.lock().release(Want::Read);
    }
}

impl<T: ?Sized> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.core.state.lock().release(Want::Write);
    }
}
