//! Inspection work off the workers: reading stacks, symbolizing and profiling take CPU time
//! (the first symbolization loads the binary's debug information), which a green thread must
//! not take from its worker.

use std::sync::{Arc, OnceLock};

use parking_lot::Mutex;

use greenhub_snapshot::{ObjectKind, WaitOn};

use crate::core::context::without_deadline;
use crate::core::wait::Waiter;

/// Runs `f` on the calling thread when it is not a green thread; from a green thread, on a new
/// OS thread (`greenhub-inspect`) while the green thread waits for it like for any object
/// (killable; a killed caller leaves the work to finish unseen). Inline when no thread can be
/// started.
pub(crate) fn off_workers<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    // A green thread that is unwinding (killed) cannot wait: it does the work itself.
    if !may::coroutine::is_coroutine() || std::thread::panicking() {
        return f();
    }
    static KIND: OnceLock<ObjectKind> = OnceLock::new();
    let kind = *KIND.get_or_init(|| ObjectKind::named("inspection"));
    // No deadline: an enclosing deadline scope cannot take back work that has begun; a kill
    // still ends the wait.
    let waiter = without_deadline(|| {
        Waiter::new(
            WaitOn::Object {
                object: kind,
                id: 0,
            },
            None,
        )
    });
    let token = waiter.token().clone();
    let result: Arc<Mutex<Option<T>>> = Arc::new(Mutex::new(None));
    let f = Arc::new(Mutex::new(Some(f)));
    let spawned = {
        let (result, f) = (result.clone(), f.clone());
        std::thread::Builder::new()
            .name("greenhub-inspect".into())
            .spawn(move || {
                if let Some(f) = f.lock().take() {
                    *result.lock() = Some(f());
                }
                token.wake();
            })
    };
    if spawned.is_err() {
        drop(waiter);
        let f = f
            .lock()
            .take()
            .expect("the work was not handed to a thread");
        return f();
    }
    // Without a deadline, only the wake ends the wait (or a kill, which unwinds from it).
    let _ = waiter.wait();
    result
        .lock()
        .take()
        .expect("the thread finished the work before waking")
}
