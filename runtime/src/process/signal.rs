//! Unix signals as green waits (gevent's `signal_handler`): [`Signals`] waits for the next of
//! a set of signals, [`handle`] runs a function in a new green thread on each one.
//!
//! How a signal travels: the process-wide action installed for it (through `signal-hook`, the
//! first time anyone subscribes) only marks the signal pending and writes to an eventfd, which
//! is all a signal handler may safely do. An OS thread, `greenhub-signals`, sleeps on that
//! eventfd and hands each pending signal to every subscription that asked for it; a
//! subscription is a queue, so its wait is an ordinary greenhub wait: bounded by deadline
//! scopes, ended by a kill, usable from a plain OS thread, and shown in the snapshot as a
//! wait on an object of kind `signals` named after the set ("SIGTERM, SIGHUP").
//!
//! Rules:
//! - While at least one subscription wants a signal, its default action (terminating the
//!   process, for SIGTERM, SIGINT and SIGHUP) does not happen: the program decides. When the
//!   last one is dropped, what the signal did before greenhub took it applies again: its
//!   default action, or nothing if it was ignored (SIGPIPE in Rust programs, SIGHUP under
//!   `nohup`). A handler installed before greenhub's (with `sigaction` or signal-hook) runs
//!   first, as signal-hook chains it; one added later with signal-hook runs after, and not at
//!   all when the default action ends the process.
//! - Signals coalesce, as Unix signals do: a subscription holds each signal at most once until
//!   it is taken, so a burst of one signal costs one item, and memory stays bounded.
//! - SIGKILL, SIGSTOP and the signals of faults (SIGSEGV, SIGILL, SIGFPE, SIGBUS) cannot be
//!   handled; SIGCHLD is left to child-process handling.
//!
//! It uses `core` (reports, the flight recorder's files), `observe` (work off the workers),
//! `green` (the handlers' threads) and `sync` (the queues).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, OnceLock, Weak};

use parking_lot::Mutex;
use thiserror::Error;

use greenhub_snapshot::ObjectKind;

use crate::core::flight;
use crate::core::quiescence;
use crate::core::report;
use crate::core::timeout::TimedOut;
use crate::core::token::Token;
use crate::green::thread::{Builder, GreenThread};
use crate::observe::offload::off_workers;
use crate::sync::queue::{GetArm, GetError, Queue};
use crate::sync::select::{Arm, Key, Outcome, Select};

/// Signal numbers run from 1 to 64 on Linux.
const MAX_SIGNAL: usize = 64;

/// The kind of a subscription's queue in the snapshot.
static KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("signals"));

/// Why a signal cannot be waited for.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum SignalError {
    /// Not a signal number of this system.
    #[error("{signal} is not a signal number (1 to {MAX_SIGNAL})")]
    Invalid {
        /// The number given.
        signal: i32,
    },
    /// A signal no handler may take: SIGKILL and SIGSTOP, and the faults (SIGSEGV, SIGILL,
    /// SIGFPE, SIGBUS) a process cannot recover from.
    #[error(
        "{name} cannot be handled: the kernel or the process's safety needs its default action"
    )]
    Forbidden {
        /// The signal's name.
        name: String,
    },
    /// SIGCHLD, which belongs to child-process handling.
    #[error("SIGCHLD is reserved for child processes: wait for a child instead")]
    Reserved,
    /// No signal was given.
    #[error("no signal given: name at least one")]
    Empty,
    /// The OS refused the signal action or the thread that delivers signals.
    #[error("cannot set up handling of {name}: {reason}")]
    Setup {
        /// The signal's name.
        name: String,
        /// The OS's reason.
        reason: String,
    },
}

/// The name of a signal (`SIGTERM`), or its number for one without a name.
pub fn name(signal: i32) -> String {
    signal_hook::low_level::signal_name(signal)
        .map_or_else(|| format!("signal {signal}"), String::from)
}

/// A subscription to a set of signals: every delivery of one of them after it is made can be
/// taken with [`Signals::wait`]. Dropping it ends the subscription.
///
/// ```no_run
/// use greenhub::signal::Signals;
///
/// let stop = Signals::new([libc::SIGTERM, libc::SIGINT]).unwrap();
/// let server = greenhub::spawn(move || {
///     let signal = stop.wait().unwrap(); // the green thread waits; its worker runs others
///     println!("stopping on {}", greenhub::signal::name(signal));
/// });
/// server.wait().unwrap();
/// ```
pub struct Signals {
    sub: Arc<Subscription>,
}

/// A subscription's state. Delivered signals are bits in `pending` (so a signal is held at
/// most once); `bell` holds a ring for each bit that went from clear to set, and is what a
/// waiter waits on. A waiter takes all pending bits at once, keeps the lowest and puts the
/// rest back with a ring of its own, so another waiter wakes for them. A ring may find no bit
/// (another waiter took it): the waiter waits again. Nothing is lost: a bit set after a take
/// always comes with its own ring.
struct Subscription {
    /// The signals, as a bit set (bit n-1 for signal n).
    wanted: u64,
    pending: AtomicU64,
    bell: Queue<()>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals")
            .field("signals", &self.signals())
            .finish()
    }
}

impl Signals {
    /// Subscribes to `signals`. From now on each of them is held for [`Signals::wait`]
    /// instead of taking its default action.
    pub fn new(signals: impl IntoIterator<Item = i32>) -> Result<Signals, SignalError> {
        let mut wanted = 0u64;
        for signal in signals {
            check(signal)?;
            wanted |= bit(signal);
        }
        if wanted == 0 {
            return Err(SignalError::Empty);
        }
        Signals::subscribe(wanted)
    }

    /// SIGCHLD, for child-process handling only (`child.rs`, where the kernel has no pidfd).
    pub(crate) fn child_exits() -> Result<Signals, SignalError> {
        Signals::subscribe(bit(libc::SIGCHLD))
    }

    fn subscribe(wanted: u64) -> Result<Signals, SignalError> {
        let hub = hub().map_err(|reason| SignalError::Setup {
            name: names(wanted),
            reason,
        })?;
        let sub = Arc::new(Subscription {
            wanted,
            pending: AtomicU64::new(0),
            bell: Queue::builder().kind(*KIND).build().named(names(wanted)),
        });
        // Counted before the action is installed, so that no signal of the set meets an
        // action that finds no subscriber and applies the default.
        hub.subs.lock().push(Arc::downgrade(&sub));
        for signal in each(wanted) {
            hub.signals[signal as usize]
                .subscribers
                .fetch_add(1, Ordering::SeqCst);
        }
        let signals = Signals { sub };
        for signal in each(wanted) {
            // On failure, dropping `signals` takes its counts back.
            hub.install(signal).map_err(|reason| SignalError::Setup {
                name: name(signal),
                reason,
            })?;
        }
        Ok(signals)
    }

    /// The signals subscribed to, in number order.
    pub fn signals(&self) -> Vec<i32> {
        each(self.sub.wanted).collect()
    }

    /// Waits for the next signal of the set and returns its number. A green thread waits
    /// cooperatively; a plain OS thread blocks. Bounded by the enclosing deadline scope
    /// ([`TimedOut`]); a kill ends it.
    pub fn wait(&self) -> Result<i32, TimedOut> {
        loop {
            match self.sub.bell.get() {
                Ok(()) => {}
                Err(GetError::TimedOut) => return Err(TimedOut),
                // The bell is never closed, and `get` waits while it is empty.
                Err(GetError::Closed | GetError::Empty) => return Err(TimedOut),
            }
            if let Some(signal) = self.sub.take() {
                return Ok(signal);
            }
        }
    }

    /// The next signal already delivered, if any, without waiting.
    pub fn try_wait(&self) -> Option<i32> {
        self.sub.take()
    }
}

struct SignalArm {
    sub: Arc<Subscription>,
    bell: GetArm<()>,
    out: Outcome<i32>,
}

impl Arm for SignalArm {
    fn arm(&mut self, token: &Arc<Token>) {
        self.bell.arm(token);
    }

    fn settle(&mut self, _handed_only: bool) -> bool {
        // A ring whose bit another waiter took fires nothing: the select waits again.
        if self.bell.handed().is_some()
            && let Some(signal) = self.sub.take()
        {
            self.out.set(signal);
            return true;
        }
        false
    }

    fn disarm(&mut self) {
        self.bell.disarm();
    }

    fn describe(&self) -> String {
        self.bell.describe()
    }
}

impl Select<'_> {
    /// A branch that fires with the next signal of `signals`, taking it as
    /// [`Signals::wait`] would: a server's "stop on SIGTERM, or serve the next job".
    ///
    /// ```
    /// use std::time::Duration;
    /// use greenhub::{Queue, Select, signal::Signals};
    ///
    /// let usr2 = Signals::new([libc::SIGUSR2]).unwrap();
    /// let jobs: Queue<u32> = Queue::unbounded();
    /// unsafe { libc::raise(libc::SIGUSR2) };
    /// let mut sel = Select::new();
    /// let sig = sel.signal(&usr2);
    /// let job = sel.get(&jobs);
    /// sel.wait_timeout(Duration::from_secs(10)).unwrap();
    /// assert_eq!(sig.take(), Some(libc::SIGUSR2));
    /// assert!(job.take().is_none());
    /// ```
    pub fn signal(&mut self, signals: &Signals) -> Key<i32> {
        let sub = signals.sub.clone();
        let bell = GetArm::new(&sub.bell);
        self.add(|out| Box::new(SignalArm { sub, bell, out }))
    }
}

impl Subscription {
    /// Takes the lowest pending signal; the others stay pending, with a ring for them.
    fn take(&self) -> Option<i32> {
        let bits = self.pending.swap(0, Ordering::SeqCst);
        if bits == 0 {
            return None;
        }
        let lowest = bits & bits.wrapping_neg();
        let rest = bits & !lowest;
        if rest != 0 {
            self.pending.fetch_or(rest, Ordering::SeqCst);
            self.ring();
        }
        Some(lowest.trailing_zeros() as i32 + 1)
    }

    fn deliver(&self, signal: i32) {
        let b = bit(signal);
        if self.wanted & b != 0 && self.pending.fetch_or(b, Ordering::SeqCst) & b == 0 {
            self.ring();
        }
    }

    fn ring(&self) {
        // Unbounded and never closed: put neither fails nor waits. Rings stay few: one per bit
        // set from clear, and one per take that leaves bits.
        let _ = self.bell.put(());
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        if let Some(Ok(hub)) = HUB.get().map(Result::as_ref) {
            let me = Arc::downgrade(&self.sub);
            hub.subs
                .lock()
                .retain(|s| !s.ptr_eq(&me) && s.strong_count() > 0);
            for signal in each(self.sub.wanted) {
                hub.signals[signal as usize]
                    .subscribers
                    .fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Runs `handler` in a new green thread each time `signal` arrives (gevent's
/// `signal_handler`), until the returned [`Handler`] is cancelled or dropped. The handler gets
/// the signal's number; it runs as an ordinary green thread, never in signal context, so it
/// may do anything.
///
/// ```no_run
/// let reload = greenhub::signal::handle(libc::SIGHUP, |_| println!("reloading")).unwrap();
/// // ... serve ...
/// reload.cancel();
/// ```
pub fn handle(
    signal: i32,
    handler: impl Fn(i32) + Send + Sync + 'static,
) -> Result<Handler, SignalError> {
    let signals = Signals::new([signal])?;
    let handler = Arc::new(handler);
    let listener = Builder::new()
        .name(format!("signal handler {}", name(signal)))
        .spawn(move || {
            while let Ok(signal) = signals.wait() {
                let handler = handler.clone();
                let spawned = Builder::new()
                    .name(format!("on {}", name(signal)))
                    .spawn(move || handler(signal));
                if let Err(e) = spawned {
                    report::warn(&format!(
                        "greenhub: cannot run the handler of {}: {e}",
                        name(signal)
                    ));
                }
            }
        })
        .map_err(|e| SignalError::Setup {
            name: name(signal),
            reason: e.to_string(),
        })?;
    Ok(Handler { listener })
}

/// Saves the flight recorder's last seconds to a file each time `signal` arrives (as
/// [`inspect::save_trace`](crate::inspect::save_trace) does, named `signal`), at most once a
/// second, until the returned [`Handler`] is cancelled or dropped: `kill -USR2 <pid>` keeps
/// what happened before someone noticed trouble, with no inspector attached. The log says
/// where each file went, or why none could be written (the recorder is off, the directory
/// cannot be written).
///
/// ```no_run
/// greenhub::inspect::flight_recorder(true);
/// let _traces = greenhub::signal::save_trace_on(libc::SIGUSR2).unwrap();
/// // ... serve; `kill -USR2 <pid>` writes a trace file ...
/// ```
pub fn save_trace_on(signal: i32) -> Result<Handler, SignalError> {
    let last = Arc::new(Mutex::new(None::<std::time::Instant>));
    handle(signal, move |signal| {
        {
            let mut last = last.lock();
            let now = std::time::Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < std::time::Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        match off_workers(|| flight::save("signal")) {
            Ok(_) => {}
            Err(e) => report::warn(&format!(
                "greenhub: {} asked for a trace, which was not saved: {e}",
                name(signal)
            )),
        }
    })
}

/// A handler installed by [`handle`]; dropping it cancels it.
#[derive(Debug)]
pub struct Handler {
    listener: GreenThread<()>,
}

impl Handler {
    /// Stops handling the signal; with no other subscriber, its default action applies again.
    /// Handlers already started run to their end.
    pub fn cancel(self) {}
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.listener.kill();
        // Killed while waiting (or at its next wait): it ends without running anything else,
        // and its subscription goes with it.
        let _ = self.listener.wait();
    }
}

fn check(signal: i32) -> Result<(), SignalError> {
    if !(1..=MAX_SIGNAL as i32).contains(&signal) {
        return Err(SignalError::Invalid { signal });
    }
    if signal == libc::SIGCHLD {
        return Err(SignalError::Reserved);
    }
    if signal_hook::consts::FORBIDDEN.contains(&signal) || signal == libc::SIGBUS {
        return Err(SignalError::Forbidden { name: name(signal) });
    }
    Ok(())
}

fn bit(signal: i32) -> u64 {
    1u64 << (signal as u32 - 1)
}

fn each(set: u64) -> impl Iterator<Item = i32> {
    (1..=MAX_SIGNAL as i32).filter(move |s| set & bit(*s) != 0)
}

fn names(set: u64) -> String {
    each(set).map(name).collect::<Vec<_>>().join(", ")
}

/// What the process knows of one signal.
#[derive(Default)]
struct SignalState {
    /// Subscriptions that want it: with none, its default action applies.
    subscribers: AtomicUsize,
    /// Arrived and not yet handed to the subscriptions.
    pending: AtomicBool,
    /// The action is installed (once per process).
    installed: OnceLock<Result<(), String>>,
    /// The signal was ignored before greenhub took it: with no subscriber, it stays ignored.
    was_ignored: AtomicBool,
}

/// The signals' shared state and the delivering thread's eventfd.
struct Hub {
    signals: [SignalState; MAX_SIGNAL + 1],
    wake: OwnedFd,
    subs: Mutex<Vec<Weak<Subscription>>>,
}

static HUB: OnceLock<Result<Hub, String>> = OnceLock::new();

fn hub() -> Result<&'static Hub, String> {
    HUB.get_or_init(|| {
        // SAFETY: eventfd has no memory effects; a negative result is an error.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error().to_string());
        }
        // SAFETY: `fd` was just made and nothing else owns it.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Hub {
            signals: std::array::from_fn(|_| SignalState::default()),
            wake,
            subs: Mutex::new(Vec::new()),
        })
    })
    .as_ref()
    .map_err(Clone::clone)
    .and_then(|hub| {
        static DELIVERY: OnceLock<Result<(), String>> = OnceLock::new();
        DELIVERY
            .get_or_init(|| {
                std::thread::Builder::new()
                    .name("greenhub-signals".into())
                    .spawn(move || {
                        // It feeds only the signal queues, whose waits end by themselves.
                        let _own = quiescence::own_thread();
                        deliver(hub)
                    })
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map(|()| hub)
    })
}

impl Hub {
    /// Installs the process-wide action for `signal`, once.
    fn install(&'static self, signal: i32) -> Result<(), String> {
        self.signals[signal as usize]
            .installed
            .get_or_init(|| {
                // What the signal did before: ignored stays ignored once nobody subscribes.
                // SAFETY: sigaction with no new action only reads the current one into `old`.
                let ignored = unsafe {
                    let mut old: libc::sigaction = std::mem::zeroed();
                    libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                        && old.sa_sigaction == libc::SIG_IGN
                };
                self.signals[signal as usize]
                    .was_ignored
                    .store(ignored, Ordering::SeqCst);
                let action = move || self.on_signal(signal);
                // SAFETY: the action is async-signal-safe: it reads and writes atomics, calls
                // write(2) on an eventfd, and emulate_default_handler, which signal-hook
                // documents as async-signal-safe. `check` keeps the forbidden signals out.
                unsafe { signal_hook::low_level::register(signal, action) }
                    .map(drop)
                    .map_err(|e| e.to_string())
            })
            .clone()
    }

    /// In signal context: only atomics and write(2).
    fn on_signal(&self, signal: i32) {
        let state = &self.signals[signal as usize];
        if state.subscribers.load(Ordering::SeqCst) == 0 {
            // Nobody handles it any more: what would have happened without greenhub.
            if !state.was_ignored.load(Ordering::SeqCst) {
                let _ = signal_hook::low_level::emulate_default_handler(signal);
            }
            return;
        }
        state.pending.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to the hub's eventfd, which lives as long as
        // the process (the hub is a static). write(2) is async-signal-safe.
        unsafe {
            libc::write(
                self.wake.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

/// The delivering thread: waits on the eventfd, hands each pending signal to its subscribers.
fn deliver(hub: &'static Hub) {
    loop {
        let mut count: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from the hub's eventfd.
        let n = unsafe {
            libc::read(
                hub.wake.as_raw_fd(),
                (&mut count as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            report::error(&format!(
                "greenhub: signals can no longer be delivered: {}",
                io::Error::last_os_error()
            ));
            return;
        }
        // The pending signals first, the subscriptions after: a subscription is listed before
        // its signals are counted, so every signal taken here finds every subscription that
        // wanted it when it arrived.
        let pending: Vec<i32> = (1..=MAX_SIGNAL as i32)
            .filter(|s| {
                hub.signals[*s as usize]
                    .pending
                    .swap(false, Ordering::SeqCst)
            })
            .collect();
        let subs: Vec<Arc<Subscription>> =
            hub.subs.lock().iter().filter_map(Weak::upgrade).collect();
        for signal in pending {
            for sub in &subs {
                sub.deliver(signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_that_cannot_be_handled_are_refused_with_a_reason() {
        assert_eq!(
            Signals::new([0]).unwrap_err(),
            SignalError::Invalid { signal: 0 }
        );
        assert_eq!(
            Signals::new([65]).unwrap_err(),
            SignalError::Invalid { signal: 65 }
        );
        assert_eq!(Signals::new([]).unwrap_err(), SignalError::Empty);
        assert_eq!(
            Signals::new([libc::SIGCHLD]).unwrap_err(),
            SignalError::Reserved
        );
        for s in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGSEGV,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGBUS,
        ] {
            let e = Signals::new([libc::SIGUSR1, s]).unwrap_err();
            assert!(matches!(e, SignalError::Forbidden { .. }), "{e}");
            assert!(e.to_string().contains("SIG"), "{e}");
        }
        assert_eq!(name(libc::SIGTERM), "SIGTERM");
    }
}
