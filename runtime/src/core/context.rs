//! Per-green-thread context: which registry record the running code belongs to, the deadline
//! scopes it runs in, and the last panic it raised.
//!
//! A green thread's lives in `may`'s coroutine-local storage, never in a `thread_local!`: green
//! threads migrate between OS threads at every wait, so a thread-local read before a wait and
//! after it can belong to two different OS threads. A plain OS thread's context is a
//! thread-local, which is sound there because an OS thread does not migrate.

use std::any::Any;
use std::cell::{Cell, OnceCell, RefCell};
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

#[derive(Default)]
pub(crate) struct Context {
    /// Set once by the spawn wrapper; empty on OS threads and raw `may` coroutines.
    pub record: OnceCell<RecordRef>,
    /// The effective (earliest) deadline of the scopes the code runs in.
    pub deadline: Cell<Option<Instant>>,
    /// The panic hook stores here instead of printing, for code greenhub reports itself.
    pub panic: RefCell<Option<PanicReport>>,
    /// The token of this thread's last wait, back from its waiter and reused while nobody
    /// else holds it (empty while a wait holds it).
    pub token: Cell<Option<Arc<Token>>>,
    /// Set by the spawn wrapper when the body has returned (or unwound) and its outcome is
    /// published.
    pub ended: Cell<bool>,
    /// The thread's local values (`green/local.rs`), few enough to search in order.
    pub locals: RefCell<Vec<LocalEntry>>,
    /// Non-zero while greenhub captures the panics of code it runs for a caller that
    /// reports them itself (`catch_panic`, a stack that cannot be mapped).
    pub capture: Cell<u32>,
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
            *c.locals.borrow_mut() = self.locals;
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

impl Drop for Context {
    /// `may` drops a coroutine's local storage when it destroys the coroutine. A green thread
    /// whose storage goes while its body has not ended was torn down without unwinding: its
    /// stack overflowed into the guard page. Whatever it held (a lock, a pool connection, a
    /// stack permit) is lost with its frames and every joiner would wait forever, so the
    /// process stops here, as Rust's own threads do on overflow, saying which thread and how
    /// to give it more stack.
    fn drop(&mut self) {
        let Some(record) = self.record.get() else {
            return;
        };
        if self.ended.get() {
            return;
        }
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
            record.id, record.site, record.stack_size
        );
        std::process::abort();
    }
}

impl Context {
    pub(crate) fn record(&self) -> Option<&RecordRef> {
        self.record.get()
    }

    /// Keeps `token` for the next wait unless a token is kept already.
    pub(crate) fn keep(&self, token: &mut Option<Arc<Token>>) {
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

/// Runs `f` with the current green thread's (or OS thread's) context.
///
/// A coroutine's context is `may`'s runtime slot of its local storage (no map lookup); an
/// OS thread's is a thread-local.
#[inline]
pub(crate) fn with<R>(f: impl FnOnce(&Context) -> R) -> R {
    let mut f = Some(f);
    // SAFETY: a context moves with its green thread from worker to worker. What it holds is
    // `Send` but for the `tracing` feature's entered span, which the thread leaves before each
    // wait and yield (`Resume::new` in core/wait.rs, `yield_now`) and enters again after it,
    // on the worker it resumes on.
    let in_coroutine =
        unsafe { may::with_runtime_local(|c: &Context| (f.take().expect("runs once"))(c)) };
    if let Some(r) = in_coroutine {
        return r;
    }
    with_os(|c| (f.take().expect("runs once"))(c))
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
    // SAFETY: as in `with`: the token is `Send`.
    let kept = unsafe { may::with_runtime_local(|c: &Context| c.keep(&mut token)) };
    if kept.is_none() {
        keep_os_token(&mut token);
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
    with(|c| c.panic.try_borrow_mut().ok().and_then(|mut p| p.take()))
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
