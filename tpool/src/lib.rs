//! Run blocking calls on OS threads without freezing the hub: eventlet's `tpool` for greenhub.
//!
//! A green thread that calls a blocking function (a C library, a file, a synchronous database
//! driver, DNS) freezes every green thread of its worker. [`execute`] hands the function to a
//! pool of OS threads instead and waits cooperatively; when it returns, the caller is woken
//! through the runtime's hub (an eventfd read by a coroutine on the workers; one signal serves a
//! whole batch of completions). The other green threads run the whole time.
//!
//! ```
//! use std::time::Duration;
//!
//! let caller = greenhub::spawn(|| {
//!     greenhub_tpool::execute(|| {
//!         std::thread::sleep(Duration::from_millis(20)); // blocks a pool thread, not the hub
//!         6 * 7
//!     })
//! });
//! let neighbour = greenhub::spawn(|| greenhub::sleep(Duration::from_millis(1)).is_ok());
//! assert!(neighbour.wait().unwrap());
//! assert_eq!(caller.wait().unwrap(), Ok(42));
//! ```
//!
//! The rules:
//!
//! - A panic in the function comes back as [`Error::Panicked`] with its message; the pool thread
//!   lives on.
//! - Called from a plain OS thread, or from a pool thread (nested calls), the function runs
//!   inline: there is no hub to keep free there, and nesting cannot deadlock.
//! - The request queue is bounded: when it is full, callers wait cooperatively for room, first
//!   come first served.
//! - A caller inside [`greenhub::with_timeout`], or one that is killed, stops waiting at once
//!   ([`Error::TimedOut`], or the kill's unwinding); the function runs to completion on its
//!   thread and its result is dropped there.
//! - The default pool has 20 threads (eventlet's default), or `GREENHUB_TPOOL_THREADS`; more
//!   pools, with their own names and sizes, isolate slow work from fast ([`Pool::builder`]).
//!   Pools resize at run time and shut down without hanging.
//! - Every pool is in the runtime's snapshot with its counters, histograms per call site and
//!   running calls ([`PoolStats`]); a green thread waiting for a call shows as waiting on the
//!   pool (`tpool call #id`), one waiting for room as waiting on its queue.
//! - In the child of a `fork()`, `may`'s workers are gone (threads do not survive a fork), so
//!   there are no green threads and every call runs inline; the parent's pool threads, queue
//!   and wake-up descriptor are never touched there.

mod call;
mod pool;
mod proxy;
mod spin;
mod stats;
mod unblock;

use std::sync::OnceLock;
use std::time::Duration;

use thiserror::Error;

pub use call::Call;

use std::sync::LazyLock;

use greenhub::ext::ObjectKind;

/// The kind of object a green thread waits on while its call runs on a tpool ("tpool call"):
/// the pool shows in the snapshot under it, and its callers wait on it.
pub static CALL_KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("tpool call"));

/// The kind of a tpool's request queue ("tpool queue"): callers wait on it for room.
pub static QUEUE_KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("tpool queue"));
pub use pool::{Builder, DEFAULT_QUEUE_CAPACITY, DEFAULT_THREADS, MAX_THREADS, Pool, Shutdown};
pub use proxy::Proxy;
pub use stats::{Durations, PoolStats, RunningCall, SiteStats, Summary};
pub use unblock::Unblock;

/// What can go wrong with a call.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum Error {
    /// The function panicked; the pool thread survived.
    #[error("the blocking call panicked: {message}{}", location.as_ref().map(|l| format!(" (at {l})")).unwrap_or_default())]
    Panicked {
        /// The panic's message.
        message: String,
        /// Where it panicked, when known.
        location: Option<String>,
    },
    /// The caller's deadline passed before the result came (or before the queue had room).
    /// The function, if it started, runs to completion and its result is dropped.
    #[error(
        "timed out waiting for the thread pool; the call itself, if it started, runs to completion"
    )]
    TimedOut,
    /// [`Pool::spawn`] found the queue full (it never waits for room).
    #[error(
        "the thread pool's queue is full ({capacity} calls); retry later or raise queue_capacity"
    )]
    QueueFull {
        /// The queue's bound.
        capacity: usize,
    },
    /// The pool was shut down: the call was refused, or cancelled while queued.
    #[error("the thread pool is shut down; build a new pool to run more calls")]
    ShutDown,
    /// [`Call::wait`] after the result was already returned.
    #[error("the call's result was already taken")]
    AlreadyTaken,
    /// A size outside 1 to [`MAX_THREADS`].
    #[error("invalid thread pool size {threads}: use 1 to {max} threads")]
    InvalidSize {
        /// The size asked for.
        threads: usize,
        /// The largest size allowed.
        max: usize,
    },
    /// A queue capacity of 0.
    #[error("invalid thread pool queue capacity 0: use at least 1")]
    InvalidQueueCapacity,
    /// `GREENHUB_TPOOL_THREADS` is not a number from 1 to [`MAX_THREADS`].
    #[error("GREENHUB_TPOOL_THREADS={value:?} is not a thread count from 1 to {max}")]
    InvalidEnv {
        /// The variable's value.
        value: String,
        /// The largest size allowed.
        max: usize,
    },
    /// The pool has no thread and the OS refused to start one.
    #[error("cannot start a thread pool thread: {reason}")]
    NoThread {
        /// The OS's reason.
        reason: String,
    },
}

impl From<greenhub::TimedOut> for Error {
    fn from(_: greenhub::TimedOut) -> Error {
        Error::TimedOut
    }
}

impl greenhub::timeout::IsTimeout for Error {
    fn is_timeout(&self) -> bool {
        matches!(self, Error::TimedOut)
    }
}

/// The environment variable that sizes the default pool.
pub const THREADS_ENV: &str = "GREENHUB_TPOOL_THREADS";

static DEFAULT: OnceLock<Result<Pool, Error>> = OnceLock::new();

/// The default pool, named `tpool`, sized by `GREENHUB_TPOOL_THREADS` (default 20). Built on
/// first use; an invalid variable is an error on every use, never a silent default.
pub fn default_pool() -> Result<&'static Pool, Error> {
    DEFAULT
        .get_or_init(|| {
            let threads = match std::env::var(THREADS_ENV) {
                Ok(value) => match value.trim().parse::<usize>() {
                    Ok(n) if (1..=MAX_THREADS).contains(&n) => n,
                    _ => {
                        return Err(Error::InvalidEnv {
                            value,
                            max: MAX_THREADS,
                        });
                    }
                },
                Err(_) => DEFAULT_THREADS,
            };
            Pool::builder().name("tpool").threads(threads).build()
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Runs `f` on a thread of the default pool and returns its value to the calling green
/// thread, which waits cooperatively. See the [crate docs](crate) for the rules.
///
/// ```
/// let t = greenhub::spawn(|| greenhub_tpool::execute(|| -> u32 { panic!("driver crashed") }));
/// let err = t.wait().unwrap().unwrap_err();
/// assert!(err.to_string().contains("driver crashed"));
/// ```
#[track_caller]
pub fn execute<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    default_pool()?.execute(f)
}

/// Shuts the default pool down (eventlet's `killall`, without the hang): see
/// [`Pool::shutdown`]. Later calls to [`execute`] fail with [`Error::ShutDown`].
pub fn shutdown(timeout: Duration) -> Result<Shutdown, Error> {
    Ok(default_pool()?.shutdown(timeout))
}
