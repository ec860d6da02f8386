//! Green-thread-local values: [`Local`], declared as a `static`, holding one value per green
//! thread (or plain OS thread), and, when declared [`Local::inherited`], copied into every
//! green thread spawned while it is set: a request id or a tracing context follows the work
//! a request fans out, as Python's `contextvars` do for tasks.
//!
//! The values live in the thread's greenhub context (`may`'s coroutine-local storage), never
//! in a `thread_local!`, which a green thread would lose at its first wait when it resumes on
//! another worker.

use std::any::Any;
use std::marker::PhantomData;

use crate::core::context::{self, Inherit, LocalEntry};

/// A value per green thread (or OS thread), declared as a `static`.
///
/// ```
/// use greenhub::thread::Local;
///
/// static REQUEST_ID: Local<u64> = Local::inherited();
/// static SCRATCH: Local<Vec<u8>> = Local::new();
///
/// let t = greenhub::spawn(|| {
///     REQUEST_ID.set(42);
///     SCRATCH.set(vec![1, 2, 3]);
///     greenhub::sleep(std::time::Duration::from_millis(1)).unwrap(); // resumes anywhere
///     // A child inherits the request id, not the scratch buffer.
///     let child = greenhub::spawn(|| (REQUEST_ID.get(), SCRATCH.get()));
///     child.wait().unwrap()
/// });
/// assert_eq!(t.wait().unwrap(), (Some(42), None));
/// assert_eq!(REQUEST_ID.get(), None); // the main thread set nothing
/// ```
///
/// Each thread starts with no value (or an inherited copy). A child's copy is its own:
/// setting it changes neither the parent's nor a sibling's. Share state through the value
/// itself (an `Arc`) when children must see changes. Values drop when their thread ends.
pub struct Local<T: Send + 'static> {
    inherit: Option<Inherit>,
    _value: PhantomData<fn() -> T>,
}

impl<T: Send + 'static> std::fmt::Debug for Local<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("inherited", &self.inherit.is_some())
            .finish()
    }
}

impl<T: Send + 'static> Default for Local<T> {
    fn default() -> Self {
        Local::new()
    }
}

fn copy<T: Clone + Send + 'static>(value: &(dyn Any + Send)) -> Box<dyn Any + Send> {
    let value = value
        .downcast_ref::<T>()
        .expect("a local's entry holds the local's type");
    Box::new(value.clone())
}

impl<T: Clone + Send + 'static> Local<T> {
    /// A local that green threads spawned while it is set start with a clone of it.
    pub const fn inherited() -> Local<T> {
        Local {
            inherit: Some(copy::<T> as Inherit),
            _value: PhantomData,
        }
    }

    /// A clone of the current thread's value, if it has one.
    pub fn get(&'static self) -> Option<T> {
        let key = self.key();
        context::with(|c| {
            c.locals
                .borrow()
                .iter()
                .find(|e| e.key == key)
                .and_then(|e| e.value.downcast_ref::<T>().cloned())
        })
    }
}

impl<T: Send + 'static> Local<T> {
    /// A local that each thread sets for itself (children start without it).
    pub const fn new() -> Local<T> {
        Local {
            inherit: None,
            _value: PhantomData,
        }
    }

    fn key(&'static self) -> usize {
        // A static's address is unique and stable for the life of the process.
        self as *const Self as usize
    }

    /// Sets the current thread's value, returning the one it replaces.
    pub fn set(&'static self, value: T) -> Option<T> {
        let key = self.key();
        let old = context::with(|c| {
            let mut locals = c.locals.borrow_mut();
            match locals.iter_mut().find(|e| e.key == key) {
                Some(e) => Some(std::mem::replace(&mut e.value, Box::new(value))),
                None => {
                    locals.push(LocalEntry {
                        key,
                        value: Box::new(value),
                        inherit: self.inherit,
                    });
                    None
                }
            }
        });
        // Dropped outside the borrow: its destructor may use locals too.
        old.and_then(|v| v.downcast::<T>().ok()).map(|v| *v)
    }

    /// Removes the current thread's value and returns it.
    pub fn take(&'static self) -> Option<T> {
        let key = self.key();
        let old = context::with(|c| {
            let mut locals = c.locals.borrow_mut();
            let i = locals.iter().position(|e| e.key == key)?;
            locals.swap_remove(i).map(|e| e.value)
        });
        old.and_then(|v| v.downcast::<T>().ok()).map(|v| *v)
    }

    /// Runs `f` with the current thread's value set to `value`, then puts back what was
    /// there before (even if `f` unwinds), and returns what `f` returned.
    ///
    /// ```
    /// use greenhub::thread::Local;
    ///
    /// static USER: Local<&'static str> = Local::inherited();
    /// let seen = USER.scope("alice", || greenhub::spawn(|| USER.get()).wait().unwrap());
    /// assert_eq!(seen, Some("alice"));
    /// assert_eq!(USER.get(), None);
    /// ```
    pub fn scope<R>(&'static self, value: T, f: impl FnOnce() -> R) -> R {
        struct Restore<T: Send + 'static> {
            local: &'static Local<T>,
            previous: Option<T>,
        }
        impl<T: Send + 'static> Drop for Restore<T> {
            fn drop(&mut self) {
                match self.previous.take() {
                    Some(v) => drop(self.local.set(v)),
                    None => drop(self.local.take()),
                }
            }
        }
        let previous = self.set(value);
        let _restore = Restore {
            local: self,
            previous,
        };
        f()
    }
}
