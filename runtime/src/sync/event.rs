//! [`Event`]: a value (or an error) set once and awaited by many, eventlet's `Event` and
//! gevent's `AsyncResult` in one type.
//!
//! ```
//! use greenhub::Event;
//!
//! let done: Event<u32> = Event::new();
//! let waiters: Vec<_> = (0..3)
//!     .map(|_| { let done = done.clone(); greenhub::spawn(move || done.wait()) })
//!     .collect();
//! done.set(7).unwrap();
//! for w in waiters {
//!     assert_eq!(w.wait().unwrap(), Ok(7));
//! }
//! assert!(done.set(8).is_err()); // set once: a second set is an error, not a panic
//! ```

use std::convert::Infallible;
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

/// Why [`Event::wait`] returned no value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum EventError<E> {
    /// The event was set with an error ([`Event::set_error`]); here it is.
    #[error("the event was set with an error")]
    Failed(E),
    /// The wait's timeout or the enclosing deadline passed first.
    #[error("timed out waiting for the event")]
    TimedOut,
}

impl<E> From<TimedOut> for EventError<E> {
    fn from(_: TimedOut) -> EventError<E> {
        EventError::TimedOut
    }
}

impl<E> IsTimeout for EventError<E> {
    fn is_timeout(&self) -> bool {
        matches!(self, EventError::TimedOut)
    }
}

/// [`Event::set`] or [`Event::set_error`] on an event that is already set. The rejected value
/// comes back; call [`Event::reset`] first to set it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("the event is already set; reset it before setting it again")]
pub struct AlreadySet<V>(pub V);

/// A value or error set once, awaited by any number of green threads and OS threads.
///
/// A handle: clones share the same event. `Event<()>` is a plain flag; `Event<T, E>` is
/// gevent's `AsyncResult`: it carries either a `T` ([`Event::set`]) or an `E`
/// ([`Event::set_error`]), and every waiter gets a clone of it.
///
/// In the snapshot it is an object of kind `event` with the count `set` (0 or 1).
pub struct Event<T = (), E = Infallible> {
    inner: Arc<Inner<T, E>>,
}

struct Inner<T, E> {
    reg: Registration,
    name: OnceLock<String>,
    state: Mutex<State<T, E>>,
}

struct State<T, E> {
    value: Option<Result<T, E>>,
    waiters: WaitList<Slot<Result<T, E>>>,
}

impl<T, E> Clone for Event<T, E> {
    fn clone(&self) -> Self {
        Event {
            inner: self.inner.clone(),
        }
    }
}

impl<T, E> std::fmt::Debug for Event<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("id", &self.inner.reg.id())
            .field("set", &self.inner.state.lock().value.is_some())
            .finish()
    }
}

impl<T, E> Default for Event<T, E>
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    fn default() -> Self {
        Event::new()
    }
}

impl<T, E> Inspect for Inner<T, E>
where
    T: Send,
    E: Send,
{
    fn inspect(&self) -> ObjectInfo {
        let st = self.state.lock();
        ObjectInfo::new(
            ObjectKind::EVENT,
            self.reg.id(),
            self.name.get().map(String::as_str),
            st.waiters.live(),
        )
        .count("set", u64::from(st.value.is_some()))
    }
}

impl<T, E> Event<T, E>
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    /// A new event, not set.
    pub fn new() -> Event<T, E> {
        Event {
            inner: Arc::new_cyclic(|weak: &Weak<Inner<T, E>>| Inner {
                reg: Registration::new(weak.clone()),
                name: OnceLock::new(),
                state: Mutex::new(State {
                    value: None,
                    waiters: WaitList::default(),
                }),
            }),
        }
    }

    /// Names the event in the snapshot (the first name given sticks).
    pub fn named(self, name: impl Into<String>) -> Event<T, E> {
        let _ = self.inner.name.set(name.into());
        self
    }

    /// The event's id in the registry.
    pub fn id(&self) -> u64 {
        self.inner.reg.id()
    }

    /// Sets the value and wakes every waiter.
    pub fn set(&self, value: T) -> Result<(), AlreadySet<T>> {
        self.put(Ok(value)).map_err(|v| match v {
            Ok(v) => AlreadySet(v),
            Err(_) => unreachable!("put returns what it was given"),
        })
    }

    /// Sets an error and wakes every waiter: they get [`EventError::Failed`].
    pub fn set_error(&self, error: E) -> Result<(), AlreadySet<E>> {
        self.put(Err(error)).map_err(|v| match v {
            Err(e) => AlreadySet(e),
            Ok(_) => unreachable!("put returns what it was given"),
        })
    }

    fn put(&self, value: Result<T, E>) -> Result<(), Result<T, E>> {
        let mut st = self.inner.state.lock();
        if st.value.is_some() {
            return Err(value);
        }
        st.waiters
            .wake_all(|slot| *slot.lock() = Some(value.clone()));
        st.value = Some(value);
        Ok(())
    }

    /// Whether the event is set.
    pub fn is_set(&self) -> bool {
        self.inner.state.lock().value.is_some()
    }

    /// The value or error, if set, without waiting.
    pub fn peek(&self) -> Option<Result<T, E>> {
        self.inner.state.lock().value.clone()
    }

    /// Clears the event so it can be set again, returning what it held. Threads waiting now
    /// go on waiting for the next set.
    pub fn reset(&self) -> Option<Result<T, E>> {
        self.inner.state.lock().value.take()
    }

    /// Waits until the event is set (bounded by the enclosing deadline scopes).
    pub fn wait(&self) -> Result<T, EventError<E>> {
        self.wait_until(None)
    }

    /// Like [`Event::wait`], giving up after `timeout`.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<T, EventError<E>> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Result<T, EventError<E>> {
        let (waiter, slot) = {
            let mut st = self.inner.state.lock();
            if let Some(v) = &st.value {
                return v.clone().map_err(EventError::Failed);
            }
            let waiter = Waiter::until(
                WaitOn::Object {
                    object: ObjectKind::EVENT,
                    id: self.inner.reg.id(),
                },
                deadline,
            );
            let slot = waitlist::slot();
            st.waiters.push(waiter.token().clone(), slot.clone());
            (waiter, slot)
        };
        waiter.wait().map_err(|_| EventError::TimedOut)?;
        let value = slot
            .lock()
            .take()
            .expect("an event fills the slot before waking");
        value.map_err(EventError::Failed)
    }
}

struct EventArm<T, E> {
    event: Event<T, E>,
    slot: Slot<Result<T, E>>,
    out: Outcome<Result<T, E>>,
}

impl<T, E> Arm for EventArm<T, E>
where
    T: Clone + Send + 'static,
    E: Clone + Send + 'static,
{
    fn arm(&mut self, token: &Arc<Token>) {
        let mut st = self.event.inner.state.lock();
        self.slot = waitlist::slot();
        match &st.value {
            Some(v) => {
                if token.claim() {
                    *self.slot.lock() = Some(v.clone());
                }
            }
            None => st.waiters.push(token.clone(), self.slot.clone()),
        }
    }

    fn settle(&mut self, _handed_only: bool) -> bool {
        // A set wakes every waiter with a clone: a filled slot of a branch that lost the race
        // to wake the token holds nothing anyone else needs.
        match self.slot.lock().take() {
            Some(v) => {
                self.out.set(v);
                true
            }
            None => false,
        }
    }

    fn disarm(&mut self) {
        self.slot.lock().take();
    }

    fn describe(&self) -> String {
        let inner = &self.event.inner;
        select::describe_object(
            ObjectKind::EVENT,
            inner.reg.id(),
            inner.name.get().map(String::as_str),
        )
    }
}

impl Select<'_> {
    /// A branch that fires when `event` is set, with its value (`Ok`) or error (`Err`).
    ///
    /// ```
    /// use greenhub::{Event, Select};
    ///
    /// let done: Event<u32, String> = Event::new();
    /// done.set_error("disk full".into()).unwrap();
    /// let mut sel = Select::new();
    /// let d = sel.event(&done);
    /// sel.wait().unwrap();
    /// assert_eq!(d.take(), Some(Err("disk full".to_string())));
    /// ```
    pub fn event<T, E>(&mut self, event: &Event<T, E>) -> Key<Result<T, E>>
    where
        T: Clone + Send + 'static,
        E: Clone + Send + 'static,
    {
        let event = event.clone();
        self.add(|out| {
            Box::new(EventArm {
                event,
                slot: waitlist::slot(),
                out,
            })
        })
    }
}
