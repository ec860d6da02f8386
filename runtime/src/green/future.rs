//! Async Rust from green threads: [`block_on`] runs a future to its end, parking the green
//! thread (not its worker) while the future is pending.
//!
//! How: the future is polled on the calling green thread with a waker that is the wait's
//! [`Token`](crate::core::token::Token); when the future is pending, the thread waits like any
//! greenhub wait, and the future's wake-up (from any thread) wakes it to poll again. Every
//! poll runs inside greenhub's tokio runtime (cargo feature `tokio`, on by default): a small
//! multi-threaded runtime on threads of its own (`greenhub-tokio`), started on first use, so
//! futures that need tokio's reactor or timers (most async clients) find one, and
//! `tokio::spawn` inside them puts tasks on it.
//!
//! Rules:
//! - The wait shows in the snapshot as a wait on an object of kind `future`, named after the
//!   call's site ("block_on at src/main.rs:10:5").
//! - A deadline scope that passes, or a kill, drops the future (inside the runtime, so that
//!   what it holds can deregister) and `block_on` returns [`TimedOut`] (a kill unwinds).
//! - A future that is ready at its first poll costs one poll and no registration.
//! - A future's `poll` must not make greenhub waits itself (a green `sleep`, a green socket
//!   read): the thread could resume on another worker inside tokio's context. Await tokio's
//!   own timers and sockets inside it; make greenhub calls around `block_on`.
//!
//! It uses `core` (the waiter, the registry) only.

use std::future::Future;
use std::panic::Location;
use std::pin::pin;
use std::sync::{Arc, LazyLock, Weak};
use std::task::{Context, Poll, Waker};

use greenhub_snapshot::{ObjectInfo, ObjectKind, WaitOn};

use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::timeout::TimedOut;
use crate::core::wait::Waiter;

/// The kind of a pending future in the snapshot.
static KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("future"));

/// Runs `future` to its end from a green thread (or a plain OS thread) and returns its
/// output. The green thread waits cooperatively while the future is pending; its worker runs
/// other green threads. Futures that need a tokio runtime get greenhub's (feature `tokio`).
///
/// Returns `Err(TimedOut)` when the enclosing deadline scope passes first; the future is then
/// dropped. A kill drops it too.
///
/// ```
/// let t = greenhub::spawn(|| greenhub::block_on(async { 6 * 7 }));
/// assert_eq!(t.wait().unwrap(), Ok(42));
/// ```
#[track_caller]
pub fn block_on<F: Future>(future: F) -> Result<F::Output, TimedOut> {
    let site = Location::caller();
    let mut future = pin!(InRuntime(Some(future)));
    let mut shown: Option<Arc<Shown>> = None;
    loop {
        let on = shown.as_ref().map_or(WaitOn::Sleep, |s| WaitOn::Object {
            object: *KIND,
            id: s.reg.id(),
        });
        let waiter = Waiter::until(on, None);
        let waker = Waker::from(waiter.token().clone());
        if let Poll::Ready(out) = future
            .as_mut()
            .poll_in_runtime(&mut Context::from_waker(&waker))
        {
            return Ok(out);
        }
        if shown.is_none() {
            // Pending: from now on the wait is named after the call. This first wait is taken
            // again with the name (the wake-up, if it came meanwhile, is not lost: the future
            // is polled again first).
            shown = Some(Arc::new_cyclic(|weak: &Weak<Shown>| Shown {
                reg: Registration::new(weak.clone()),
                name: format!("block_on at {site}"),
            }));
            continue;
        }
        waiter.wait()?;
    }
}

/// What the snapshot shows of a pending future.
struct Shown {
    reg: Registration,
    name: String,
}

impl Inspect for Shown {
    fn inspect(&self) -> ObjectInfo {
        ObjectInfo::new(*KIND, self.reg.id(), Some(&self.name), 1)
    }
}

/// A future polled, and dropped, inside greenhub's tokio runtime.
struct InRuntime<F>(Option<F>);

impl<F: Future> InRuntime<F> {
    fn poll_in_runtime(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _inside = runtime::enter();
        // SAFETY: the future is never moved out of its pinned place: it is only polled in
        // place and dropped in place (`Drop` below drops it where it is).
        let slot = unsafe { &mut self.get_unchecked_mut().0 };
        match slot.as_mut() {
            // SAFETY: `slot` lives inside the pinned `InRuntime`, so the future is pinned too.
            Some(f) => unsafe { std::pin::Pin::new_unchecked(f) }.poll(cx),
            None => Poll::Pending,
        }
    }
}

impl<F> Drop for InRuntime<F> {
    fn drop(&mut self) {
        let _inside = runtime::enter();
        // Dropped in place, inside the runtime: what it holds may deregister from the reactor.
        self.0 = None;
    }
}

#[cfg(feature = "tokio")]
mod runtime {
    //! greenhub's tokio runtime: two worker threads of its own, its reactor and timers,
    //! started on first use.

    use std::sync::LazyLock;

    static RUNTIME: LazyLock<Option<tokio::runtime::Runtime>> = LazyLock::new(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("greenhub-tokio")
            .enable_all()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                crate::core::report::warn(&format!(
                    "greenhub: cannot start the tokio runtime for block_on ({e}); futures that \
                     need tokio will fail"
                ));
                None
            }
        }
    });

    /// Enters the runtime's context for as long as the guard lives (nothing without one).
    pub(super) fn enter() -> Option<tokio::runtime::EnterGuard<'static>> {
        RUNTIME.as_ref().map(|rt| rt.enter())
    }
}

#[cfg(not(feature = "tokio"))]
mod runtime {
    /// What entering gives without the `tokio` feature: nothing to leave.
    pub(super) struct Outside;

    /// Without the `tokio` feature there is no runtime to enter.
    pub(super) fn enter() -> Outside {
        Outside
    }
}
