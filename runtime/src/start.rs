//! Starting greenhub: the core services first, then observability (the attach channel and the
//! stats endpoint). It happens once, on the first spawn (or anything else that needs the
//! workers) or on [`Config::init`]. This file is the only one that knows both layers.
//!
//! Started implicitly, the runtime reads the `GREENHUB_*` environment; a variable it cannot
//! use is reported in one line (the variable, its value, what is allowed) and its default
//! is used, so that a typo in the environment never makes `spawn` panic. [`Config::from_env`]
//! and [`Config::init`] give the same errors as values.

use crate::core::config::{Config, ConfigError};
use crate::core::report;
use crate::core::runtime::{self, Runtime};
use crate::observe;

/// The running runtime, started from the environment if nothing started it yet.
#[inline]
pub(crate) fn runtime() -> &'static Runtime {
    match runtime::get_if_started() {
        Some(rt) => rt,
        None => start_from_env(),
    }
}

#[cold]
fn start_from_env() -> &'static Runtime {
    let _guard = runtime::start_lock();
    if let Some(rt) = runtime::get_if_started() {
        return rt;
    }
    let (config, problems) = Config::from_env_lenient();
    for problem in &problems {
        report::error(&format!("greenhub: {problem}; using the default"));
    }
    match launch(config) {
        Ok(rt) => rt,
        // No descriptor for the event loop: nothing can run, and `spawn` has no error to
        // return it in. `Config::init` returns this as a value.
        Err(e @ ConfigError::Start(_)) => panic!("{e}"),
        // `from_env_lenient` keeps only values that validate; the defaults always do.
        Err(e) => {
            report::error(&format!("greenhub: {e}; starting with the defaults"));
            launch(Config::new())
                .unwrap_or_else(|e| unreachable!("the default configuration is valid, but: {e}"))
        }
    }
}

fn launch(config: Config) -> Result<&'static Runtime, ConfigError> {
    let settings = config.settings();
    let (attach, stats) = (settings.attach, settings.stats_addr);
    let rt = runtime::start_core(config)?;
    if attach {
        observe::attach::start();
    }
    if let Some(addr) = stats {
        start_stats(addr);
    }
    Ok(rt)
}

#[cfg(feature = "stats")]
fn start_stats(addr: std::net::SocketAddr) {
    observe::stats::start(addr);
}

#[cfg(not(feature = "stats"))]
fn start_stats(addr: std::net::SocketAddr) {
    report::warn(&format!(
        "greenhub: no stats endpoint on {addr}: this program was built without greenhub's \
         `stats` feature (the attach channel still works: `inspector attach {}`)",
        std::process::id()
    ));
}

impl Config {
    /// Starts the runtime with this configuration.
    ///
    /// Fails with [`ConfigError::AlreadyStarted`] if it is running already, and with the
    /// matching error if a setting is out of range.
    pub fn init(self) -> Result<(), ConfigError> {
        let _guard = runtime::start_lock();
        launch(self).map(|_| ())
    }
}
