//! The runtime's state once it has started (its configuration and stack budget), and the start
//! of the core services: `may`'s workers, the clock, the registry, the panic hook, the stack
//! budget and the monitor. Observability is started above this layer, by `start.rs`, which is
//! the only caller of [`start_core`].

use std::sync::OnceLock;

use parking_lot::{Mutex, MutexGuard};

use crate::core::config::{self, Config, ConfigError};
use crate::core::limits::StackBudget;
use crate::core::{alarm, clock, monitor, panic, registry, report, trace};

pub(crate) struct Runtime {
    pub config: Config,
    pub budget: StackBudget,
}

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static START: Mutex<()> = Mutex::new(());

/// The runtime if it has started.
#[inline]
pub(crate) fn get_if_started() -> Option<&'static Runtime> {
    RUNTIME.get()
}

/// Serializes starts: whoever holds it and finds no runtime starts one.
pub(crate) fn start_lock() -> MutexGuard<'static, ()> {
    START.lock()
}

/// Starts the core services with `config`. Call with [`start_lock`] held and no runtime yet.
pub(crate) fn start_core(config: Config) -> Result<&'static Runtime, ConfigError> {
    if RUNTIME.get().is_some() {
        return Err(ConfigError::AlreadyStarted);
    }
    config.validate()?;
    clock::init();
    let settings = config.settings();
    registry::init(settings.finished_history);
    may::config()
        .set_workers(settings.workers)
        .set_stack_size(settings.stack_size / std::mem::size_of::<usize>());
    // Pinning workers to cores measured slower on every benchmark here (and hurts on shared
    // machines), so greenhub leaves placement to the OS.
    may::config().set_worker_pin(false);
    panic::install_hook();
    let budget = StackBudget::measure(settings.stack_size, settings.max_green_threads);
    if let Some(warning) = budget.startup_warning() {
        report::warn(&warning);
    }
    // Before the scheduler: the monitor sets the workers' poll timeout, which they read once.
    monitor::start(settings.max_blocking_time, config::BLOCKED_HISTORY);
    // Started here rather than on the first spawn, so that a lack of descriptors is an error
    // of `init` and the descriptors are taken before the program uses them up.
    may::coroutine::start_scheduler().map_err(|e| ConfigError::Start(e.to_string()))?;
    // The workers' poll serves the deadlines from now on (unless something used them
    // before: then the alarm thread keeps serving them).
    alarm::start_on_poll();
    trace::set(settings.flight_recorder);
    Ok(RUNTIME.get_or_init(|| Runtime { config, budget }))
}
