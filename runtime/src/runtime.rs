//! Starting the runtime: configure `may`, install the panic hook,
//! measure the stack budget and start the monitor. Happens once, on the first spawn or on
//! [`crate::Config::init`].

use std::sync::OnceLock;

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
    panic::install_hook();
    let budget = StackBudget::measure(config.get_stack_size(), config.get_max_green_threads());
    if let Some(warning) = budget.startup_warning() {
        panic::warn(&warning);
    }
    monitor::start(config.get_max_blocking_time(), config::BLOCKED_HISTORY);
    let attach = config.get_attach();
    let stats = config.get_stats_addr();
    let rt = RUNTIME.get_or_init(|| Runtime { config, budget });
    if attach {
        crate::attach::start();
    }
    if let Some(addr) = stats {
        crate::stats::start(addr);
    }
    Ok(rt)
}
