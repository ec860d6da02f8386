//! Green threads: spawning, waiting, killing, linking.

use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use thiserror::Error;

use greenhub_snapshot::WaitOn;

use crate::core::config;
use crate::core::context::{self, Inheritance, PanicReport};
use crate::core::limits::{SpawnError, StackPermit};
use crate::core::registry::{
    Ending, Identity, Phase, RecordRef, ThreadRecord, Threaded, TimerKind, os_thread_mark, registry,
};
use crate::core::report::payload_message;
use crate::core::timeout::{IsTimeout, TimedOut};
use crate::core::token::Token;
use crate::core::wait::Waiter;
use crate::core::{alarm, barrier, doze, monitor, report, stack, timing, trace};
use crate::green::time::sleep;
use crate::start;

/// How a green thread failed to produce its value.
#[derive(Debug, Clone, Error)]
pub enum JoinError {
    /// The thread panicked.
    #[error("green thread #{id} panicked at {location}: {message}")]
    Panicked {
        /// The thread's id.
        id: u64,
        /// The panic message.
        message: String,
        /// Where it panicked (`file:line:column`).
        location: String,
        /// The backtrace, when `RUST_BACKTRACE` asked for one.
        backtrace: Option<Arc<std::backtrace::Backtrace>>,
    },
    /// The thread was killed.
    #[error("green thread #{id} was killed")]
    Killed {
        /// The thread's id.
        id: u64,
    },
    /// A deadline passed first: the join's (`id` is the awaited thread, which goes on
    /// running), or that of another wait whose [`TimedOut`] was turned into this error by `?`
    /// (`id` is `None`).
    #[error("{}", match id {
        Some(id) => format!("timed out waiting for green thread #{id}; it is still running"),
        None => "timed out: the deadline passed before the wait completed".to_owned(),
    })]
    TimedOut {
        /// The awaited thread's id, when the deadline passed in the join itself.
        id: Option<u64>,
    },
    /// An earlier [`GreenThread::wait`] took the value already.
    #[error("the value of green thread #{id} was taken by an earlier wait")]
    AlreadyJoined {
        /// The thread's id.
        id: u64,
    },
    /// A `spawn_after` thread could not start when its delay ended.
    #[error("green thread #{id} could not start: {source}")]
    NotStarted {
        /// The thread's id.
        id: u64,
        /// Why.
        source: SpawnError,
    },
}

impl From<TimedOut> for JoinError {
    fn from(_: TimedOut) -> JoinError {
        JoinError::TimedOut { id: None }
    }
}

impl IsTimeout for JoinError {
    fn is_timeout(&self) -> bool {
        matches!(self, JoinError::TimedOut { .. })
    }
}

type Link<T> = Box<dyn FnOnce(Result<&T, &JoinError>) + Send>;

/// A thread's outcome as its state keeps it: the error boxed, since every thread's state has
/// room for an outcome and few threads fail.
type Outcome<T> = Result<T, Box<JoinError>>;

/// The outcome as the link callbacks see it.
fn lent<T>(outcome: &Outcome<T>) -> Result<&T, &JoinError> {
    outcome.as_ref().map_err(|e| &**e)
}

/// The tokens of the threads waiting for the end. Almost always one, kept inline so that a
/// join does not allocate; more go in a list made when needed.
#[derive(Default)]
struct Waiters {
    first: Option<Arc<Token>>,
    #[expect(
        clippy::box_collection,
        reason = "one word in every thread's state where a vector takes three"
    )]
    more: Option<Box<Vec<Arc<Token>>>>,
}

impl Waiters {
    fn push(&mut self, token: Arc<Token>) {
        // Tokens of waits that timed out are dropped here, so the list stays short.
        if self.first.as_ref().is_some_and(|t| !t.is_waiting()) {
            self.first = None;
        }
        if let Some(more) = &mut self.more {
            more.retain(|t| t.is_waiting());
        }
        match self.first {
            None => self.first = Some(token),
            Some(_) => self.more.get_or_insert_default().push(token),
        }
    }

    fn wake_all(self) {
        for t in self
            .first
            .into_iter()
            .chain(self.more.into_iter().flat_map(|m| *m))
        {
            t.wake();
        }
    }
}

/// The join side of a handle's state. Part of every thread's state, so kept small: what most
/// threads never have (a failure, a second waiter, a link) is boxed.
struct JoinState<T> {
    /// `Some` once the thread has ended, until `wait` takes it.
    result: Option<Outcome<T>>,
    finished: bool,
    waiters: Waiters,
    /// The link callbacks not run yet (`None` when there are none).
    #[expect(
        clippy::box_collection,
        reason = "one word in every thread's state where a vector takes three"
    )]
    links: Option<Box<Vec<Link<T>>>>,
    handle_alive: bool,
    /// Set when a `wait` has taken the result.
    taken: bool,
    /// The coroutine, once `may` has made it (what a kill cancels).
    coroutine: Option<may::coroutine::Coroutine>,
}

/// A green thread's handle state, with its record and its context inline: one allocation
/// per thread. Laid out in declaration order (`repr(C)`), the context right after the record:
/// the record's hot tail and the context's hot head are one run of bytes (see `ThreadRecord`).
#[repr(C)]
struct Shared<T> {
    record: ThreadRecord,
    /// Reached only by the thread itself, through `may`'s pointer (core/context.rs).
    context: context::Owned,
    /// The pending start timer of a `spawn_after` thread (0 when none).
    start_timer: AtomicU64,
    done: AtomicBool,
    join: Mutex<JoinState<T>>,
}

/// A handle to a green thread: wait for its value, kill it, link a callback to its end.
///
/// Dropping the handle detaches the thread; it runs on. If it panics and nobody waits for it,
/// its panic is reported once through `log`.
pub struct GreenThread<T> {
    shared: Arc<Shared<T>>,
}

/// Configures a green thread before spawning it.
///
/// ```
/// let t = greenhub::thread::Builder::new()
///     .name("worker")
///     .stack_size(256 * 1024)
///     .spawn(|| greenhub::current().unwrap().name().map(String::from))
///     .unwrap();
/// assert_eq!(t.wait().unwrap().as_deref(), Some("worker"));
/// ```
#[derive(Debug, Default, Clone)]
pub struct Builder {
    name: Option<String>,
    stack_size: Option<usize>,
}

impl Builder {
    /// A builder with no name and the runtime's default stack size.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Names the thread (shown by the inspector and in panic reports).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Sets the stack size in bytes (rounded up to whole pages). A stack overflow kills the
    /// whole process, so give deep recursion room; see the crate docs on stack sizes.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// Spawns the thread. Its parent is the calling green thread; its spawn site is the caller.
    #[track_caller]
    pub fn spawn<F, T>(self, f: F) -> Result<GreenThread<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.spawn_from(Location::caller(), context::current_id(), f)
    }

    /// Spawns the thread to start after `delay` (eventlet's `spawn_after`). Until then it costs
    /// a timer entry, not a stack; killing it before it starts means it never runs.
    #[track_caller]
    pub fn spawn_after<F, T>(self, delay: Duration, f: F) -> Result<GreenThread<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let site = Location::caller();
        let stack = self.checked_stack_size()?;
        let (shared, inherited) = self.create(site, context::current_id(), stack, Phase::Scheduled);
        let starter = shared.clone();
        let job = Box::new(move || {
            starter.start_timer.store(0, Ordering::Release);
            if let Err(source) = starter.clone().start(stack, f, inherited) {
                let id = starter.record.id;
                starter.finish(Err(JoinError::NotStarted { id, source }));
            }
        });
        let id = alarm::schedule(
            delay,
            TimerKind::SpawnAfter,
            Some(shared.record.id),
            site,
            job,
        );
        shared.start_timer.store(id, Ordering::Release);
        Ok(GreenThread { shared })
    }

    pub(crate) fn spawn_from<F, T>(
        self,
        site: &'static Location<'static>,
        parent: Option<u64>,
        f: F,
    ) -> Result<GreenThread<T>, SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let stack = self.checked_stack_size()?;
        let (shared, inherited) = self.create(site, parent, stack, Phase::Running);
        match shared.clone().start(stack, f, inherited) {
            Ok(()) => Ok(GreenThread { shared }),
            Err(e) => {
                // Never started: it leaves no trace but the error.
                shared.join.lock().handle_alive = false;
                registry()
                    .finish_thread(shared.record.id, Ending::NotStarted(e.to_string().into()));
                Err(e)
            }
        }
    }

    fn checked_stack_size(&self) -> Result<usize, SpawnError> {
        let rt = start::runtime();
        match self.stack_size {
            None => Ok(rt.config.settings().stack_size),
            Some(bytes) => {
                config::validate_stack_size(bytes)
                    .map_err(|_| SpawnError::InvalidStackSize(bytes))?;
                Ok(config::round_to_pages(bytes))
            }
        }
    }

    fn create<T: Send + 'static>(
        self,
        site: &'static Location<'static>,
        parent: Option<u64>,
        stack: usize,
        phase: Phase,
    ) -> (Arc<Shared<T>>, Inheritance) {
        let reg = registry();
        // One look at the spawner's context: who it is, and what it hands down.
        let (me, inherited) = context::with(|c| {
            (
                c.record().map(|r| (r.id, r.origin)),
                Inheritance::capture_in(c),
            )
        });
        // The line of spawns it belongs to: the spawning green thread's, or that of the parent
        // named for it (a timer's owner), or the spawning OS thread's own.
        let origin = match me {
            Some((id, origin)) if parent.is_none_or(|p| p == id) => origin,
            _ => parent
                .and_then(|p| reg.thread(p))
                .map_or_else(os_thread_mark, |r| r.origin),
        };
        let shared = Arc::new(Shared {
            record: ThreadRecord::new(
                Identity {
                    id: reg.next_id(),
                    name: self.name.map(Arc::from),
                    parent,
                    origin,
                    site,
                    stack_size: stack,
                },
                phase,
            ),
            context: context::Owned::default(),
            start_timer: AtomicU64::new(0),
            done: AtomicBool::new(false),
            join: Mutex::new(JoinState {
                result: None,
                finished: false,
                waiters: Waiters::default(),
                links: None,
                handle_alive: true,
                taken: false,
                coroutine: None,
            }),
        });
        reg.insert_thread(RecordRef::new(shared.clone()));
        (shared, inherited)
    }
}

/// Spawns a green thread running `f` and returns its handle (eventlet's `spawn`).
///
/// The thread's parent is the calling green thread (none from an OS thread) and its spawn site
/// is the caller's location; both show in the registry.
///
/// # Panics
///
/// If the thread cannot be created: see [`SpawnError`]. [`Builder::spawn`] returns the error
/// instead; servers that spawn per connection should use it (or a `GreenPool`).
///
/// ```
/// let t = greenhub::spawn(|| 6 * 7);
/// assert_eq!(t.wait().unwrap(), 42);
/// ```
#[track_caller]
pub fn spawn<F, T>(f: F) -> GreenThread<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match Builder::new().spawn_from(Location::caller(), context::current_id(), f) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

/// Spawns a green thread that starts after `delay` (eventlet's `spawn_after`).
///
/// # Panics
///
/// As [`spawn`]; [`Builder::spawn_after`] returns the error instead.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let t0 = Instant::now();
/// let t = greenhub::thread::spawn_after(Duration::from_millis(10), move || t0.elapsed());
/// assert!(t.wait().unwrap() >= Duration::from_millis(10));
/// ```
#[track_caller]
pub fn spawn_after<F, T>(delay: Duration, f: F) -> GreenThread<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    match Builder::new().spawn_after(delay, f) {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

impl<T: Send + 'static> Shared<T> {
    /// Creates the coroutine. The stack permit travels with it and is given back when the
    /// body returns (just before `may` recycles or unmaps the stack).
    fn start<F>(
        self: Arc<Self>,
        stack: usize,
        f: F,
        inherited: Inheritance,
    ) -> Result<(), SpawnError>
    where
        F: FnOnce() -> T + Send + 'static,
    {
        let rt = start::runtime();
        let permit = rt.budget.acquire(stack)?;
        let shared = self.clone();
        let body = move || shared.run(f, permit, inherited);
        let builder =
            may::coroutine::Builder::new().stack_size(stack / std::mem::size_of::<usize>());
        // SAFETY: `may` asks callers of `spawn` to keep thread-locals out of the coroutine and
        // not to overflow its stack. greenhub's own code keeps no thread-local across a wait
        // (core/context.rs); user code is warned in the crate docs, and the stack is the size
        // the user chose, checked against greenhub's minimum. A stack that cannot be mapped
        // comes back as an error.
        let handle =
            unsafe { builder.spawn_detached(body) }.map_err(|e| SpawnError::StackAllocation {
                stack_size: stack,
                reason: e.to_string(),
            })?;
        self.join.lock().coroutine = Some(handle);
        doze::queued(barrier::flags());
        // A kill that came before the coroutine handle was stored could not cancel it.
        if self.record.kill_requested.load(Ordering::SeqCst) {
            self.cancel_coroutine();
        }
        Ok(())
    }

    /// The coroutine's body.
    fn run<F>(self: Arc<Self>, f: F, permit: StackPermit, inherited: Inheritance)
    where
        F: FnOnce() -> T,
    {
        let record = &self.record;
        let id = record.id;
        // A pointer to the context made from the state's own pointer: `release_context`
        // steps back from it to the state.
        let state = Arc::as_ptr(&self);
        // SAFETY: a field of the live state `self` points to.
        let context =
            unsafe { NonNull::new_unchecked(std::ptr::addr_of!((*state).context).cast_mut()) };
        // SAFETY: the context lives in the state the reference handed over keeps alive, and
        // `release_context` lets go of that reference once.
        unsafe { context::adopt(context, RecordRef::new(self.clone()), release_context::<T>) };
        context::with(|c| inherited.install(c, record));
        stack::set_base(record);
        record.set_running();
        monitor::mark_running(record);
        let result = if record.kill_requested.load(Ordering::SeqCst) {
            drop(f);
            Err(JoinError::Killed { id })
        } else {
            match catch_unwind(AssertUnwindSafe(f)) {
                Ok(v) => Ok(v),
                Err(payload) => Err(outcome_of_panic(id, &*payload)),
            }
        };
        if timing::on() {
            timing::ends(record);
        }
        self.finish(result);
        context::with(|c| {
            context::end_span(c);
            c.end();
        });
        monitor::mark_idle();
        drop(permit);
    }

    fn cancel_coroutine(&self) {
        let co = self.join.lock().coroutine.clone();
        if let Some(co) = co
            && !self.done.load(Ordering::Acquire)
        {
            // SAFETY: cancelling makes the coroutine unwind (with `may`'s Cancel payload)
            // at its next wait, running its destructors; greenhub's body catches that
            // unwind and reports the thread as killed. Cancelling a finished coroutine
            // only sets a flag on its handle.
            unsafe { co.cancel() };
        }
    }

    fn kill(&self) {
        if self.done.load(Ordering::Acquire) {
            return;
        }
        self.record.kill_requested.store(true, Ordering::SeqCst);
        if trace::on() {
            trace::kill(self.record.id, context::current_id());
        }
        let timer_id = self.start_timer.swap(0, Ordering::AcqRel);
        if timer_id != 0 && alarm::cancel(timer_id) {
            self.finish(Err(JoinError::Killed { id: self.record.id }));
            return;
        }
        self.cancel_coroutine();
        // A wait parked in its token's slot is not registered with `may`'s cancel: poke it,
        // and it unwinds as it resumes.
        if let Some(ticket) = self.record.token.lock().upgrade() {
            ticket.poke();
        }
    }

    /// Publishes the outcome: runs the links, leaves the live registry, wakes the waiters.
    fn finish(&self, result: Result<T, JoinError>) {
        let id = self.record.id;
        let killed = matches!(result, Err(JoinError::Killed { .. }));
        let (waiters, report, unclaimed, coroutine) = loop {
            let links = {
                let mut st = self.join.lock();
                if st.links.is_none() {
                    let ending = match &result {
                        Ok(_) => Ending::Returned,
                        Err(JoinError::Panicked { message, .. }) => {
                            Ending::Panicked(message.as_str().into())
                        }
                        Err(JoinError::NotStarted { source, .. }) => {
                            Ending::NotStarted(source.to_string().into())
                        }
                        Err(_) => Ending::Killed,
                    };
                    registry().finish_thread(id, ending);
                    let report =
                        !st.handle_alive && matches!(result, Err(JoinError::Panicked { .. }));
                    let report = report.then(|| result.as_ref().err().cloned()).flatten();
                    // With the handle gone nobody can claim the value: it is dropped here, by
                    // the thread itself, rather than by whoever lets go of the thread's state
                    // last (a stale wait token, a snapshot on the monitor thread). The
                    // coroutine's handle is of no more use either (nothing left to cancel).
                    let unclaimed = if st.handle_alive {
                        st.result = Some(result.map_err(Box::new));
                        None
                    } else {
                        Some(result)
                    };
                    st.finished = true;
                    self.done.store(true, Ordering::Release);
                    break (
                        std::mem::take(&mut st.waiters),
                        report,
                        unclaimed,
                        st.coroutine.take(),
                    );
                }
                st.links.take().map_or_else(Vec::new, |links| *links)
            };
            if killed {
                run_links_after_kill(id, links);
            } else {
                for link in links {
                    run_link(id, link, result.as_ref());
                }
            }
        };
        drop(coroutine);
        drop(unclaimed);
        waiters.wake_all();
        if let Some(err) = report {
            report_unobserved(&self.record, &err);
        }
    }
}

/// Lets go of the reference to a green thread's state that its context's pointer in `may`
/// held (see `context::adopt`), as `may` drops the coroutine's local storage.
///
/// # Safety
///
/// `pointer` points to the context inside a live `Shared<T>`, for which `adopt` was given one
/// reference; called once.
unsafe fn release_context<T: Send + 'static>(pointer: NonNull<()>) {
    // SAFETY: as the caller says; a thread that never ended stops the process here.
    unsafe { context::check_released(pointer) };
    let offset = std::mem::offset_of!(Shared<T>, context);
    // SAFETY: the context is the `context` field of a `Shared<T>` that `adopt`'s reference
    // keeps alive: stepping back by the field's offset gives that state, and the record the
    // context was adopted with owns no reference of its own (it is the same one).
    unsafe {
        let shared = pointer
            .as_ptr()
            .cast::<u8>()
            .sub(offset)
            .cast::<Shared<T>>();
        drop(Arc::from_raw(shared));
    }
}

/// A killed coroutine unwinds at every wait until it ends, so the links of a killed thread run
/// in a fresh green thread where they may wait.
fn run_links_after_kill<T: 'static>(id: u64, links: Vec<Link<T>>) {
    let killed = JoinError::Killed { id };
    let spawned =
        Builder::new()
            .name("links")
            .spawn_from(Location::caller(), Some(id), move || {
                for link in links {
                    run_link::<T>(id, link, Err(&killed));
                }
            });
    if let Err(e) = spawned {
        report::error(&format!(
            "greenhub: the link callbacks of killed green thread #{id} could not run: {e}"
        ));
    }
}

fn run_link<T>(id: u64, link: Link<T>, result: Result<&T, &JoinError>) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| link(result))) {
        let message = context::take_panic()
            .map(|p| p.message)
            .unwrap_or_else(|| payload_message(&*payload));
        report::error(&format!(
            "greenhub: a link callback of green thread #{id} panicked: {message}"
        ));
    }
}

fn outcome_of_panic(id: u64, payload: &(dyn std::any::Any + Send)) -> JoinError {
    if matches!(
        payload.downcast_ref::<generator::Error>(),
        Some(generator::Error::Cancel)
    ) {
        return JoinError::Killed { id };
    }
    let PanicReport {
        message,
        location,
        backtrace,
    } = context::take_panic().unwrap_or_else(|| PanicReport {
        message: payload_message(payload),
        location: "<unknown>".into(),
        backtrace: None,
    });
    JoinError::Panicked {
        id,
        message,
        location,
        backtrace,
    }
}

fn report_unobserved(record: &ThreadRecord, err: &JoinError) {
    let JoinError::Panicked {
        message,
        location,
        backtrace,
        ..
    } = err
    else {
        return;
    };
    let name = record
        .name
        .as_deref()
        .map(|n| format!(" \"{n}\""))
        .unwrap_or_default();
    let mut text = format!(
        "green thread #{}{name} (spawned at {}) panicked at {location}: {message}; nobody waited for it",
        record.id, record.site
    );
    if let Some(bt) = backtrace {
        text.push_str(&format!("\n{bt}"));
    }
    report::error(&text);
}

impl<T: Send + 'static> GreenThread<T> {
    /// The thread's id (unique for the life of the process).
    pub fn id(&self) -> u64 {
        self.shared.record.id
    }

    /// The thread's name, if it was given one.
    pub fn name(&self) -> Option<&str> {
        self.shared.record.name.as_deref()
    }

    /// Whether the thread has ended (returned, panicked, was killed or could not start).
    pub fn is_done(&self) -> bool {
        self.shared.done.load(Ordering::Acquire)
    }

    /// Waits for the thread to end and returns its value, or why there is none.
    ///
    /// A deadline scope around the call bounds the wait: past it, `Err(JoinError::TimedOut)`
    /// and the thread runs on; the handle stays usable, to wait again or to kill it. The first
    /// wait that finds the thread ended takes its value; later ones get
    /// [`JoinError::AlreadyJoined`]. Works from green threads and OS threads alike.
    ///
    /// ```
    /// let t = greenhub::spawn(|| -> u8 { panic!("boom") });
    /// let err = t.wait().unwrap_err();
    /// assert!(err.to_string().contains("boom"));
    /// ```
    pub fn wait(&self) -> Result<T, JoinError> {
        let id = self.id();
        loop {
            let waiter = {
                let mut st = self.shared.join.lock();
                if st.finished {
                    if let Some(result) = st.result.take() {
                        st.taken = true;
                        return result.map_err(|e| *e);
                    }
                    if st.taken {
                        return Err(JoinError::AlreadyJoined { id });
                    }
                    // Lent to a `link` call running its callbacks: it wakes us when it is back.
                }
                let waiter = Waiter::new(WaitOn::Join { thread: id }, None);
                st.waiters.push(waiter.token().clone());
                waiter
            };
            if waiter.wait().is_err() {
                return Err(JoinError::TimedOut { id: Some(id) });
            }
        }
    }

    /// Waits up to `timeout` (or an enclosing deadline) for the thread to end, without taking
    /// its value: `Ok(())` once it has ended, then [`GreenThread::wait`] returns at once.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let t = greenhub::spawn(|| greenhub::sleep(Duration::from_secs(5)));
    /// assert!(t.wait_timeout(Duration::from_millis(5)).is_err());
    /// t.kill();
    /// assert!(t.wait().is_err());
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<(), TimedOut> {
        let id = self.id();
        loop {
            let waiter = {
                let mut st = self.shared.join.lock();
                if st.finished {
                    return Ok(());
                }
                let waiter = Waiter::new(WaitOn::Join { thread: id }, Some(timeout));
                st.waiters.push(waiter.token().clone());
                waiter
            };
            waiter.wait()?;
        }
    }

    /// Asks the thread to die: it unwinds at its next wait (or at once if it is waiting), its
    /// destructors run (locks and pooled connections it holds are released), and its outcome
    /// becomes [`JoinError::Killed`]. A thread not started yet never runs. Returns at once;
    /// [`GreenThread::wait`] tells when it has ended. A thread that never waits cannot be
    /// killed (it can poll [`crate::kill_requested`]).
    pub fn kill(&self) {
        self.shared.kill();
    }

    /// Calls `f` when the thread ends, whatever the outcome (eventlet's `link`). `f` runs in a
    /// green thread and may wait; if the thread has already ended, `f` runs now, in the caller.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let t = greenhub::spawn(|| 5);
    /// t.link(move |r| tx.send(*r.unwrap()).unwrap());
    /// assert_eq!(rx.recv().unwrap(), 5);
    /// ```
    pub fn link<F>(&self, f: F)
    where
        F: FnOnce(Result<&T, &JoinError>) + Send + 'static,
    {
        let id = self.id();
        let mut st = self.shared.join.lock();
        // Not ended yet: the thread runs it. Ended, but the result is lent to a concurrent
        // `link` call: that call runs it when it gives the result back.
        let Some(result) = st.result.take().filter(|_| st.finished) else {
            st.links.get_or_insert_default().push(Box::new(f));
            return;
        };
        let mut links: Vec<Link<T>> = vec![Box::new(f)];
        loop {
            // The result is lent out of the lock so that the callbacks may wait.
            drop(st);
            for link in links {
                run_link(id, link, lent(&result));
            }
            st = self.shared.join.lock();
            links = st.links.take().map_or_else(Vec::new, |links| *links);
            if links.is_empty() {
                st.result = Some(result);
                // A `wait` that came while the result was lent out waits for it.
                let waiters = std::mem::take(&mut st.waiters);
                drop(st);
                waiters.wake_all();
                return;
            }
        }
    }
}

impl<T: Send + 'static> GreenThread<T> {
    /// Kills the thread and waits up to `timeout` (or an enclosing deadline) for it to end
    /// (gevent's `kill(block=True, timeout=...)`): `Ok(())` once it has ended.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let t = greenhub::spawn(|| greenhub::sleep(Duration::from_secs(60)));
    /// assert!(t.kill_and_wait(Duration::from_secs(5)).is_ok());
    /// assert!(t.is_done());
    /// ```
    pub fn kill_and_wait(&self, timeout: Duration) -> Result<(), TimedOut> {
        self.kill();
        self.wait_timeout(timeout)
    }

    /// Calls `f` with the thread's value if it returns one (gevent's `link_value`); nothing
    /// if it panicked or was killed. Runs as [`GreenThread::link`] callbacks do.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let t = greenhub::spawn(|| 5);
    /// t.link_value(move |v| tx.send(*v).unwrap());
    /// assert_eq!(rx.recv().unwrap(), 5);
    /// ```
    pub fn link_value<F>(&self, f: F)
    where
        F: FnOnce(&T) + Send + 'static,
    {
        self.link(move |r| {
            if let Ok(v) = r {
                f(v)
            }
        });
    }

    /// Calls `f` with why the thread has no value (it panicked, was killed, or could not
    /// start; gevent's `link_exception`); nothing if it returned one. Runs as
    /// [`GreenThread::link`] callbacks do.
    ///
    /// ```
    /// use std::sync::mpsc;
    ///
    /// let (tx, rx) = mpsc::channel();
    /// let t = greenhub::spawn(|| -> u8 { panic!("boom") });
    /// t.link_error(move |e| tx.send(e.to_string()).unwrap());
    /// assert!(rx.recv().unwrap().contains("boom"));
    /// ```
    pub fn link_error<F>(&self, f: F)
    where
        F: FnOnce(&JoinError) + Send + 'static,
    {
        self.link(move |r| {
            if let Err(e) = r {
                f(e)
            }
        });
    }

    /// Adds `token` to the waiters of the thread's end; false if it has ended already.
    fn watch_end(&self, token: &Arc<Token>) -> bool {
        self.shared.watch(token)
    }

    /// The thread's end, to wait for without knowing its value type.
    pub(crate) fn end_watch(&self) -> Arc<dyn EndWatch> {
        self.shared.clone()
    }
}

/// The end of a green thread, whatever its value type: what a wait on several things
/// watches.
pub(crate) trait EndWatch: Send + Sync {
    /// Adds `token` to the waiters of the end; false if the thread has ended already.
    fn watch(&self, token: &Arc<Token>) -> bool;
    /// Whether the thread has ended.
    fn ended(&self) -> bool;
    /// The thread's id.
    fn id(&self) -> u64;
}

impl<T: Send + 'static> Threaded for Shared<T> {
    fn record(&self) -> &ThreadRecord {
        &self.record
    }

    fn kill(&self) {
        Shared::kill(self);
    }
}

/// Kills the green thread `id`, as [`GreenThread::kill`] does, without its handle (what an
/// operator does from the inspector). Returns `false` if no such thread is alive.
///
/// ```
/// use std::time::Duration;
///
/// let t = greenhub::spawn(|| greenhub::sleep(Duration::from_secs(60)));
/// assert!(greenhub::thread::kill(t.id()));
/// assert!(t.wait().is_err());
/// assert!(!greenhub::thread::kill(t.id()), "it has ended");
/// ```
pub fn kill(id: u64) -> bool {
    registry().thread(id).map(|r| r.kill()).is_some()
}

impl<T: Send + 'static> EndWatch for Shared<T> {
    fn watch(&self, token: &Arc<Token>) -> bool {
        let mut st = self.join.lock();
        if st.finished {
            return false;
        }
        st.waiters.push(token.clone());
        true
    }

    fn ended(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    fn id(&self) -> u64 {
        self.record.id
    }
}

/// Waits until one of `threads` has ended and returns its index (gevent's `wait(count=1)`),
/// or `Err(TimedOut)` past `timeout` or the enclosing deadline. The threads' values stay in
/// them, for [`GreenThread::wait`]. An empty list is a timeout at once.
///
/// ```
/// use std::time::Duration;
///
/// let slow = greenhub::spawn(|| { greenhub::sleep(Duration::from_secs(30)).ok(); 1 });
/// let quick = greenhub::spawn(|| 2);
/// let threads = [slow, quick];
/// assert_eq!(greenhub::thread::wait_any(&threads, None), Ok(1));
/// assert_eq!(threads[1].wait().unwrap(), 2);
/// threads[0].kill();
/// ```
pub fn wait_any<T: Send + 'static>(
    threads: &[GreenThread<T>],
    timeout: Option<Duration>,
) -> Result<usize, TimedOut> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let Some(first) = threads.first() else {
        return Err(TimedOut);
    };
    loop {
        if let Some(i) = threads.iter().position(|t| t.is_done()) {
            return Ok(i);
        }
        // One wait, its token among the waiters of every thread: the first end wakes it.
        let waiter = Waiter::until(WaitOn::Join { thread: first.id() }, deadline);
        for (i, t) in threads.iter().enumerate() {
            if !t.watch_end(waiter.token()) {
                return Ok(i);
            }
        }
        waiter.wait()?;
    }
}

/// Waits until every one of `threads` has ended (gevent's `joinall`), up to `timeout` or the
/// enclosing deadline (`Err(TimedOut)`; the threads run on). Their values stay in them.
///
/// ```
/// let threads: Vec<_> = (0..10).map(|i| greenhub::spawn(move || i * 2)).collect();
/// greenhub::thread::join_all(&threads, None).unwrap();
/// assert!(threads.iter().all(|t| t.is_done()));
/// ```
pub fn join_all<T: Send + 'static>(
    threads: &[GreenThread<T>],
    timeout: Option<Duration>,
) -> Result<(), TimedOut> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    for t in threads {
        loop {
            if t.is_done() {
                break;
            }
            let waiter = Waiter::until(WaitOn::Join { thread: t.id() }, deadline);
            if t.watch_end(waiter.token()) {
                waiter.wait()?;
            }
        }
    }
    Ok(())
}

/// Kills every one of `threads` and waits until all have ended (gevent's `killall`), up to
/// `timeout` or the enclosing deadline (`Err(TimedOut)`: some have not ended yet).
///
/// ```
/// use std::time::Duration;
///
/// let threads: Vec<_> = (0..10)
///     .map(|_| greenhub::spawn(|| greenhub::sleep(Duration::from_secs(60))))
///     .collect();
/// greenhub::thread::kill_all(&threads, Some(Duration::from_secs(5))).unwrap();
/// assert!(threads.iter().all(|t| t.is_done()));
/// ```
pub fn kill_all<T: Send + 'static>(
    threads: &[GreenThread<T>],
    timeout: Option<Duration>,
) -> Result<(), TimedOut> {
    for t in threads {
        t.kill();
    }
    join_all(threads, timeout)
}

/// Waits until every green thread has ended and no [`call_after`](crate::call_after) is
/// pending (gevent's `hub.join()`), up to `timeout` or the enclosing deadline
/// (`Err(TimedOut)`). For tests and small scripts: "run what was started, then go on".
///
/// Called from a green thread, that thread is not counted, but one waiting for it is, and
/// keeps the process from ever being idle: call it from the main thread. A green thread that
/// never ends (a server's accept loop, a signal handler) keeps it waiting until the timeout.
/// It looks at the registry every few milliseconds.
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
/// use std::time::Duration;
///
/// let done = Arc::new(AtomicUsize::new(0));
/// for _ in 0..10 {
///     let done = done.clone();
///     greenhub::spawn(move || {
///         greenhub::sleep(Duration::from_millis(2)).unwrap();
///         // Threads spawned meanwhile, and timers, are waited for too.
///         greenhub::call_after(Duration::from_millis(2), move || {
///             done.fetch_add(1, Ordering::SeqCst);
///         });
///     });
/// }
/// greenhub::run_until_idle(Some(Duration::from_secs(30))).unwrap();
/// assert_eq!(done.load(Ordering::SeqCst), 10);
/// ```
pub fn run_until_idle(timeout: Option<Duration>) -> Result<(), TimedOut> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let me = u64::from(context::current_id().is_some());
    let mut pause = Duration::from_millis(1);
    loop {
        if registry().quiet(me) {
            return Ok(());
        }
        let pause_now = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(TimedOut);
                }
                pause.min(left)
            }
            None => pause,
        };
        sleep(pause_now)?;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

impl<T> Drop for GreenThread<T> {
    fn drop(&mut self) {
        let (report, unclaimed) = {
            let mut st = self.shared.join.lock();
            st.handle_alive = false;
            let report = match &st.result {
                Some(Err(e)) if st.finished && matches!(**e, JoinError::Panicked { .. }) => {
                    Some(JoinError::clone(e))
                }
                _ => None,
            };
            // Nobody can claim the value any more: dropped here, outside the lock (see
            // `finish`).
            (report, st.result.take())
        };
        drop(unclaimed);
        if let Some(err) = report {
            report_unobserved(&self.shared.record, &err);
        }
    }
}

impl<T> std::fmt::Debug for GreenThread<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreenThread")
            .field("id", &self.shared.record.id)
            .field("name", &self.shared.record.name)
            .field("done", &self.shared.done.load(Ordering::Relaxed))
            .finish()
    }
}

/// The calling green thread, as [`current`] returns it.
#[derive(Clone)]
pub struct Current {
    record: RecordRef,
}

impl Current {
    /// The thread's id.
    pub fn id(&self) -> u64 {
        self.record.id
    }

    /// The thread's name, if any.
    pub fn name(&self) -> Option<&str> {
        self.record.name.as_deref()
    }

    /// The id of the green thread that spawned it (`None` if an OS thread did).
    pub fn parent(&self) -> Option<u64> {
        self.record.parent()
    }

    /// Where it was spawned.
    pub fn spawn_site(&self) -> &'static Location<'static> {
        self.record.site
    }
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current")
            .field("id", &self.id())
            .field("name", &self.name())
            .field("parent", &self.parent())
            .finish()
    }
}

/// The green thread that calls it, or `None` on an OS thread (or a raw `may` coroutine).
///
/// ```
/// assert!(greenhub::current().is_none()); // the main thread is an OS thread
/// let t = greenhub::spawn(|| greenhub::current().map(|c| c.id()));
/// let id = t.id();
/// assert_eq!(t.wait().unwrap(), Some(id));
/// ```
pub fn current() -> Option<Current> {
    context::current_record().map(|record| Current { record })
}
