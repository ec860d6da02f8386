//! Per-green-thread context: which registry record the running code belongs to, the deadline
//! scopes it runs in, and the last panic it raised.
//!
//! A green thread's context lives in its handle's state (`green/thread.rs`), allocated with
//! it, and `may`'s coroutine-local storage points to it (`may::runtime_local`), never a
//! `thread_local!`: green threads migrate between OS threads at every wait, so a thread-local
//! read before a wait and after it can belong to two different OS threads. A coroutine that
//! greenhub did not spawn gets a context of its own on first use. A plain OS thread's context
//! is a thread-local, which is sound there because an OS thread does not migrate.
//!
//! Rules of a green thread's context:
//! - Only its own thread reaches it (through `may`'s pointer), so its cells need no lock.
//! - The pointer owns one reference to the state, given back when `may` drops the coroutine's
//!   local storage; the context's `record` is that same reference seen as a record, and owns
//!   nothing itself.
//! - What it holds that refers to the state (the token kept for the next wait), or that the
//!   thread's code put there (its local values), is let go of when the body ends: the state
//!   outlives the thread for as long as its handle or a snapshot holds it.

use std::any::Any;
use std::cell::{Cell, OnceCell, RefCell};
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use crate::core::registry::{RecordRef, ThreadRecord};
use crate::core::token::Token;

/// A panic caught by greenhub's hook, kept until the thread's outcome is built.
#[derive(Clone, Debug)]
pub(crate) struct PanicReport {
    pub message: String,
    pub location: String,
    pub backtrace: Option<Arc<std::backtrace::Backtrace>>,
}

/// Laid out in declaration order (`repr(C)`): what every wait reads or writes comes first,
/// right after the hot tail of the thread's record (see `ThreadRecord`).
#[derive(Default)]
#[repr(C)]
pub(crate) struct Context {
    /// Set once as a green thread starts (see [`adopt`]); empty on OS threads and raw `may`
    /// coroutines. Owns no reference: the context lives in the record's own state.
    record: OnceCell<ManuallyDrop<RecordRef>>,
    /// The effective (earliest) deadline of the scopes the code runs in.
    pub deadline: Cell<Option<Instant>>,
    /// The token of this thread's last wait, back from its waiter and reused while nobody
    /// else holds it (empty while a wait holds it).
    pub token: Cell<Option<Arc<Token>>>,
    /// Set by the spawn wrapper when the body has returned (or unwound) and its outcome is
    /// published.
    pub ended: Cell<bool>,
    /// Non-zero while greenhub captures the panics of code it runs for a caller that
    /// reports them itself (`catch_panic`, a stack that cannot be mapped).
    pub capture: Cell<u32>,
    /// The panic hook stores here instead of printing, for code greenhub reports itself
    /// (boxed: rare, and the context is part of every thread's state).
    pub panic: RefCell<Option<Box<PanicReport>>>,
    /// The thread's local values (`green/local.rs`), few enough to search in order.
    pub locals: RefCell<Locals>,
    /// The thread's span, entered while it runs and left while it waits.
    #[cfg(feature = "tracing")]
    pub span: RefCell<ThreadSpan>,
}

/// A green thread's `tracing` span: entered on the worker that runs the thread, left before
/// every wait, since a subscriber's current span is per OS thread and the thread may resume
/// on another worker (or another thread may run on this one meanwhile).
#[cfg(feature = "tracing")]
#[derive(Default)]
pub(crate) enum ThreadSpan {
    #[default]
    None,
    Entered(tracing::span::EnteredSpan),
    Left(tracing::Span),
}

/// What a spawned thread takes from its spawner: inherited locals, and the span its own
/// span descends from.
pub(crate) struct Inheritance {
    pub locals: Vec<LocalEntry>,
    #[cfg(feature = "tracing")]
    pub span: tracing::Span,
}

impl Inheritance {
    /// What the thread whose context is `c` hands a thread it spawns now.
    pub(crate) fn capture_in(c: &Context) -> Inheritance {
        Inheritance {
            locals: inherited_locals_in(c),
            #[cfg(feature = "tracing")]
            span: tracing::Span::current(),
        }
    }

    /// Installs it in the new thread's context, in the new thread.
    pub(crate) fn install(self, c: &Context, record: &ThreadRecord) {
        if !self.locals.is_empty() {
            *c.locals.borrow_mut() = Locals::from(self.locals);
        }
        #[cfg(feature = "tracing")]
        {
            let span = tracing::info_span!(
                target: "greenhub",
                parent: &self.span,
                "green_thread",
                id = record.id,
                name = record.name.as_deref(),
                site = %record.site,
            );
            *c.span.borrow_mut() = ThreadSpan::Entered(span.entered());
        }
        #[cfg(not(feature = "tracing"))]
        let _ = record;
    }
}

/// Leaves the current green thread's span before it waits.
#[inline]
pub(crate) fn leave_span(_c: &Context) {
    #[cfg(feature = "tracing")]
    {
        let mut span = _c.span.borrow_mut();
        if let ThreadSpan::Entered(_) = &*span
            && let ThreadSpan::Entered(entered) = std::mem::take(&mut *span)
        {
            *span = ThreadSpan::Left(entered.exit());
        }
    }
}

/// Enters the current green thread's span again after a wait.
#[inline]
pub(crate) fn return_to_span(_c: &Context) {
    #[cfg(feature = "tracing")]
    {
        let mut span = _c.span.borrow_mut();
        if let ThreadSpan::Left(_) = &*span
            && let ThreadSpan::Left(left) = std::mem::take(&mut *span)
        {
            *span = ThreadSpan::Entered(left.entered());
        }
    }
}

/// Leaves the span for good: the thread's body has ended.
pub(crate) fn end_span(_c: &Context) {
    #[cfg(feature = "tracing")]
    drop(std::mem::take(&mut *_c.span.borrow_mut()));
}

/// Makes a child's copy of an inherited local value.
pub(crate) type Inherit = fn(&(dyn Any + Send)) -> Box<dyn Any + Send>;

/// One local value of a thread: its key (the address of its `Local`), the value, and how a
/// child inherits it (`None`: not inherited).
pub(crate) struct LocalEntry {
    pub key: usize,
    pub value: Box<dyn Any + Send>,
    pub inherit: Option<Inherit>,
}

/// A thread's local values. Most threads have none, so they are kept out of line: a pointer
/// in every thread's context rather than a vector.
#[derive(Default)]
#[expect(
    clippy::box_collection,
    reason = "one word in every thread's state where a vector takes three"
)]
pub(crate) struct Locals(Option<Box<Vec<LocalEntry>>>);

impl Locals {
    pub(crate) fn push(&mut self, entry: LocalEntry) {
        self.0.get_or_insert_default().push(entry);
    }

    /// Removes the `i`th value, the last one taking its place.
    pub(crate) fn swap_remove(&mut self, i: usize) -> Option<LocalEntry> {
        let list = self.0.as_mut()?;
        (i < list.len()).then(|| list.swap_remove(i))
    }
}

impl From<Vec<LocalEntry>> for Locals {
    fn from(list: Vec<LocalEntry>) -> Locals {
        Locals((!list.is_empty()).then(|| Box::new(list)))
    }
}

impl std::ops::Deref for Locals {
    type Target = [LocalEntry];
    fn deref(&self) -> &[LocalEntry] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl std::ops::DerefMut for Locals {
    fn deref_mut(&mut self) -> &mut [LocalEntry] {
        self.0.as_deref_mut().map_or(&mut [], Vec::as_mut_slice)
    }
}

/// The inherited local values of the context `c`, copied for a child its thread spawns
/// (nothing allocated when there are none).
fn inherited_locals_in(c: &Context) -> Vec<LocalEntry> {
    c.locals
        .borrow()
        .iter()
        .filter_map(|e| {
            e.inherit.map(|copy| LocalEntry {
                key: e.key,
                value: copy(&*e.value),
                inherit: e.inherit,
            })
        })
        .collect()
}

impl Context {
    pub(crate) fn record(&self) -> Option<&RecordRef> {
        self.record.get().map(|r| &**r)
    }

    /// What the thread lets go of as its body ends: the token kept for its next wait (it
    /// refers to the thread's state, which holds this context) and its local values (the
    /// thread's code put them there; they may hold its own handle).
    pub(crate) fn end(&self) {
        self.ended.set(true);
        drop(self.token.take());
        let locals = std::mem::take(&mut *self.locals.borrow_mut());
        drop(locals);
        drop(self.panic.borrow_mut().take());
    }

    /// Keeps `token` for the next wait unless a token is kept already or the thread has
    /// ended (see [`Context::end`]).
    pub(crate) fn keep(&self, token: &mut Option<Arc<Token>>) {
        if self.ended.get() {
            return;
        }
        let held = self.token.take();
        self.token.set(held.or_else(|| token.take()));
    }

    /// Whether the panic hook should hand panics to greenhub instead of printing them.
    pub(crate) fn captures_panics(&self) -> bool {
        self.record.get().is_some() || self.capture.get() > 0
    }
}

thread_local! {
    /// The context of code that runs on an OS thread, outside any coroutine.
    static OS_CONTEXT: Context = Context::default();
}

/// A green thread's context, kept in its handle's state: only the thread itself reaches it,
/// through `may`'s pointer, so its cells are never used from two threads at once.
#[derive(Default)]
#[repr(transparent)]
pub(crate) struct Owned(Context);

// SAFETY: the context is reached only by its own green thread (see `Owned`), which runs on
// one worker at a time; what it holds is `Send` but for the `tracing` feature's entered span,
// which the thread leaves before each wait and yield (`Resume::new` in core/wait.rs,
// `yield_now`) and enters again after it, on the worker it resumes on.
unsafe impl Send for Owned {}
// SAFETY: as above: the state that holds it is shared, the context is not.
unsafe impl Sync for Owned {}

/// Makes `context` the current green thread's, and `record` its record: one reference to the
/// state that holds both, handed over to `may`, which gives the context's pointer to `release`
/// when it drops the coroutine's local storage; `release` lets go of that reference. Called
/// once, in the thread, as it starts.
///
/// # Safety
///
/// `context` points into the state that `record` keeps alive, with a provenance that covers
/// that whole state (so that `release` may step back from it to the state), and
/// `release(context)` drops `record`'s reference exactly once.
pub(crate) unsafe fn adopt(
    context: NonNull<Owned>,
    record: RecordRef,
    release: unsafe fn(NonNull<()>),
) {
    // SAFETY: alive as long as `record`'s reference, which `may` holds from here on.
    let c = unsafe { &context.as_ref().0 };
    let _ = c.record.set(ManuallyDrop::new(record));
    // SAFETY: the caller keeps the context alive until `release`.
    let set = unsafe { may::set_runtime_local(context.cast(), release) };
    debug_assert!(
        set,
        "a green thread adopts its context once, in its coroutine"
    );
}

/// Checks the context of a green thread whose coroutine's local storage `may` drops, from
/// the pointer [`adopt`] gave it: aborts if the thread's body never ended: its stack overflowed
/// into the guard page and it was torn down without unwinding. Whatever it held (a lock, a
/// pool connection, a stack permit) is lost with its frames and every joiner would wait
/// forever, so the process stops here, as Rust's own threads do on overflow, saying which
/// thread and how to give it more stack.
///
/// # Safety
///
/// `pointer` is the one `adopt` gave `may`, and the context is still alive.
pub(crate) unsafe fn check_released(pointer: NonNull<()>) {
    // SAFETY: as the caller says.
    let c = unsafe { pointer.cast::<Context>().as_ref() };
    if !c.ended.get()
        && let Some(record) = c.record()
    {
        let name = record
            .name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        // Straight to stderr: a logger may not flush before the abort.
        eprintln!(
            "greenhub: green thread #{}{name}, spawned at {}, has overflowed its stack of {} \
             bytes; aborting. Give it more with Builder::stack_size, or all threads more with \
             GREENHUB_STACK_SIZE (debug builds need several times the stack of release builds).",
            record.id,
            record.site,
            record.stack_size()
        );
        std::process::abort();
    }
}

/// Runs `f` with the current green thread's (or OS thread's) context.
///
/// A coroutine's context is the one `may`'s local storage points to (no map lookup); an OS
/// thread's is a thread-local.
#[inline]
pub(crate) fn with<R>(f: impl FnOnce(&Context) -> R) -> R {
    if let Some(c) = may::runtime_local() {
        // SAFETY: greenhub sets every coroutine's pointer to a context that lives until `may`
        // drops the coroutine's local storage (`adopt`, `with_other`), and only the coroutine
        // itself reaches it.
        return f(unsafe { c.cast::<Context>().as_ref() });
    }
    with_other(f)
}

/// [`with`] on an OS thread, or in a coroutine greenhub did not spawn (a raw `may` one), which
/// gets a context of its own on first use. Not inlined, as `with_os`.
#[inline(never)]
fn with_other<R>(f: impl FnOnce(&Context) -> R) -> R {
    if !may::coroutine::is_coroutine() {
        return with_os(f);
    }
    /// Frees a raw coroutine's context.
    unsafe fn release(c: NonNull<()>) {
        // SAFETY: made by `Box::leak` below, handed to `may` once.
        drop(unsafe { Box::from_raw(c.cast::<Context>().as_ptr()) });
    }
    let c = NonNull::from(Box::leak(Box::<Context>::default()));
    // SAFETY: the box lives until `release`, which frees it once.
    let set = unsafe { may::set_runtime_local(c.cast(), release) };
    debug_assert!(set, "a raw coroutine's context is made once");
    // SAFETY: just made, alive until `may` releases it.
    f(unsafe { c.as_ref() })
}

/// The OS thread's context. Not inlined, as every thread-local access of greenhub (see
/// ARCHITECTURE.md): a caller that waits must not keep the address from before its park.
#[inline(never)]
fn with_os<R>(f: impl FnOnce(&Context) -> R) -> R {
    OS_CONTEXT.with(f)
}

/// Gives a waiter's token back to the current thread's context, for its next wait; dropped
/// if the context already holds one, or is gone (an OS thread's, while the thread exits).
pub(crate) fn keep_token(token: Arc<Token>) {
    let mut token = Some(token);
    match may::runtime_local() {
        // SAFETY: as in `with`.
        Some(c) => unsafe { c.cast::<Context>().as_ref() }.keep(&mut token),
        None if may::coroutine::is_coroutine() => with_other(|c| c.keep(&mut token)),
        None => keep_os_token(&mut token),
    }
}

/// [`keep_token`] on an OS thread. Not inlined, as `with_os`.
#[inline(never)]
fn keep_os_token(token: &mut Option<Arc<Token>>) {
    let _ = OS_CONTEXT.try_with(|c| c.keep(token));
}

/// The current green thread's record, if the code runs in a greenhub green thread.
pub(crate) fn current_record() -> Option<RecordRef> {
    // An OS thread has no record: skip the lookup in its thread-local map.
    if !may::coroutine::is_coroutine() {
        return None;
    }
    with(|c| c.record().cloned())
}

/// The id and the name of the current green thread, if any, without taking a reference to
/// its state.
pub(crate) fn current_identity() -> Option<(u64, Option<Arc<str>>)> {
    if !may::coroutine::is_coroutine() {
        return None;
    }
    with(|c| c.record().map(|r| (r.id, r.name.clone())))
}

/// The id of the current green thread, if any.
pub(crate) fn current_id() -> Option<u64> {
    if !may::coroutine::is_coroutine() {
        return None;
    }
    with(|c| c.record().map(|r| r.id))
}

/// Runs `f` with panics captured into the context instead of printed. `f` may wait: the
/// count lives in the context, which moves with a green thread to whichever worker resumes
/// it.
pub(crate) fn capturing_panics<R>(f: impl FnOnce() -> R) -> R {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            with(|c| c.capture.set(c.capture.get().saturating_sub(1)));
        }
    }
    with(|c| c.capture.set(c.capture.get() + 1));
    let _depth = Depth;
    f()
}

/// Takes the panic the hook stored, if any.
pub(crate) fn take_panic() -> Option<PanicReport> {
    with(|c| {
        c.panic
            .try_borrow_mut()
            .ok()
            .and_then(|mut p| p.take())
            .map(|p| *p)
    })
}

/// Runs `f` outside every deadline scope (they apply again once it returns), for a crate that
/// must wait out work it can no longer take back: a database commit already sent, whose
/// outcome the caller must learn even past its deadline rather than report a failure that did
/// not happen. A kill still ends the waits inside; keep what `f` waits for short and bounded.
///
/// ```
/// use std::time::Duration;
/// use greenhub::{ext::without_deadline, sleep, with_timeout};
///
/// let r = with_timeout(Duration::from_millis(1), || {
///     sleep(Duration::from_millis(5)).unwrap_err(); // the scope has passed...
///     without_deadline(|| sleep(Duration::from_millis(5))) // ...but this waits its 5 ms
/// });
/// assert_eq!(r, Ok(()));
/// ```
pub fn without_deadline<T>(f: impl FnOnce() -> T) -> T {
    let previous = with(|c| c.deadline.replace(None));
    let _restore = RestoreDeadline(previous);
    f()
}

/// Restores the enclosing scope's deadline however the code it guards ends, unwinding
/// included.
pub(crate) struct RestoreDeadline(pub(crate) Option<Instant>);

impl Drop for RestoreDeadline {
    fn drop(&mut self) {
        let previous = self.0;
        with(|c| c.deadline.set(previous));
    }
}
