//! [`Proxy`]: an object every call on which runs in the pool, one call at a time (eventlet's
//! `tpool.Proxy`).

use std::panic::Location;
use std::sync::Arc;

use greenhub::Semaphore;
use parking_lot::Mutex;

use crate::{Error, Pool, default_pool};

/// Ends a turn when dropped.
struct EndTurn(Semaphore);

impl Drop for EndTurn {
    fn drop(&mut self) {
        // One turn was taken for this call: giving it back cannot over-release.
        let _ = self.0.release();
    }
}

/// Wraps a blocking object (a synchronous client, a file, a C handle) so that each call on it
/// runs on a pool thread with exclusive access, while the calling green thread waits
/// cooperatively.
///
/// Callers take turns first come first served, waiting as green threads (never holding a pool
/// thread while they wait for their turn). A turn lasts until the call has ended on its pool
/// thread, even if its caller stopped waiting (deadline, kill), so calls never overlap.
///
/// ```
/// use greenhub_tpool::Proxy;
///
/// let log = Proxy::new(Vec::<String>::new());
/// let writers: Vec<_> = (0..4)
///     .map(|i| {
///         let log = log.clone();
///         greenhub::spawn(move || log.call(move |v| v.push(format!("line {i}"))))
///     })
///     .collect();
/// for w in writers { w.wait().unwrap().unwrap(); }
/// assert_eq!(log.call(|v| v.len()), Ok(4));
/// ```
pub struct Proxy<T> {
    value: Arc<Mutex<T>>,
    turn: Semaphore,
    pool: Option<Pool>,
}

impl<T> Clone for Proxy<T> {
    fn clone(&self) -> Self {
        Proxy {
            value: self.value.clone(),
            turn: self.turn.clone(),
            pool: self.pool.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Proxy<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("turn", &self.turn.id())
            .field("pool", &self.pool.as_ref().map(Pool::name))
            .finish()
    }
}

impl<T: Send + 'static> Proxy<T> {
    /// Wraps `value`; calls run on the default pool.
    pub fn new(value: T) -> Proxy<T> {
        Proxy {
            value: Arc::new(Mutex::new(value)),
            turn: Semaphore::bounded(1).named("tpool proxy"),
            pool: None,
        }
    }

    /// Wraps `value`; calls run on `pool`.
    pub fn with_pool(value: T, pool: Pool) -> Proxy<T> {
        Proxy {
            pool: Some(pool),
            ..Proxy::new(value)
        }
    }

    /// Runs `f` with the object on a pool thread, after the calls before it, and returns its
    /// value. From a plain OS thread it runs inline (still one call at a time).
    #[track_caller]
    pub fn call<R, F>(&self, f: F) -> Result<R, Error>
    where
        R: Send + 'static,
        F: FnOnce(&mut T) -> R + Send + 'static,
    {
        let site = Location::caller();
        let pool = match &self.pool {
            Some(p) => p,
            None => default_pool()?,
        };
        self.turn.acquire()?.forget();
        // Moved into the closure: the turn ends when the closure is done with, whether it ran
        // (and returned or panicked) or was dropped unrun (queue full past the deadline,
        // shutdown).
        let end = EndTurn(self.turn.clone());
        let value = self.value.clone();
        let call = move || {
            let _end = end;
            f(&mut value.lock())
        };
        pool.submit_at(site, call)?.wait()
    }

    /// The object back, if no other handle and no running call holds it.
    pub fn try_into_inner(self) -> Result<T, Proxy<T>> {
        let Proxy { value, turn, pool } = self;
        match Arc::try_unwrap(value) {
            Ok(m) => Ok(m.into_inner()),
            Err(value) => Err(Proxy { value, turn, pool }),
        }
    }
}
