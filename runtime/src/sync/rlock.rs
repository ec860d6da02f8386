//! [`RLock`]: a re-entrant lock for green threads (Python's and gevent's `RLock`): the thread
//! that holds it may lock it again, and it is free once every lock has been released.
//!
//! Waiters get it in arrival order, handed over by the releasing holder; a waiter killed after
//! it was handed the lock passes it on. Each green thread is its own owner (it keeps the lock
//! across waits, whatever worker runs it); a plain OS thread is an owner too. Guards release it
//! when dropped, unwinding included, and cannot leave the thread that took them.
//!
//! ```
//! use greenhub::RLock;
//!
//! let lock = RLock::new();
//! let outer = lock.lock().unwrap();
//! let inner = lock.lock().unwrap(); // the same thread: no deadlock
//! drop(inner);
//! drop(outer);
//! assert!(!lock.is_locked());
//! ```

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};
use std::time::{Duration, Instant};

use greenhub_snapshot::{ObjectInfo, ObjectKind, WaitOn};
use parking_lot::Mutex;

use crate::core::context;
use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::timeout::TimedOut;
use crate::core::token::Token;
use crate::core::wait::Waiter;
use crate::core::waitlist::WaitList;

/// The kind of a re-entrant lock in the snapshot.
static KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("rlock"));

/// Who is asking: the green thread's id, or a number of the plain OS thread (from the top of
/// the range, where green thread ids never reach).
fn me() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(u64::MAX);
    thread_local! {
        static OS_THREAD: u64 = NEXT.fetch_sub(1, Ordering::Relaxed);
    }
    context::current_id().unwrap_or_else(|| OS_THREAD.with(|k| *k))
}

struct State {
    owner: Option<u64>,
    depth: usize,
    /// Who each waiter is: the lock is handed to it by name.
    waiters: WaitList<u64>,
}

impl State {
    /// Takes the lock (again) for `me` if `me` holds it or it is free with nobody waiting.
    fn try_take(&mut self, me: u64) -> bool {
        let nobody_waits = self.waiters.front().is_none();
        match self.owner {
            Some(o) if o == me => self.depth += 1,
            None if nobody_waits => {
                self.owner = Some(me);
                self.depth = 1;
            }
            _ => return false,
        }
        true
    }

    /// Gives the lock to the first waiter still waiting, or frees it.
    fn hand_on(&mut self) {
        match self.waiters.wake_first() {
            Some(next) => {
                self.owner = Some(next);
                self.depth = 1;
            }
            None => {
                self.owner = None;
                self.depth = 0;
            }
        }
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
        let info = ObjectInfo::new(
            *KIND,
            self.reg.id(),
            self.name.get().map(String::as_str),
            st.waiters.live(),
        )
        .count("depth", st.depth as u64);
        match st.owner.filter(|o| *o < 1 << 62) {
            Some(holder) => info.with_detail(serde_json::json!({ "holder": holder })),
            None => info,
        }
    }

    fn held_by(&self) -> Vec<u64> {
        self.holders()
    }

    /// The owner, when a green thread owns it.
    fn holders(&self) -> Vec<u64> {
        let st = self.state.lock();
        st.owner.filter(|o| *o < 1 << 62).into_iter().collect()
    }
}

/// A re-entrant lock (see the [module docs](self)). A handle: clones share the lock. In the
/// snapshot it is an object of kind `rlock` with the count `depth` and, when a green thread
/// holds it, the detail `{"holder": id}`.
#[derive(Clone)]
pub struct RLock {
    core: Arc<Core>,
}

impl Default for RLock {
    fn default() -> Self {
        RLock::new()
    }
}

impl std::fmt::Debug for RLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.core.state.lock();
        f.debug_struct("RLock")
            .field("id", &self.core.reg.id())
            .field("depth", &st.depth)
            .finish()
    }
}

impl RLock {
    /// A free lock.
    pub fn new() -> RLock {
        RLock {
            core: Arc::new_cyclic(|weak: &Weak<Core>| Core {
                reg: Registration::new(weak.clone()),
                name: OnceLock::new(),
                state: Mutex::new(State {
                    owner: None,
                    depth: 0,
                    waiters: WaitList::default(),
                }),
            }),
        }
    }

    /// Names the lock in the snapshot (the first name given sticks).
    pub fn named(self, name: impl Into<String>) -> RLock {
        let _ = self.core.name.set(name.into());
        self
    }

    /// The lock's id in the registry.
    pub fn id(&self) -> u64 {
        self.core.reg.id()
    }

    /// Locks: at once if this thread holds it already or nobody does, otherwise after the
    /// threads that asked before (bounded by the enclosing deadline scopes).
    pub fn lock(&self) -> Result<RLockGuard<'_>, TimedOut> {
        self.lock_until(None)
    }

    /// Like [`RLock::lock`], giving up after `timeout`.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>, TimedOut> {
        self.lock_until(Instant::now().checked_add(timeout))
    }

    /// Locks if this thread holds it already or it is free with nobody waiting.
    pub fn try_lock(&self) -> Option<RLockGuard<'_>> {
        let taken = self.core.state.lock().try_take(me());
        taken.then(|| self.guard())
    }

    /// Whether some thread holds it now.
    pub fn is_locked(&self) -> bool {
        self.core.state.lock().owner.is_some()
    }

    fn guard(&self) -> RLockGuard<'_> {
        RLockGuard {
            lock: self,
            _not_send: PhantomData,
        }
    }

    fn lock_until(&self, deadline: Option<Instant>) -> Result<RLockGuard<'_>, TimedOut> {
        let me = me();
        let (waiter, token) = {
            let mut st = self.core.state.lock();
            if st.try_take(me) {
                return Ok(self.guard());
            }
            let on = WaitOn::Object {
                object: *KIND,
                id: self.core.reg.id(),
            };
            let waiter = Waiter::until(on, deadline);
            let token = waiter.token().clone();
            st.waiters.push(token.clone(), me);
            (waiter, token)
        };
        let pass_on = PassOnIfGranted {
            core: &self.core,
            token: &token,
        };
        waiter.wait()?;
        std::mem::forget(pass_on);
        Ok(self.guard())
    }
}

/// Passes on a lock handed to a waiter that unwinds (killed) before it could use it.
struct PassOnIfGranted<'a> {
    core: &'a Core,
    token: &'a Arc<Token>,
}

impl Drop for PassOnIfGranted<'_> {
    fn drop(&mut self) {
        if self.token.is_woken() {
            self.core.state.lock().hand_on();
        }
    }
}

/// One level of a held [`RLock`]; the lock is free once every guard is dropped.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    /// Released by the thread that took it.
    _not_send: PhantomData<*const ()>,
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.lock.core.state.lock();
        st.depth -= 1;
        if st.depth == 0 {
            st.hand_on();
        }
    }
}
