//! Green threads for Rust in the style of eventlet and gevent, on the `may` stackful-coroutine
//! runtime, with a live registry of every green thread, timer and descriptor.
//!
//! Code that looks blocking (`spawn`, `sleep`, `wait`) runs as cheap cooperative green threads
//! multiplexed over a few worker OS threads. Every wait is visible (what a green thread waits
//! on, since when, until which deadline) and bounded by deadline scopes; a green thread that
//! blocks its worker is reported.
//!
//! ```
//! use std::time::Duration;
//! use greenhub::{spawn, sleep, with_timeout};
//!
//! let workers: Vec<_> = (0..100u64)
//!     .map(|i| spawn(move || { sleep(Duration::from_millis(10)).unwrap(); i * 2 }))
//!     .collect();
//! let total: u64 = workers.into_iter().map(|t| t.wait().unwrap()).sum();
//! assert_eq!(total, 9900);
//!
//! let slow = with_timeout(Duration::from_millis(5), || sleep(Duration::from_secs(1)));
//! assert!(slow.is_err());
//! ```
//!
//! Green threads talk through the objects of eventlet's and gevent's `event`, `queue`,
//! `semaphore` and `greenpool` modules: [`Event`] (a value or error set once; gevent's
//! `AsyncResult`), [`Queue`] (FIFO, LIFO or priority; unbounded, bounded or rendezvous, with
//! `task_done`/`join` and `close`), [`Semaphore`], [`Mutex`], [`GreenPool`] and [`GreenPile`].
//! Each serves its waiters in arrival order by handing the item or permit to the first of them,
//! so a timeout or a kill in the middle of a wait loses nothing; each works from plain OS
//! threads too, and shows in the snapshot with its waiters and counts.
//!
//! # Deadline scopes
//!
//! eventlet's `Timeout` raises an exception into the green thread from a timer, wherever the
//! thread happens to be. greenhub's [`with_timeout`] is a *scope* instead: while its closure
//! runs, every greenhub wait inside it (sleeps, joins, events, queues, sockets, tpool calls,
//! pool checkouts) returns a timed-out error as soon as the scope's deadline has passed, and
//! the code decides what to do with it, usually `?`. The rules:
//!
//! 1. The deadline of a wait is the earliest of its own timeout and the deadlines of all the
//!    scopes around it: nested scopes take the earliest, an inner scope can shorten the time
//!    left but never extend it.
//! 2. A wait that starts after the deadline has passed returns the error at once.
//! 3. `with_timeout` returns `Err(TimedOut)` when the deadline in force inside it has passed by
//!    the time its closure returns, whatever the closure returned; `Ok` with the closure's value
//!    otherwise.
//! 4. Code that does not wait is not interrupted: a deadline is not preemption.
//! 5. Scopes belong to the green thread (or OS thread) that opened them: a green thread spawned
//!    inside a scope does not inherit it.
//!
//! ```
//! use std::time::Duration;
//! use greenhub::{sleep, with_timeout, TimedOut};
//!
//! let r = with_timeout(Duration::from_millis(20), || -> Result<u32, TimedOut> {
//!     sleep(Duration::from_secs(10))?; // cut short at 20 ms
//!     Ok(1)
//! });
//! assert_eq!(r, Err(TimedOut));
//! ```
//!
//! # Where green threads differ from OS threads
//!
//! greenhub's API is safe to use, but `may` runs green threads on several OS threads and moves
//! them between OS threads at every wait. That gives three rules:
//!
//! - **No `thread_local!` across a wait.** After a wait the green thread may run on another OS
//!   thread and see another thread's value; thread-affine C libraries can break the same way.
//!   Use [`coroutine_local!`] for per-green-thread data. (greenhub keeps its own per-thread
//!   state there.)
//! - **No `std::sync::Mutex` guard across a wait.** The guard would be released on another OS
//!   thread, and a second green thread taking the lock on the same worker blocks that worker.
//!   Hold std locks only for short critical sections without waits.
//! - **No blocking calls.** A blocking syscall, a synchronous database driver or DNS lookup
//!   freezes every green thread on that worker until it returns. Run such calls on OS threads
//!   (the `greenhub-tpool` crate); the monitor reports any green thread that keeps its worker
//!   longer than `max_blocking_time` (100 ms by default).
//!
//! # Stacks and memory
//!
//! Each green thread has a fixed stack, [`config::DEFAULT_STACK_SIZE`] (64 KiB) unless set with
//! [`Builder::stack_size`] or `GREENHUB_STACK_SIZE`; the smallest accepted is
//! [`config::MIN_STACK_SIZE`] (16 KiB). **A stack overflow aborts the whole process**: it hits
//! a guard page and cannot be caught. Code with deep recursion, large arrays on the stack or
//! heavy formatting needs a bigger stack; the default leaves room for ordinary code, panics and
//! `log` calls. Only the pages a thread touches are resident, so a large stack costs address
//! space, not memory: an idle green thread costs about 8.6 KiB resident at any stack size (the
//! benchmark measures it; see BENCHMARKS.md).
//!
//! Linux caps memory mappings per process (`vm.max_map_count`, 65,530 by default) and every
//! stack takes two, which allows about 30,000 live green threads. greenhub refuses a spawn
//! beyond that with [`SpawnError::MapLimit`] (naming the limit and the `sysctl` that raises
//! it) instead of hanging like bare `may`.
//!
//! # Killing
//!
//! [`GreenThread::kill`] makes the target unwind at its next wait, so its destructors run and
//! whatever it holds is released. Destructors that run during that unwind cannot wait: their
//! waits return `Err(TimedOut)` at once. A thread that never waits cannot be killed; it can
//! poll [`kill_requested`].

#![warn(missing_docs)]

mod alarm;
pub mod attach;
mod budget;
mod clock;
pub mod config;
mod context;
pub mod event;
mod fd;
mod graveyard;
pub mod hub;
pub mod inspect;
mod limits;
mod monitor;
pub mod net;
mod panic;
pub mod pool;
pub mod queue;
mod registry;
mod runtime;
pub mod semaphore;
pub mod server;
pub mod stats;
mod thread;
mod time;
mod timer;
pub mod wait;
mod waitlist;

pub use config::{Config, ConfigError};
pub use event::{AlreadySet, Event, EventError};
pub use fd::{trampoline, TrampolineError};
pub use panic::{catch_panic, CaughtPanic};
pub use pool::{GreenPile, GreenPool, PoolError};
pub use queue::{GetError, PutError, Queue, QueueBuilder, TaskDoneError};
pub use semaphore::{Mutex, MutexGuard, OverRelease, Permit, Semaphore};
pub use server::{serve, Server, Stopped};
pub use thread::{
    current, spawn, spawn_after, Builder, Current, GreenThread, JoinError, SpawnError,
};
pub use time::{deadline, kill_requested, sleep, with_timeout, yield_now, TimedOut};
pub use timer::{call_after, Timer};

/// Declares per-green-thread storage: the safe replacement for `thread_local!` in green
/// threads (a re-export of `may`'s `coroutine_local!`). On a plain OS thread it behaves as a
/// thread-local.
///
/// ```
/// use std::cell::Cell;
///
/// greenhub::coroutine_local!(static HITS: Cell<u32> = Cell::new(0));
///
/// let t = greenhub::spawn(|| {
///     HITS.with(|h| h.set(h.get() + 1));
///     greenhub::yield_now();
///     HITS.with(|h| h.get())
/// });
/// assert_eq!(t.wait().unwrap(), 1);
/// ```
pub use may::coroutine_local;
