//! Runtime configuration: from code, from `GREENHUB_*` environment variables, or both.
//!
//! Precedence: a value set on [`Config`] in code wins over the environment, which wins over
//! the default. Configure before the first spawn: the runtime starts on the first spawn (or
//! [`Config::init`]) and its settings are fixed from then on. Started by a spawn, the runtime
//! reports each variable it cannot use in one line and keeps that setting's default.
//!
//! | setting | environment variable | default |
//! |---|---|---|
//! | [`workers`](Config::workers) | `GREENHUB_WORKERS` | one per core |
//! | [`stack_size`](Config::stack_size) | `GREENHUB_STACK_SIZE` (bytes; `k`/`m` suffixes) | 64 KiB |
//! | [`max_blocking_time`](Config::max_blocking_time) | `GREENHUB_MAX_BLOCKING_MS` (`0` or `off` disables) | 100 ms |
//! | [`max_green_threads`](Config::max_green_threads) | `GREENHUB_MAX_THREADS` | what `vm.max_map_count` allows |
//! | [`finished_history`](Config::finished_history) | `GREENHUB_FINISHED_HISTORY` | 1024 |
//! | [`attach`](Config::attach) | `GREENHUB_ATTACH` (`on` or `off`) | on |
//! | [`flight_recorder`](Config::flight_recorder) | `GREENHUB_FLIGHT_RECORDER` (`on` or `off`) | off |
//! | [`stats_addr`](Config::stats_addr) | `GREENHUB_STATS_ADDR` (`host:port`, or a port on loopback) | off |

use std::time::Duration;

use thiserror::Error;

/// Default stack of a green thread, in bytes.
pub const DEFAULT_STACK_SIZE: usize = 64 * 1024;
/// Smallest stack greenhub accepts, in bytes (see the crate docs on stack sizes).
pub const MIN_STACK_SIZE: usize = 16 * 1024;
/// Largest stack greenhub accepts, in bytes.
pub const MAX_STACK_SIZE: usize = 64 * 1024 * 1024;
/// Most worker threads greenhub accepts.
pub const MAX_WORKERS: usize = 1024;
pub(crate) const DEFAULT_FINISHED_HISTORY: usize = 1024;
pub(crate) const DEFAULT_MAX_BLOCKING: Duration = Duration::from_millis(100);
pub(crate) const BLOCKED_HISTORY: usize = 64;

/// A configuration problem, found when the runtime starts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// An environment variable could not be parsed.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Env {
        /// The variable's name.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is expected instead.
        reason: String,
    },
    /// The worker count is out of range.
    #[error("workers must be between 1 and {MAX_WORKERS}, got {0}")]
    Workers(usize),
    /// The stack size is out of range.
    #[error("stack size must be between {MIN_STACK_SIZE} and {MAX_STACK_SIZE} bytes, got {0}")]
    StackSize(usize),
    /// The finished-thread history must keep at least one entry.
    #[error("finished_history must be at least 1")]
    FinishedHistory,
    /// The thread limit must allow at least one thread.
    #[error("max_green_threads must be at least 1")]
    MaxGreenThreads,
    /// The runtime has already started with another configuration.
    #[error(
        "the greenhub runtime has already started (a green thread was spawned or init was \
         called); configure it before the first spawn"
    )]
    AlreadyStarted,
    /// The workers could not start: the event loop's descriptors could not be created (the
    /// process has none free). Nothing started; `init` may be called again once descriptors
    /// are free.
    #[error(
        "the greenhub workers could not start: {0} (the event loop needs a few descriptors: \
         close some or raise the open-file limit, then start again)"
    )]
    Start(String),
}

/// The settings of a [`Config`], as [`Config::settings`] reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// Worker OS threads.
    pub workers: usize,
    /// The default stack size in bytes, as it will be used (rounded up to whole pages).
    pub stack_size: usize,
    /// The blocked-worker report threshold (`None`: no reports).
    pub max_blocking_time: Option<Duration>,
    /// The limit on live green threads, if any.
    pub max_green_threads: Option<usize>,
    /// How many finished threads the registry remembers.
    pub finished_history: usize,
    /// Whether the attach channel is on.
    pub attach: bool,
    /// Whether the flight recorder records from the start.
    pub flight_recorder: bool,
    /// Where the stats endpoint is served, if anywhere.
    pub stats_addr: Option<std::net::SocketAddr>,
}

/// Settings of the greenhub runtime.
///
/// ```
/// use std::time::Duration;
///
/// // Environment first, then what the code insists on.
/// let config = greenhub::Config::from_env()
///     .unwrap()
///     .max_blocking_time(Some(Duration::from_millis(50)));
/// assert_eq!(config.settings().max_blocking_time, Some(Duration::from_millis(50)));
/// // `config.init()` would start the runtime with it.
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    workers: usize,
    stack_size: usize,
    max_blocking_time: Option<Duration>,
    max_green_threads: Option<usize>,
    finished_history: usize,
    attach: bool,
    flight_recorder: bool,
    stats_addr: Option<std::net::SocketAddr>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)),
            stack_size: DEFAULT_STACK_SIZE,
            max_blocking_time: Some(DEFAULT_MAX_BLOCKING),
            max_green_threads: None,
            finished_history: DEFAULT_FINISHED_HISTORY,
            attach: true,
            flight_recorder: false,
            stats_addr: None,
        }
    }
}

impl Config {
    /// The defaults, ignoring the environment.
    pub fn new() -> Config {
        Config::default()
    }

    /// The defaults overridden by the `GREENHUB_*` environment variables. The first variable
    /// that cannot be used is the error.
    pub fn from_env() -> Result<Config, ConfigError> {
        let (config, mut problems) = Config::from_env_lenient();
        match problems.is_empty() {
            true => Ok(config),
            false => Err(problems.swap_remove(0)),
        }
    }

    /// The defaults overridden by every `GREENHUB_*` variable that can be used, and an error
    /// for each one that cannot (which keeps its default). The result always validates.
    pub(crate) fn from_env_lenient() -> (Config, Vec<ConfigError>) {
        let mut c = Config::default();
        let mut problems = Vec::new();
        let mut read =
            |var: &'static str, apply: &mut dyn FnMut(&str) -> Result<(), ConfigError>| {
                if let Some(v) = env(var)
                    && let Err(e) = apply(&v)
                {
                    problems.push(e);
                }
            };
        read("GREENHUB_WORKERS", &mut |v| {
            c.workers = parse_in("GREENHUB_WORKERS", v, 1, MAX_WORKERS)?;
            Ok(())
        });
        read("GREENHUB_STACK_SIZE", &mut |v| {
            let bytes = parse_size("GREENHUB_STACK_SIZE", v)?;
            validate_stack_size(bytes)
                .map_err(|e| invalid("GREENHUB_STACK_SIZE", v, &e.to_string()))?;
            c.stack_size = bytes;
            Ok(())
        });
        read("GREENHUB_MAX_BLOCKING_MS", &mut |v| {
            c.max_blocking_time = parse_blocking("GREENHUB_MAX_BLOCKING_MS", v)?;
            Ok(())
        });
        read("GREENHUB_MAX_THREADS", &mut |v| {
            c.max_green_threads = Some(parse_in("GREENHUB_MAX_THREADS", v, 1, usize::MAX)?);
            Ok(())
        });
        read("GREENHUB_FINISHED_HISTORY", &mut |v| {
            c.finished_history = parse_in("GREENHUB_FINISHED_HISTORY", v, 1, usize::MAX)?;
            Ok(())
        });
        read("GREENHUB_ATTACH", &mut |v| {
            c.attach = parse_switch("GREENHUB_ATTACH", v)?;
            Ok(())
        });
        read("GREENHUB_FLIGHT_RECORDER", &mut |v| {
            c.flight_recorder = parse_switch("GREENHUB_FLIGHT_RECORDER", v)?;
            Ok(())
        });
        read("GREENHUB_STATS_ADDR", &mut |v| {
            c.stats_addr = Some(parse_addr("GREENHUB_STATS_ADDR", v)?);
            Ok(())
        });
        (c, problems)
    }

    /// Number of worker OS threads that run green threads. `1` gives eventlet's single hub:
    /// green threads never run in parallel and run in a deterministic order.
    pub fn workers(mut self, n: usize) -> Config {
        self.workers = n;
        self
    }

    /// Default stack size of a green thread in bytes, rounded up to whole pages.
    pub fn stack_size(mut self, bytes: usize) -> Config {
        self.stack_size = bytes;
        self
    }

    /// How long a green thread may keep its worker without switching before the monitor
    /// reports it; `None` turns the reports off.
    pub fn max_blocking_time(mut self, limit: Option<Duration>) -> Config {
        self.max_blocking_time = limit;
        self
    }

    /// The most green threads alive at once. Spawns beyond it fail with
    /// [`crate::thread::SpawnError::ThreadLimit`]. When the operating system cannot fit this many
    /// stacks, the runtime warns at start-up and says how to raise the limit.
    pub fn max_green_threads(mut self, n: Option<usize>) -> Config {
        self.max_green_threads = n;
        self
    }

    /// How many finished green threads the registry remembers (with their outcome).
    pub fn finished_history(mut self, n: usize) -> Config {
        self.finished_history = n;
        self
    }

    /// Whether `inspector attach <pid>` can read this process (the attach channel
    /// channel: a private Unix socket served by one sleeping OS thread).
    pub fn attach(mut self, on: bool) -> Config {
        self.attach = on;
        self
    }

    /// Whether the flight recorder keeps the last events of every green thread from the start
    /// (runs, waits, wakes, spawns, ends: `inspector trace`, and a file written when a worker
    /// is blocked or a deadlock is found). Off by default: recording costs each switch a read
    /// of the time-stamp counter and an entry (the harness measures it). An inspector can turn
    /// it on or off later.
    pub fn flight_recorder(mut self, on: bool) -> Config {
        self.flight_recorder = on;
        self
    }

    /// Where to serve the HTTP stats endpoint (`/stats`, `/snapshot`,
    /// `/metrics`); `None` (the default) serves nothing. Port 0 picks a free port:
    /// [`crate::inspect::stats_addr`] tells which.
    pub fn stats_addr(mut self, addr: Option<std::net::SocketAddr>) -> Config {
        self.stats_addr = addr;
        self
    }

    /// What this configuration starts the runtime with, to read (the setters above are the
    /// builder). A running runtime's settings are in the snapshot's `runtime` section.
    pub fn settings(&self) -> Settings {
        Settings {
            workers: self.workers,
            stack_size: round_to_pages(self.stack_size),
            max_blocking_time: self.max_blocking_time,
            max_green_threads: self.max_green_threads,
            finished_history: self.finished_history,
            attach: self.attach,
            flight_recorder: self.flight_recorder,
            stats_addr: self.stats_addr,
        }
    }

    /// Checks the settings without starting anything.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(ConfigError::Workers(self.workers));
        }
        validate_stack_size(self.stack_size)?;
        if self.finished_history == 0 {
            return Err(ConfigError::FinishedHistory);
        }
        if self.max_green_threads == Some(0) {
            return Err(ConfigError::MaxGreenThreads);
        }
        Ok(())
    }
}

pub(crate) fn validate_stack_size(bytes: usize) -> Result<(), ConfigError> {
    if !(MIN_STACK_SIZE..=MAX_STACK_SIZE).contains(&bytes) {
        return Err(ConfigError::StackSize(bytes));
    }
    Ok(())
}

pub(crate) fn round_to_pages(bytes: usize) -> usize {
    bytes.div_ceil(4096) * 4096
}

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn invalid(var: &'static str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Env {
        var,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A whole number from `min` to `max`.
fn parse_in(var: &'static str, value: &str, min: usize, max: usize) -> Result<usize, ConfigError> {
    let expected = if max == usize::MAX {
        format!("expected a whole number of at least {min}")
    } else {
        format!("expected a whole number from {min} to {max}")
    };
    match value.trim().parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(var, value, &expected)),
    }
}

fn parse_size(var: &'static str, value: &str) -> Result<usize, ConfigError> {
    let v = value.trim().to_ascii_lowercase();
    let (digits, unit) = match v.strip_suffix(['k', 'm']) {
        Some(d) if v.ends_with('k') => (d, 1024),
        Some(d) => (d, 1024 * 1024),
        None => (v.as_str(), 1),
    };
    digits
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| {
            invalid(
                var,
                value,
                "expected a size in bytes, like 65536, 64k or 1m",
            )
        })
}

fn parse_blocking(var: &'static str, value: &str) -> Result<Option<Duration>, ConfigError> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let ms = v
        .parse::<u64>()
        .map_err(|_| invalid(var, value, "expected milliseconds, or 0 / off to disable"))?;
    Ok((ms > 0).then(|| Duration::from_millis(ms)))
}

/// `host:port` with a literal address (`localhost` meaning 127.0.0.1), or a bare port on
/// loopback.
fn parse_addr(var: &'static str, value: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let v = value.trim();
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    if let Ok(port) = v.parse::<u16>() {
        return Ok((loopback, port).into());
    }
    if let Some(port) = v.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok((loopback, port).into());
    }
    v.parse().map_err(|_| {
        invalid(
            var,
            value,
            "expected a port (served on 127.0.0.1) or an address like 127.0.0.1:9100",
        )
    })
}

fn parse_switch(var: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "1" | "true" | "yes" => Ok(true),
        "off" | "0" | "false" | "no" => Ok(false),
        _ => Err(invalid(var, value, "expected on or off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_addresses_default_to_loopback() {
        assert_eq!(
            parse_addr("X", "9100"),
            Ok("127.0.0.1:9100".parse().unwrap())
        );
        assert_eq!(
            parse_addr("X", "localhost:80"),
            Ok("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(parse_addr("X", "[::1]:9"), Ok("[::1]:9".parse().unwrap()));
        assert!(parse_addr("X", "example.com:80").is_err());
        assert!(parse_addr("X", "70000").is_err());
    }

    #[test]
    fn switches_parse_on_and_off() {
        assert_eq!(parse_switch("X", "off"), Ok(false));
        assert_eq!(parse_switch("X", " ON "), Ok(true));
        assert!(parse_switch("X", "maybe").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("X", "65536"), Ok(65536));
        assert_eq!(parse_size("X", "64k"), Ok(65536));
        assert_eq!(parse_size("X", " 1M "), Ok(1 << 20));
        assert!(parse_size("X", "lots").is_err());
        assert!(parse_size("X", "k").is_err());
    }

    #[test]
    fn blocking_parses_off() {
        assert_eq!(parse_blocking("X", "off"), Ok(None));
        assert_eq!(parse_blocking("X", "0"), Ok(None));
        assert_eq!(
            parse_blocking("X", "250"),
            Ok(Some(Duration::from_millis(250)))
        );
        let err = parse_blocking("X", "-3").unwrap_err();
        assert!(err.to_string().contains("expected milliseconds"), "{err}");
    }

    #[test]
    fn validation_names_the_range() {
        let err = Config::new().workers(0).validate().unwrap_err();
        assert_eq!(err, ConfigError::Workers(0));
        let err = Config::new().stack_size(1000).validate().unwrap_err();
        assert!(err.to_string().contains("16384"), "{err}");
        assert!(Config::new().validate().is_ok());
    }
}
