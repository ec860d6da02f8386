//! Starting the runtime: configure `may`, learn its timer thread, install the panic hook,
//! measure the stack budget and start the monitor. Happens once, on the first spawn or on
//! [`crate::Config::init`].

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::{self, Config, ConfigError};
use crate::limits::StackBudget;
use crate::{clock, monitor, panic, registry};

pub(crate) struct Runtime {
    pub config: Config,
    pub budget: StackBudget,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static START: Mutex<()> = Mutex::new(());

thread_local! {
    /// True on `may`'s timer thread. It resumes a coroutine whose timed park expired by running
    /// it right there, so every other timer waits behind whatever that coroutine does next.
    static ON_MAY_TIMER: Cell<bool> = const { Cell::new(false) };
}

/// The running runtime, started from the environment if nothing started it yet.
#[inline]
pub(crate) fn get() -> Result<&'static Runtime, ConfigError> {
    match RUNTIME.get() {
        Some(rt) => Ok(rt),
        None => start_if_needed(),
    }
}

/// The runtime if it has started.
pub(crate) fn get_if_started() -> Option<&'static Runtime> {
    RUNTIME.get()
}

#[cold]
fn start_if_needed() -> Result<&'static Runtime, ConfigError> {
    let _guard = START.lock();
    if let Some(rt) = RUNTIME.get() {
        return Ok(rt);
    }
    start_locked(Config::from_env()?)
}

pub(crate) fn start(config: Config) -> Result<&'static Runtime, ConfigError> {
    let _guard = START.lock();
    if RUNTIME.get().is_some() {
        return Err(ConfigError::AlreadyStarted);
    }
    start_locked(config)
}

fn start_locked(config: Config) -> Result<&'static Runtime, ConfigError> {
    config.validate()?;
    clock::init();
    registry::init(config.get_finished_history());
    may::config()
        .set_workers(config.get_workers())
        .set_stack_size(config.get_stack_size() / std::mem::size_of::<usize>());
    // Pinning workers to cores measured slower on every benchmark here (and hurts on shared
    // machines), so greenhub leaves placement to the OS.
    may::config().set_worker_pin(false);
    learn_timer_thread();
    panic::install_hook();
    let budget = StackBudget::measure(config.get_stack_size(), config.get_max_green_threads());
    if let Some(warning) = budget.startup_warning() {
        panic::warn(&warning);
    }
    monitor::start(config.get_max_blocking_time(), config::BLOCKED_HISTORY);
    Ok(RUNTIME.get_or_init(|| Runtime { config, budget }))
}

/// Starts `may`'s scheduler and marks its timer thread: a coroutine whose timed park expires
/// is resumed on that thread, so it records where it wakes up.
fn learn_timer_thread() {
    let probe = || {
        let before = std::thread::current().id();
        may::coroutine::park_timeout(Duration::from_millis(1));
        if std::thread::current().id() != before {
            ON_MAY_TIMER.with(|t| t.set(true));
        }
    };
    // SAFETY: the probe touches only its own thread-local flag, after its single wait.
    let handle = unsafe { may::coroutine::spawn(probe) };
    let _ = handle.join();
}

/// Moves the current green thread off `may`'s timer thread if a timed park left it there.
#[inline]
pub(crate) fn leave_timer_thread() {
    if ON_MAY_TIMER.with(|t| t.get()) {
        may::coroutine::yield_now();
    }
}
