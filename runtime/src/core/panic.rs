//! How greenhub reports panics: its panic hook and [`catch_panic`].
//!
//! A panic inside a green thread is part of that thread's outcome: `GreenThread::wait`
//! returns it. So greenhub's panic hook does not print panics raised in green threads; it keeps
//! the message, location and (when `RUST_BACKTRACE` asks for one) backtrace for the outcome.
//! If nobody ever waits for the thread, the panic is reported exactly once through `log`
//! when the last handle is gone. Panics elsewhere go to the hook that was installed before.

use std::sync::Arc;

use crate::core::context::{self, PanicReport};
use crate::core::report::payload_message;

/// Installs greenhub's hook in front of the current one, once per process: at the runtime's
/// start, or at the first [`catch_panic`].
pub(crate) fn install_hook() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(install);
}

fn install() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // A kill unwinds with may's Cancel payload: an expected ending, not an error.
        if matches!(
            info.payload().downcast_ref::<generator::Error>(),
            Some(generator::Error::Cancel | generator::Error::Done)
        ) {
            return;
        }
        let captured = context::with(|ctx| {
            if !ctx.captures_panics() {
                return false;
            }
            let Ok(mut slot) = ctx.panic.try_borrow_mut() else {
                return false;
            };
            let backtrace = std::backtrace::Backtrace::capture();
            let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
                .then(|| Arc::new(backtrace));
            *slot = Some(Box::new(PanicReport {
                message: payload_message(info.payload()),
                location: info
                    .location()
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "<unknown>".into()),
                backtrace,
            }));
            true
        });
        if !captured {
            previous(info);
        }
    }));
}

/// A panic caught by [`catch_panic`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaughtPanic {
    /// The panic's message.
    pub message: String,
    /// Where it was raised (`file:line:column`), when known.
    pub location: Option<String>,
}

impl std::fmt::Display for CaughtPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(at) => write!(f, "{} (at {at})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Runs `f` and returns its panic as a value instead of printing it: for code that reports
/// the panic itself, such as a thread pool handing it back to its caller.
///
/// ```
/// let caught = greenhub::catch_panic(|| -> u32 { panic!("no such row") }).unwrap_err();
/// assert_eq!(caught.message, "no such row");
/// assert_eq!(greenhub::catch_panic(|| 7), Ok(7));
/// ```
pub fn catch_panic<T>(f: impl FnOnce() -> T) -> Result<T, CaughtPanic> {
    install_hook();
    let outcome =
        context::capturing_panics(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    outcome.map_err(|payload| {
        // A kill is not a panic to report: let it go on unwinding the green thread.
        if payload.downcast_ref::<generator::Error>().is_some() {
            std::panic::resume_unwind(payload);
        }
        caught(payload)
    })
}

fn caught(payload: Box<dyn std::any::Any + Send>) -> CaughtPanic {
    match context::take_panic() {
        Some(report) => CaughtPanic {
            message: report.message,
            location: Some(report.location),
        },
        None => CaughtPanic {
            message: payload_message(&*payload),
            location: None,
        },
    }
}
