//! The one way greenhub waits: [`Waiter`], and `wait_io` for descriptors (see `Waiter`).

use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use greenhub_snapshot::{Interest, WaitOn};

use crate::core::alarm;
use crate::core::barrier;
use crate::core::budget;
use crate::core::clock;
use crate::core::context;
use crate::core::monitor;
use crate::core::quiescence;
use crate::core::registry::{self, ThreadRecord, WaitTicket};
use crate::core::stack;
use crate::core::timeout::TimedOut;
use crate::core::timing;
use crate::core::token::{Parker, Token, WAITING};
use crate::core::trace;

/// A token for a new wait of the current thread: the context's, taken out of it, when no
/// waker holds it any more (saving an allocation per wait and any reference count), a new
/// one otherwise. The waiter gives it back when it is dropped (`context::keep_token`).
///
/// The record keeps a weak reference to the token (for the deadlock detector, which only reads
/// its state), so reuse is decided on the strong count alone, and the state is reset with
/// atomic stores: a reader that upgrades meanwhile reads, and the record's wait sequence tells
/// it which wait it saw.
fn fresh_token(ctx: &context::Context) -> Arc<Token> {
    if let Some(token) = ctx.token.take()
        && Arc::strong_count(&token) == 1
        && token.belongs_to(ctx.record())
    {
        // Pairs with the release of the last waker's reference: its uses come first.
        fence(Ordering::Acquire);
        token.state.store(WAITING, Ordering::Relaxed);
        token.via_global.store(false, Ordering::Relaxed);
        return token;
    }
    let parker = if may::coroutine::is_coroutine() {
        Parker::Green(may::coroutine::ParkSlot::new())
    } else {
        Parker::Os(std::thread::current())
    };
    let token = Arc::new(Token {
        state: AtomicU8::new(WAITING),
        via_global: AtomicBool::new(false),
        parker,
        record: ctx.record().cloned(),
    });
    if let Some(record) = ctx.record() {
        let ticket: std::sync::Weak<dyn WaitTicket> = Arc::downgrade(&token) as _;
        *record.token.lock() = ticket;
    }
    token
}

/// One wait of the current green thread (or OS thread).
///
/// The one way greenhub waits: a [`Waiter`] parks the current green thread (or OS thread) until
/// its [`Token`] is woken, its deadline passes, or the thread is killed.
///
/// Every blocking-looking call in greenhub and in the crates built on it (events, queues,
/// joins, sockets, tpool calls, pool checkouts) is a loop around a `Waiter`, so each of them:
///
/// - shows in the registry as waiting on a [`WaitOn`], since when and until which deadline;
/// - honours the deadline scopes of `with_timeout` (the earliest one wins);
/// - unwinds at once when the thread is killed;
/// - parks a green thread cooperatively and a plain OS thread with `std::thread::park`, so the
///   same object can be shared by both.
///
/// A wake-up is a hand-off: [`Token::wake`] succeeds only while the waiter still waits, so an
/// object that hands something to a waiter (a permit, an item) learns whether it was taken or
/// must go to the next waiter. A waiter that gives up (deadline, kill) marks its token
/// abandoned first, so no hand-off is ever lost to a departed waiter.
///
/// ```
/// use greenhub::ext::{ObjectKind, WaitOn, Waiter};
/// use std::time::Duration;
///
/// let waiter = Waiter::new(WaitOn::Object { object: ObjectKind::EVENT, id: 7 }, None);
/// let token = waiter.token().clone();
/// let waker = greenhub::spawn(move || {
///     greenhub::sleep(Duration::from_millis(5)).unwrap();
///     token.wake()
/// });
/// assert_eq!(waiter.wait(), Ok(()));
/// assert!(waker.wait().unwrap());
/// ```
///
/// A `Waiter` belongs to the thread that created it (its token wakes that thread), so it is
/// neither `Send` nor `Sync`; hand its [`Token`] to other threads instead.
#[derive(Debug)]
pub struct Waiter {
    /// Given back to the context on drop.
    token: ManuallyDrop<Arc<Token>>,
    /// The context of the green thread that waits, where the token goes back (null on an OS
    /// thread). It is in the coroutine's local storage, which outlives this waiter on the
    /// coroutine's stack and moves with it from worker to worker.
    home: *const context::Context,
    on: WaitOn,
    deadline: Option<Instant>,
    _not_send: PhantomData<*const ()>,
}

impl Waiter {
    /// Prepares a wait on `on`, bounded by `timeout` (if any) and by the enclosing deadline
    /// scopes. Register [`Waiter::token`] where the waker will find it, then call
    /// [`Waiter::wait`].
    #[inline]
    pub fn new(on: WaitOn, timeout: Option<Duration>) -> Waiter {
        Waiter::until(on, timeout.and_then(|t| Instant::now().checked_add(t)))
    }

    /// Like [`Waiter::new`] with an absolute deadline.
    #[inline]
    pub fn until(on: WaitOn, deadline: Option<Instant>) -> Waiter {
        let (token, scope, home) = context::with(|c| {
            let home = if may::coroutine::is_coroutine() {
                c as *const context::Context
            } else {
                std::ptr::null()
            };
            (fresh_token(c), c.deadline.get(), home)
        });
        let deadline = match (deadline, scope) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Waiter {
            token: ManuallyDrop::new(token),
            home,
            on,
            deadline,
            _not_send: PhantomData,
        }
    }

    /// Changes what the wait shows it waits on, before [`Waiter::wait`]: a wait on several
    /// things knows which object lists them only once it knows it must park.
    pub(crate) fn set_on(&mut self, on: WaitOn) {
        self.on = on;
    }

    /// The token to hand to the waker.
    pub fn token(&self) -> &Arc<Token> {
        &self.token
    }

    /// The effective deadline: the earlier of the wait's own and the enclosing scopes'.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Parks until the token is woken (`Ok`) or the deadline passes (`Err(TimedOut)`).
    ///
    /// A killed green thread unwinds from here. While a killed thread unwinds (its destructors
    /// run), waits cannot park: they return `Err(TimedOut)` at once.
    pub fn wait(self) -> Result<(), TimedOut> {
        if self.token.is_woken() {
            return Ok(());
        }
        match (&self.token.record, &self.token.parker) {
            (Some(record), _) => self.wait_green(record),
            (None, Parker::Green(_)) => self.park_loop(true),
            (None, Parker::Os(_)) if self.deadline.is_none() => {
                // An OS thread in an untimed greenhub wait cannot act until it ends
                // (core/quiescence.rs).
                let _asleep = os_asleep(Some(self.on));
                self.park_loop(false)
            }
            (None, Parker::Os(_)) => self.park_loop(false),
        }
    }

    fn wait_green(&self, record: &ThreadRecord) -> Result<(), TimedOut> {
        check_kill(record);
        // This frame outlives the park: `_resume` below is dropped in it (see core/stack.rs).
        record.begin_wait(self.on, self.deadline.map(clock::instant_ns), stack::here());
        let flags = barrier::flags();
        if flags & barrier::TIMING != 0 {
            timing::wait_begins(record, self.on);
        }
        if flags & barrier::TRACE != 0 {
            trace::waits(record.id, self.on);
        }
        monitor::mark_idle();
        let _resume = Resume::new(record);
        self.park_loop(true)
    }

    fn park_loop(&self, green: bool) -> Result<(), TimedOut> {
        let mut alarm_set = false;
        loop {
            if self.token.is_woken() {
                return Ok(());
            }
            if green && std::thread::panicking() && killed() {
                // Parking is impossible while a cancelled coroutine unwinds.
                return self.give_up();
            }
            match self.deadline {
                None if green => self.park_green(),
                None => std::thread::park(),
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return self.give_up();
                    }
                    if green {
                        // Parks untimed; its alarm unparks it at the deadline (see
                        // alarm.rs for why not `may`'s timed park). Spurious returns loop.
                        if !alarm_set {
                            alarm::set(deadline, Arc::clone(&*self.token) as _);
                            alarm_set = true;
                        }
                        self.park_green();
                    } else {
                        std::thread::park_timeout(deadline - now);
                    }
                }
            }
        }
    }

    fn park_green(&self) {
        if let Parker::Green(slot) = &self.token.parker {
            // The condition may be read after this thread has resumed elsewhere and left
            // this frame (`ParkSlot::park_unless`): it refers to the token itself, which
            // holds the slot, never to this waiter on the stack.
            let token: &Token = &self.token;
            // SAFETY: the condition reads the token, which owns the slot.
            unsafe { slot.park_unless(move || token.parked_done()) };
        }
        if self.token.via_global.load(Ordering::Relaxed) {
            self.token.via_global.store(false, Ordering::Relaxed);
            budget::came_back();
        }
    }

    fn give_up(&self) -> Result<(), TimedOut> {
        if self.token.abandon() {
            Err(TimedOut)
        } else {
            // The wake raced the deadline and won: the hand-off is ours.
            Ok(())
        }
    }
}

/// Notes the calling OS thread as asleep (core/quiescence.rs) and lets a parked monitor look
/// again: the whole process may have fallen asleep only now, on the OS side.
fn os_asleep(on: Option<WaitOn>) -> quiescence::OsWait {
    let asleep = quiescence::OsWait::begin(on);
    monitor::look_again();
    asleep
}

/// Runs `f`, the calling OS thread's wait for work in a pool that acts only on behalf of a
/// caller (a thread pool's thread parked until a call comes): while `f` runs, the thread
/// counts as one that cannot wake a green thread by itself. Without it, a process with such a
/// pool is never found "all asleep" (the deadlock check's last case), which is safe but
/// blind.
///
/// `f` must only wait: a thread that sets an event or puts into a queue inside `f` would make
/// the check report green threads as stuck that it was about to wake.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
///
/// let work = AtomicBool::new(true);
/// // A pool thread waits until a call comes (here one is already there).
/// let found = greenhub::ext::idle_while(|| work.load(Ordering::Acquire));
/// assert!(found);
/// ```
pub fn idle_while<R>(f: impl FnOnce() -> R) -> R {
    let _idle = os_asleep(None);
    f()
}

impl Drop for Waiter {
    fn drop(&mut self) {
        // Reached with the token still waiting only when the wait unwinds (kill) or was
        // never entered: either way nobody may hand anything to it any more.
        self.token.abandon();
        // SAFETY: the token is taken once, here, and not used after.
        let token = unsafe { ManuallyDrop::take(&mut self.token) };
        if self.home.is_null() {
            context::keep_token(token);
        } else {
            // SAFETY: `home` is the waiting green thread's context, alive while it runs (see
            // the field); only that thread reaches it, and this is that thread.
            unsafe { &*self.home }.keep(&mut Some(token));
        }
    }
}

/// Waits until `may`'s poller reports an event on `io` (any event: callers retry their
/// operation and wait again), until `deadline`, or until a kill unwinds the thread. The wait
/// shows in the registry as on the descriptor, and marks the worker idle, like every greenhub
/// wait; only the parking is `may`'s, since readiness reaches the coroutine through the poller
/// and not through a token.
///
/// A green thread's wait shown as on the descriptor is in its record only (the snapshot lists
/// the descriptors of waiting threads from there): no table entry to add and remove around
/// each wait. A wait shown as on something else (`on`), and an OS thread's, register the
/// descriptor with an [`FdWatch`].
///
/// The deadline goes through the descriptor's `alarm`, made on its first timed wait and kept
/// with its registration (see `alarm::IoAlarm`).
///
/// Returns the poller's event bits collected since the previous wait on `io` ended (epoll's
/// `EPOLLIN`, `EPOLLRDHUP`...; each wait clears them as it returns), or a wake-up of the
/// alarm's.
pub(crate) fn wait_io<T: std::os::fd::AsRawFd>(
    io: &may::io::CoIo<T>,
    alarm: &OnceLock<Arc<alarm::IoAlarm>>,
    interest: Interest,
    deadline: Option<Instant>,
    on: Option<WaitOn>,
) -> usize {
    use may::io::WaitIo;
    use std::os::fd::AsRawFd;
    let fd = io.as_raw_fd();
    let alarm = deadline.map(|at| {
        let a = alarm.get_or_init(|| Arc::new(alarm::IoAlarm::new(io.waker())));
        a.begin(at);
        a
    });
    let _end = EndAlarm(alarm.map(|a| &**a));
    context::with(|ctx| match ctx.record() {
        Some(record) => {
            check_kill(record);
            let _watch = on.is_some().then(|| FdWatch::new(fd, interest));
            let on = on.unwrap_or(WaitOn::Fd { fd, interest });
            record.begin_wait(on, deadline.map(clock::instant_ns), stack::here());
            let flags = barrier::flags();
            if flags & barrier::TIMING != 0 {
                timing::wait_begins(record, on);
            }
            if flags & barrier::TRACE != 0 {
                trace::waits(record.id, on);
            }
            monitor::mark_idle();
            let _resume = Resume::new(record);
            io.wait_io()
        }
        None => {
            let _watch = FdWatch::new(fd, interest);
            io.wait_io()
        }
    })
}

/// Ends a descriptor wait's deadline in its alarm however the wait ends, unwinding included.
struct EndAlarm<'a>(Option<&'a alarm::IoAlarm>);

impl Drop for EndAlarm<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.0 {
            a.end();
        }
    }
}

/// Shows in the registry that the current green thread (or OS thread) waits on a descriptor,
/// for as long as the value lives. The I/O waits of OS threads create one around each wait for
/// readiness, and so do a green thread's waits shown as on another object; a green thread's
/// plain wait on a descriptor shows through its own record.
#[derive(Debug)]
pub struct FdWatch {
    id: u64,
}

impl FdWatch {
    /// Registers a wait of the current green thread (or OS thread) on `fd`.
    pub fn new(fd: i32, interest: Interest) -> FdWatch {
        let reg = registry::registry();
        let id = reg.next_id();
        reg.insert_fd(
            id,
            registry::FdEntry {
                fd,
                interest,
                owner: context::current_id(),
                since_ns: clock::coarse_ns(),
            },
        );
        FdWatch { id }
    }
}

impl Drop for FdWatch {
    fn drop(&mut self) {
        registry::registry().remove_fd(self.id);
    }
}

/// Marks the thread running again however the wait ends, unwinding included.
struct Resume<'a>(&'a ThreadRecord);

impl<'a> Resume<'a> {
    /// Leaves the thread's span for the wait; [`Resume`]'s drop enters it again.
    fn new(record: &'a ThreadRecord) -> Resume<'a> {
        #[cfg(feature = "tracing")]
        context::with(context::leave_span);
        Resume(record)
    }
}

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        self.0.set_running();
        monitor::mark_running(self.0);
        #[cfg(feature = "tracing")]
        context::with(context::return_to_span);
    }
}

fn killed() -> bool {
    context::with(|c| {
        c.record()
            .is_some_and(|r| r.kill_requested.load(Ordering::Acquire))
    })
}

/// Unwinds the current green thread if a kill was requested (and it is not unwinding already).
#[inline]
pub(crate) fn check_kill(record: &ThreadRecord) {
    if record.kill_requested.load(Ordering::Acquire) && !std::thread::panicking() {
        may::coroutine::trigger_cancel_panic();
    }
}
