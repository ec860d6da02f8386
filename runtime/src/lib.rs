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
//! 3. `with_timeout` returns what its closure returned. The waits inside have already reported
//!    the deadline with their own timed-out errors (every greenhub error converts from
//!    [`TimedOut`], so `?` carries it out), and a value a wait produced (an item, a permit, a
//!    committed write) always reaches the caller, even when it landed at the deadline.
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
//!   state in the same coroutine-local storage.)
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
//! [`thread::Builder::stack_size`] or `GREENHUB_STACK_SIZE`; the smallest accepted is
//! [`config::MIN_STACK_SIZE`] (16 KiB). **A stack overflow aborts the whole process**: it hits
//! a guard page and cannot be caught. Code with deep recursion, large arrays on the stack or
//! heavy formatting needs a bigger stack; the default leaves room for ordinary code, panics and
//! `log` calls. Only the pages a thread touches are resident, so a large stack costs address
//! space, not memory: an idle green thread costs a page of stack and its records, about 5 KiB
//! resident at any stack size (the benchmark measures it; see BENCHMARKS.md).
//!
//! On Linux 6.13 and later, stacks are slots of large shared mappings whose guard pages are
//! guard regions (`MADV_GUARD_INSTALL`), so a green thread costs no memory mapping of its own
//! and `vm.max_map_count` does not bound them (`Snapshot::runtime.stacks_share_mappings` says
//! which scheme runs). On older kernels every stack takes two mappings and the default cap
//! (65,530) allows about 30,000 live green threads: greenhub then refuses a spawn beyond that
//! with [`thread::SpawnError::MapLimit`] (naming the limit and the `sysctl` that raises it)
//! instead of hanging like bare `may`.
//!
//! # Killing
//!
//! [`GreenThread::kill`] makes the target unwind at its next wait, so its destructors run and
//! whatever it holds is released. Destructors that run during that unwind cannot wait: their
//! waits return `Err(TimedOut)` at once. A thread that never waits cannot be killed; it can
//! poll [`kill_requested`].

// The layers, lowest first; each file imports only from its own layer and those before it
// (tests/layers.rs checks it): core, observe, start, green, sync, net, process.
mod core;
mod green;
pub mod net;
mod observe;
mod process;
mod start;
mod sync;
pub mod testing;

pub use crate::core::config;
pub use crate::sync::{event, greenpool, pool, queue, rlock, rwlock, select, semaphore};

pub mod signal {
    //! Unix signals as green waits (gevent's `signal_handler`): [`Signals`] waits for the next
    //! of a set of signals, [`handle`] runs a function in a new green thread on each one. No
    //! code runs in signal context; a wait is bounded by deadline scopes and ended by a kill.
    //! While a signal is subscribed to, its default action (terminating, for SIGTERM) waits
    //! for the program; once nobody subscribes, it applies again.
    //!
    //! ```
    //! use greenhub::signal::Signals;
    //!
    //! let usr1 = Signals::new([libc::SIGUSR1]).unwrap();
    //! // SAFETY: sends a signal this process handles to itself.
    //! unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
    //! assert_eq!(usr1.wait(), Ok(libc::SIGUSR1));
    //! ```
    pub use crate::process::signal::{Handler, SignalError, Signals, handle, name, save_trace_on};
}

pub mod notify {
    //! Telling a supervisor (`greenhub-serve`, systemd) how the process is doing, in
    //! systemd's `sd_notify` protocol: [`ready`] once warmed up (which also starts the
    //! heartbeat the supervisor asked for), [`stopping`], [`status`]. Unsupervised (no
    //! `NOTIFY_SOCKET`), every call does nothing. The listening sockets a supervisor hands
    //! over are in [`net::take_inherited`](crate::net::take_inherited).
    //!
    //! ```
    //! let listener = greenhub::net::listen_or_inherit("127.0.0.1:0").unwrap();
    //! // ... fill pools, load what the first request needs ...
    //! greenhub::notify::ready().unwrap();
    //! # drop(listener);
    //! ```
    pub use crate::process::notify::{
        NotifyError, heartbeat_field, is_supervised, ready, send, status, stopping,
    };
}

pub mod subprocess {
    //! Child processes for green threads (gevent's `subprocess`): [`Command`] is
    //! `std::process::Command` whose children have green pipes and a green exit. Reading a
    //! child's output, writing its input and waiting for its end park the green thread, not
    //! the worker; every wait is bounded by deadline scopes, ends on a kill, and shows in the
    //! snapshot as a wait on the process. [`Command::output`] and [`Child::communicate`] under
    //! a deadline that passes kill and reap the child. A dropped child that still runs is
    //! reaped in the background, leaving no zombie.
    //!
    //! ```
    //! use std::io::Read;
    //! use greenhub::subprocess::{Command, Stdio};
    //!
    //! let t = greenhub::spawn(|| -> std::io::Result<String> {
    //!     let mut child = Command::new("echo").arg("hello").stdout(Stdio::piped()).spawn()?;
    //!     let mut said = String::new();
    //!     child.stdout.take().unwrap().read_to_string(&mut said)?;
    //!     assert!(child.wait()?.success());
    //!     Ok(said)
    //! });
    //! assert_eq!(t.wait().unwrap().unwrap(), "hello\n");
    //! ```
    pub use crate::process::child::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
    pub use std::process::{ExitStatus, Output, Stdio};
}

pub mod thread {
    //! Green threads (eventlet's `greenthread`, gevent's `Greenlet`): spawn, wait for the
    //! value, kill, link a callback, start later; the current thread's identity; and its
    //! local values ([`Local`], inherited by children when declared so).
    //!
    //! ```
    //! use greenhub::thread::Builder;
    //!
    //! let t = Builder::new().name("worker").spawn(|| 6 * 7).unwrap();
    //! assert_eq!(t.wait().unwrap(), 42);
    //! ```
    pub use crate::core::limits::SpawnError;
    pub use crate::green::local::Local;
    pub use crate::green::thread::{
        Builder, Current, GreenThread, JoinError, current, join_all, kill, kill_all,
        run_until_idle, spawn, spawn_after, wait_any,
    };
    pub use crate::green::time::{kill_requested, sleep, yield_now};
    pub use crate::green::timer::{Timer, call_after};
}

pub mod timeout {
    //! Deadlines (eventlet's and gevent's `Timeout`): [`with_timeout`] scopes, the deadline in
    //! force, the [`TimedOut`] error and the [`IsTimeout`] question every error answers.
    //! The rules are in the [crate docs](crate#deadline-scopes).
    pub use crate::core::timeout::{IsTimeout, TimedOut};
    pub use crate::green::time::{deadline, with_timeout};
}

pub mod inspect {
    //! What the registry holds, as data: [`snapshot`] returns every live green thread, pending
    //! timer, watched descriptor, worker and blocked-worker report as a serde-serializable
    //! [`Snapshot`]; [`format_run_info`] prints it as a tree by parent, like gevent's
    //! `format_run_info` and Go's goroutine dump. The schema lives in the `greenhub-snapshot`
    //! crate (re-exported here), so that readers need not depend on the runtime.
    //!
    //! ```
    //! let t = greenhub::thread::Builder::new()
    //!     .name("napper")
    //!     .spawn(|| greenhub::sleep(std::time::Duration::from_millis(200)))
    //!     .unwrap();
    //! greenhub::sleep(std::time::Duration::from_millis(20)).unwrap();
    //! let snap = greenhub::inspect::snapshot();
    //! let napper = snap.threads.iter().find(|th| th.id == t.id()).unwrap();
    //! assert_eq!(napper.state, greenhub::inspect::ThreadState::Waiting);
    //! assert!(greenhub::inspect::format_run_info().contains("napper"));
    //! t.kill();
    //! ```
    pub use crate::core::deadlock::on_deadlock;
    pub use crate::core::flight::SaveTraceError;
    pub use crate::core::sampler::ProfileError;
    pub use crate::observe::stacks::StackError;
    pub use greenhub_snapshot::attach;
    pub use greenhub_snapshot::{
        BlockedCause, BlockedInfo, Deadlock, DeadlockKind, DeadlockedThread, DescriptorInfo,
        FinishedInfo, HeldObject, InboxStats, ObjectInfo, Outcome, RuntimeInfo, SCHEMA_VERSION,
        SiteTimes, Snapshot, StackFrame, ThreadInfo, ThreadStack, ThreadState, ThreadTimes,
        TimeSummary, TimerInfo, TimerKindInfo, Totals, WorkerInfo, format_us,
    };
    pub use greenhub_snapshot::{Half, Profile, ProfileEntry, TopFunction};
    pub use greenhub_snapshot::{Trace, TraceEvent, TraceKind, TracedThread};

    /// Takes a snapshot of the registry. Costs one pass over the live threads; the green
    /// threads themselves are not stopped.
    pub fn snapshot() -> Snapshot {
        crate::observe::snapshot::snapshot()
    }

    /// [`snapshot`] with the stack of every green thread parked in a wait
    /// ([`ThreadInfo::stack`]), symbolized with function, file and line, greenhub's own frames
    /// folded away. The threads are not resumed; one woken while its stack is read waits for
    /// that one walk (microseconds). Symbols are loaded on first use, by the calling thread.
    ///
    /// Stacks are walked along frame pointers: build with `-C force-frame-pointers=yes`
    /// (greenhub's workspace sets it in `.cargo/config.toml`). Without them
    /// [`Snapshot::stacks_unavailable`] says so and nothing else changes.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// #[inline(never)]
    /// fn napping() {
    ///     greenhub::sleep(Duration::from_secs(10)).ok();
    /// }
    ///
    /// let t = greenhub::spawn(napping);
    /// greenhub::sleep(Duration::from_millis(20)).unwrap();
    /// let snap = greenhub::inspect::snapshot_with_stacks();
    /// let th = snap.threads.iter().find(|th| th.id == t.id()).unwrap();
    /// // Without frame pointers the snapshot says why instead.
    /// if snap.stacks_unavailable.is_none() {
    ///     let stack = th.stack.as_ref().expect("a parked thread has a stack");
    ///     assert!(stack.frames.iter().any(|f| f.function.ends_with("napping")));
    /// }
    /// t.kill();
    /// ```
    pub fn snapshot_with_stacks() -> Snapshot {
        crate::observe::offload::off_workers(crate::observe::snapshot::snapshot_with_stacks)
    }

    /// The flight recorder's events of the last `span` (spawns, runs, waits and on what,
    /// wakes and by whom, kills, ends, blocked-worker reports, deadlocks), oldest first, with
    /// the threads they name; [`Trace::chrome_json`] writes them for Perfetto. Empty while the
    /// recorder is off ([`flight_recorder`], `GREENHUB_FLIGHT_RECORDER`).
    ///
    /// ```
    /// use greenhub::inspect::TraceKind;
    ///
    /// greenhub::inspect::flight_recorder(true);
    /// let t = greenhub::spawn(|| greenhub::sleep(std::time::Duration::from_millis(1)));
    /// t.wait().unwrap().unwrap();
    /// let trace = greenhub::inspect::trace(std::time::Duration::from_secs(5));
    /// let mine: Vec<&TraceKind> =
    ///     trace.events.iter().filter(|e| e.thread == t.id()).map(|e| &e.kind).collect();
    /// assert!(matches!(mine.first(), Some(TraceKind::Spawn { .. })));
    /// assert!(matches!(mine.last(), Some(TraceKind::Exit { .. })));
    /// ```
    pub fn trace(span: std::time::Duration) -> Trace {
        crate::observe::offload::off_workers(move || crate::core::flight::last(span))
    }

    /// Starts (`true`) or stops the flight recorder. It is off unless
    /// [`Config::flight_recorder`](crate::Config::flight_recorder) or
    /// `GREENHUB_FLIGHT_RECORDER=on` starts it with the runtime; an inspector can turn it on
    /// or off too.
    pub fn flight_recorder(on: bool) {
        crate::start::runtime();
        // The first call reads /proc/cpuinfo (is the time-stamp counter usable?): not on a
        // worker.
        crate::observe::offload::off_workers(move || crate::core::trace::set(on));
    }

    /// Saves the flight recorder's last 5 seconds to a file now, as the recorder does by itself
    /// when a worker is blocked or threads deadlock, and returns its path: in
    /// `GREENHUB_TRACE_DIR`, or else the attach channel's private directory, named
    /// `trace-<pid>-<unix seconds>-<n>-<why>.json` (Perfetto and `chrome://tracing` open it).
    /// `why` is a short word (lowercase letters, digits, dashes) that says what happened, for
    /// a program that notices trouble itself: a request far slower than its peers, a failed
    /// health check. The process keeps its 8 newest trace files. The file is written off the
    /// workers; a green caller waits for it. [`crate::signal::save_trace_on`] saves one on a
    /// signal.
    ///
    /// ```
    /// greenhub::inspect::flight_recorder(true);
    /// greenhub::spawn(|| ()).wait().unwrap();
    /// let path = greenhub::inspect::save_trace("slow-request").unwrap();
    /// let text = std::fs::read_to_string(&path).unwrap();
    /// assert!(text.contains("traceEvents"));
    /// # std::fs::remove_file(path).unwrap();
    /// assert!(greenhub::inspect::save_trace("Not a word!").is_err());
    /// ```
    pub fn save_trace(why: &str) -> Result<std::path::PathBuf, SaveTraceError> {
        crate::start::runtime();
        let why = why.to_string();
        crate::observe::offload::off_workers(move || crate::core::flight::save(&why))
    }

    /// The stack of one green thread, read while it is parked in a wait (see
    /// [`snapshot_with_stacks`]).
    pub fn stack(thread_id: u64) -> Result<ThreadStack, StackError> {
        crate::observe::offload::off_workers(move || crate::observe::stacks::stack_of(thread_id))
    }

    /// A profile of the green threads over `duration`: where CPU time goes and where they wait.
    ///
    /// Each worker is sampled `hz` times a second of its CPU time (1 to 1000; a timer on its
    /// CPU clock signals it, and it walks its own stack in the handler), and each sample is
    /// attributed to the green thread it interrupted ([`Profile::on_cpu`], innermost frame
    /// first, greenhub's own frames kept: time spent there is time spent). At the end the
    /// parked threads' stacks are read and weighted by how long each has waited
    /// ([`Profile::off_cpu`]). [`Profile::folded`] gives folded stacks for flame graphs,
    /// [`Profile::top`] the top functions. One profile runs at a time; it needs what stacks
    /// need (frame pointers, see [`snapshot_with_stacks`]). The caller waits `duration`; a
    /// green thread waits greenly, and the symbolizing is done off the workers.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let busy = greenhub::spawn(|| {
    ///     let mut x = 0u64;
    ///     for i in 0..20_000_000u64 {
    ///         x = std::hint::black_box(x.wrapping_add(i));
    ///         if i % 100_000 == 0 {
    ///             greenhub::yield_now();
    ///         }
    ///     }
    ///     x
    /// });
    /// match greenhub::inspect::profile(Duration::from_millis(200), 499) {
    ///     Ok(p) => println!("{}", p.summary(5)),
    ///     Err(e) => println!("no profile: {e}"),
    /// }
    /// busy.wait().unwrap();
    /// ```
    pub fn profile(duration: std::time::Duration, hz: u32) -> Result<Profile, ProfileError> {
        crate::observe::offload::off_workers(move || crate::observe::profile::profile(duration, hz))
    }

    /// Turns timing on until the returned guard is dropped: every switch is then timed, and
    /// snapshots carry each green thread's time running, waiting and runnable (woken but not
    /// yet on a worker: the scheduling delay) in [`ThreadInfo::times`], and histograms of the
    /// same by spawn site, waits by kind, in [`Snapshot::sites`]. Timing is on while any guard
    /// lives (or an inspector asks for it); off, it costs the switch nothing.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let timing = greenhub::inspect::time_threads();
    /// let t = greenhub::spawn(|| greenhub::sleep(Duration::from_millis(20)));
    /// t.wait().unwrap().unwrap();
    /// let snap = greenhub::inspect::snapshot();
    /// assert!(snap.timing);
    /// drop(timing);
    /// ```
    pub fn time_threads() -> TimingGuard {
        TimingGuard(crate::core::timing::claim())
    }

    /// Keeps timing on while it lives (see [`time_threads`]).
    #[must_use = "timing is on only while the guard lives"]
    pub struct TimingGuard(crate::core::timing::Claim);

    impl std::fmt::Debug for TimingGuard {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("TimingGuard")
        }
    }

    /// [`snapshot`] formatted by [`Snapshot::format_run_info`].
    pub fn format_run_info() -> String {
        crate::observe::snapshot::format_run_info()
    }

    /// The address the HTTP stats endpoint listens on, once the runtime has started it (see
    /// [`Config::stats_addr`](crate::Config::stats_addr)); always `None` without the `stats`
    /// feature.
    pub fn stats_addr() -> Option<std::net::SocketAddr> {
        #[cfg(feature = "stats")]
        return crate::observe::stats::local_addr();
        #[cfg(not(feature = "stats"))]
        return None;
    }
}

pub mod ext {
    //! For crates that build waitable objects on greenhub (a thread pool, a connection pool):
    //! the [`Waiter`] every greenhub wait is made of and its [`Token`], the vocabulary of
    //! waits, the registration that lists an object in the snapshot, batched wakes from OS
    //! threads, [`idle_while`] for a pool's threads waiting for work, and [`warn`] for reports
    //! that must not be lost when no logger is installed.
    //! Applications do not need this module.
    //!
    //! ```
    //! use greenhub::ext::{ObjectKind, WaitOn, Waiter};
    //! use std::time::Duration;
    //!
    //! let waiter = Waiter::new(WaitOn::Object { object: ObjectKind::EVENT, id: 7 }, None);
    //! let token = waiter.token().clone();
    //! let waker = greenhub::spawn(move || {
    //!     greenhub::sleep(Duration::from_millis(5)).unwrap();
    //!     token.wake()
    //! });
    //! assert_eq!(waiter.wait(), Ok(()));
    //! assert!(waker.wait().unwrap());
    //! ```
    pub use crate::core::context::without_deadline;
    pub use crate::core::inbox::wake_batched;
    pub use crate::core::object::Registration;
    pub use crate::core::registry::Inspect;
    pub use crate::core::report::warn;
    pub use crate::core::token::Token;
    pub use crate::core::wait::{FdWatch, Waiter, idle_while};
    pub use greenhub_snapshot::{Interest, ObjectInfo, ObjectKind, WaitOn};
}

pub use crate::core::config::Config;
pub use crate::core::panic::{CaughtPanic, catch_panic};
pub use crate::core::timeout::TimedOut;
pub use crate::green::future::block_on;
pub use crate::green::thread::{GreenThread, current, run_until_idle, spawn};
pub use crate::green::time::{kill_requested, sleep, with_timeout, yield_now};
pub use crate::green::timer::call_after;
pub use crate::sync::event::Event;
pub use crate::sync::greenpool::{GreenPile, GreenPool};
pub use crate::sync::queue::Queue;
pub use crate::sync::rlock::RLock;
pub use crate::sync::rwlock::RwLock;
pub use crate::sync::select::Select;
pub use crate::sync::semaphore::{Condition, Mutex, Semaphore};

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
