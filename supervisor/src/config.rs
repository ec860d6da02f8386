//! What the master is told: a TOML file and the command line (which wins), checked whole
//! before anything starts. `greenhub-serve --check` stops after the check.
//!
//! It uses nothing else of the crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// What is wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or holds an unknown or mistyped setting.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML reader says, with the line.
        message: String,
    },
    /// A setting has a value that cannot work.
    #[error("{setting}: {why}")]
    Invalid {
        /// The setting, as named in the file.
        setting: &'static str,
        /// What is wrong and what would do.
        why: String,
    },
}

/// The whole configuration, with every default applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The worker program and its arguments.
    pub command: Vec<String>,
    /// Environment variables added to the workers'.
    pub env: BTreeMap<String, String>,
    /// How many workers serve at once.
    pub workers: usize,
    /// The listening sockets, handed to every worker in this order (empty when systemd
    /// handed the master its sockets and the configuration lists none: those are served).
    pub listen: Vec<ListenSpec>,
    /// The listen backlog of each socket the master binds.
    pub backlog: u32,
    /// How long a new worker has to say it is ready.
    pub ready_timeout: Duration,
    /// How long a draining worker has to finish; it is killed after.
    pub stop_timeout: Duration,
    /// The heartbeat period a worker is asked for (`WATCHDOG_USEC`); `None`: no heartbeat.
    pub heartbeat: Option<Duration>,
    /// A worker whose heartbeat is silent this long is stuck.
    pub heartbeat_timeout: Duration,
    /// A worker that reports a green thread holding one of its workers this long is stuck.
    pub blocked_limit: Option<Duration>,
    /// Recycle a worker whose resident memory stays over this many bytes...
    pub max_memory: Option<u64>,
    /// ...for this long (a short peak is not a leak).
    pub memory_grace: Duration,
    /// Recycle a worker after this many requests...
    pub max_requests: Option<u64>,
    /// ...plus a random share of up to this many, so workers do not recycle together.
    pub max_requests_jitter: u64,
    /// Recycle a worker after this age...
    pub max_age: Option<Duration>,
    /// ...plus a random share of up to this long.
    pub max_age_jitter: Duration,
    /// The longest pause before restarting a crashed worker (pauses double from 100 ms).
    pub restart_backoff: Duration,
    /// This many crashes within [`Config::crash_window`] is reported as a crash loop.
    pub crash_loop: u32,
    /// See [`Config::crash_loop`].
    pub crash_window: Duration,
    /// Where the master writes its pid.
    pub pid_file: Option<PathBuf>,
    /// Where the master serves Prometheus `/metrics` (its own and its workers').
    pub stats: Option<std::net::SocketAddr>,
}

/// One listening socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    /// Its name for the workers (`LISTEN_FDNAMES`).
    pub name: String,
    /// What to bind.
    pub addr: ListenAddr,
}

/// What a listening socket binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address (`127.0.0.1:8080`, `[::1]:8080`).
    Tcp(std::net::SocketAddr),
    /// A Unix socket path (`unix:/run/app.sock`).
    Unix(PathBuf),
}

/// The file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// See [`Config::command`].
    pub command: Option<Vec<String>>,
    /// See [`Config::env`].
    pub env: Option<BTreeMap<String, String>>,
    /// See [`Config::workers`].
    pub workers: Option<usize>,
    /// `[name=]address` strings, see [`ListenSpec`].
    pub listen: Option<Vec<String>>,
    /// See [`Config::backlog`].
    pub backlog: Option<u32>,
    /// A duration such as `30s`, `500ms`, `2m`.
    pub ready_timeout: Option<String>,
    /// A duration.
    pub stop_timeout: Option<String>,
    /// A duration, or `off`.
    pub heartbeat: Option<String>,
    /// A duration.
    pub heartbeat_timeout: Option<String>,
    /// A duration, or `off`.
    pub blocked_limit: Option<String>,
    /// A size such as `512MiB`, `2GiB`, or `off`.
    pub max_memory: Option<String>,
    /// A duration.
    pub memory_grace: Option<String>,
    /// A count, 0 for off.
    pub max_requests: Option<u64>,
    /// A count.
    pub max_requests_jitter: Option<u64>,
    /// A duration, or `off`.
    pub max_age: Option<String>,
    /// A duration.
    pub max_age_jitter: Option<String>,
    /// A duration.
    pub restart_backoff: Option<String>,
    /// A count.
    pub crash_loop: Option<u32>,
    /// A duration.
    pub crash_window: Option<String>,
    /// A path.
    pub pid_file: Option<PathBuf>,
    /// `HOST:PORT` with a numeric host.
    pub stats: Option<String>,
}

impl FileConfig {
    /// Reads a file.
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Settings of `over` replace those of `self`.
    pub fn merge(self, over: FileConfig) -> FileConfig {
        macro_rules! pick {
            ($($f:ident),*) => { FileConfig { $($f: over.$f.or(self.$f)),* } };
        }
        pick!(
            command,
            env,
            workers,
            listen,
            backlog,
            ready_timeout,
            stop_timeout,
            heartbeat,
            heartbeat_timeout,
            blocked_limit,
            max_memory,
            memory_grace,
            max_requests,
            max_requests_jitter,
            max_age,
            max_age_jitter,
            restart_backoff,
            crash_loop,
            crash_window,
            pid_file,
            stats
        )
    }

    /// Checks every setting and applies the defaults.
    pub fn finish(self) -> Result<Config, ConfigError> {
        let invalid = |setting, why: String| ConfigError::Invalid { setting, why };
        let command = self.command.unwrap_or_default();
        if command.is_empty() || command[0].is_empty() {
            return Err(invalid(
                "command",
                "no worker program: give one after `--`, or `command = [...]` in the file".into(),
            ));
        }
        let workers = self
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        if !(1..=1024).contains(&workers) {
            return Err(invalid("workers", format!("{workers}: give 1 to 1024")));
        }
        let listen = self
            .listen
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, s)| parse_listen(i, s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|why| invalid("listen", why))?;
        if listen.is_empty() && !socket_activated() {
            return Err(invalid(
                "listen",
                "no socket to serve: give `--listen 127.0.0.1:8080` or `listen = [...]`".into(),
            ));
        }
        if listen.len() > 64 {
            return Err(invalid(
                "listen",
                format!("{} sockets: at most 64", listen.len()),
            ));
        }
        let mut names: Vec<&str> = listen.iter().map(|l| l.name.as_str()).collect();
        names.sort_unstable();
        if names.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("listen", "two sockets have the same name".into()));
        }
        for key in self.env.iter().flatten().map(|(k, _)| k) {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(invalid("env", format!("{key:?} is not a variable name")));
            }
        }
        let d = |setting, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            v.map_or(Ok(default), |s| {
                parse_duration(&s).map_err(|why| invalid(setting, why))
            })
        };
        let optional = |setting, v: Option<String>, default: Option<Duration>| match v.as_deref() {
            None => Ok(default),
            Some("off") => Ok(None),
            Some(s) => parse_duration(s)
                .map(Some)
                .map_err(|why| invalid(setting, why)),
        };
        let heartbeat = optional("heartbeat", self.heartbeat, Some(Duration::from_secs(1)))?;
        let heartbeat_timeout = d(
            "heartbeat_timeout",
            self.heartbeat_timeout,
            heartbeat.map_or(Duration::from_secs(10), |h| {
                (h * 10).max(Duration::from_secs(5))
            }),
        )?;
        if let Some(h) = heartbeat
            && heartbeat_timeout < h * 2
        {
            return Err(invalid(
                "heartbeat_timeout",
                "must be at least two heartbeat periods".into(),
            ));
        }
        let max_memory = match self.max_memory.as_deref() {
            None | Some("off") => None,
            Some(s) => Some(parse_size(s).map_err(|why| invalid("max_memory", why))?),
        };
        let crash_loop = self.crash_loop.unwrap_or(5);
        if crash_loop == 0 {
            return Err(invalid("crash_loop", "give at least 1".into()));
        }
        // Bounds that keep the arithmetic on them exact.
        const MAX_COUNT: u64 = 1_000_000_000_000;
        for (setting, v) in [
            ("max_requests", self.max_requests),
            ("max_requests_jitter", self.max_requests_jitter),
        ] {
            if v.is_some_and(|n| n > MAX_COUNT) {
                return Err(invalid(setting, format!("at most {MAX_COUNT}")));
            }
        }
        let backlog = self.backlog.unwrap_or(1024);
        if backlog == 0 {
            return Err(invalid("backlog", "give at least 1".into()));
        }
        Ok(Config {
            command,
            env: self.env.unwrap_or_default(),
            workers,
            listen,
            backlog,
            ready_timeout: d("ready_timeout", self.ready_timeout, Duration::from_secs(30))?,
            stop_timeout: d("stop_timeout", self.stop_timeout, Duration::from_secs(30))?,
            heartbeat,
            heartbeat_timeout,
            blocked_limit: optional(
                "blocked_limit",
                self.blocked_limit,
                Some(Duration::from_secs(10)),
            )?,
            max_memory,
            memory_grace: d("memory_grace", self.memory_grace, Duration::from_secs(10))?,
            max_requests: self.max_requests.filter(|n| *n > 0),
            max_requests_jitter: self.max_requests_jitter.unwrap_or(0),
            max_age: optional("max_age", self.max_age, None)?,
            max_age_jitter: d("max_age_jitter", self.max_age_jitter, Duration::ZERO)?,
            restart_backoff: d(
                "restart_backoff",
                self.restart_backoff,
                Duration::from_secs(30),
            )?,
            crash_loop,
            crash_window: d("crash_window", self.crash_window, Duration::from_secs(60))?,
            pid_file: self.pid_file,
            stats: self
                .stats
                .map(|s| {
                    s.parse().map_err(|_| {
                        invalid(
                            "stats",
                            format!("{s:?} is not HOST:PORT with a numeric host"),
                        )
                    })
                })
                .transpose()?,
        })
    }
}

/// Whether systemd handed this process its sockets (`LISTEN_PID` is ours and `LISTEN_FDS`
/// set): then `listen` may stay empty, and the handed sockets are served.
pub fn socket_activated() -> bool {
    std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.trim().parse::<u32>().ok())
        == Some(std::process::id())
        && std::env::var_os("LISTEN_FDS").is_some()
}

/// `[name=]address`: a TCP address or `unix:PATH`.
fn parse_listen(index: usize, spec: &str) -> Result<ListenSpec, String> {
    let (name, addr) = match spec.split_once('=') {
        Some((n, a)) => (n.to_string(), a),
        None => (format!("listen{index}"), spec),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !name_ok {
        return Err(format!(
            "{name:?}: a socket name is 1 to 255 of A-Z, a-z, 0-9, _, - and ."
        ));
    }
    let addr = if let Some(path) = addr.strip_prefix("unix:") {
        if path.is_empty() || path.len() >= 108 {
            return Err(format!("{addr:?}: a Unix socket path is 1 to 107 bytes"));
        }
        ListenAddr::Unix(PathBuf::from(path))
    } else {
        ListenAddr::Tcp(addr.parse().map_err(|_| {
            format!("{addr:?} is neither HOST:PORT with a numeric host nor unix:PATH")
        })?)
    };
    Ok(ListenSpec { name, addr })
}

/// `250ms`, `30s`, `5m`, `2h`, or a plain number of seconds; fractions allowed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 500ms, 30s, 5m or 2h"))?;
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: the unit is one of ms, s, m, h")),
    };
    let secs = n * scale;
    if !secs.is_finite() || secs > 365.0 * 24.0 * 3600.0 {
        return Err(format!("{s:?} is longer than a year"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `512MiB`, `2GiB`, `100MB`, `4096` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as 512MiB or 2GiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{s:?}: the unit is one of B, KiB, MiB, GiB, kB, MB, GB"
            ));
        }
    };
    n.checked_mul(scale)
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{s:?} is not a usable size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FileConfig {
        FileConfig {
            command: Some(vec!["app".into()]),
            listen: Some(vec!["127.0.0.1:0".into()]),
            ..FileConfig::default()
        }
    }

    #[test]
    fn defaults_apply_and_bad_values_say_what_would_do() {
        let c = base().finish().unwrap();
        assert_eq!(c.listen[0].name, "listen0");
        assert_eq!(c.heartbeat, Some(Duration::from_secs(1)));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(10));
        for (f, want) in [
            (
                FileConfig {
                    command: None,
                    ..base()
                },
                "command",
            ),
            (
                FileConfig {
                    listen: Some(vec![]),
                    ..base()
                },
                "listen",
            ),
            (
                FileConfig {
                    listen: Some(vec!["localhost:80".into()]),
                    ..base()
                },
                "numeric host",
            ),
            (
                FileConfig {
                    listen: Some(vec!["a b=127.0.0.1:1".into()]),
                    ..base()
                },
                "socket name",
            ),
            (
                FileConfig {
                    listen: Some(vec!["x=127.0.0.1:1".into(), "x=127.0.0.1:2".into()]),
                    ..base()
                },
                "same name",
            ),
            (
                FileConfig {
                    workers: Some(0),
                    ..base()
                },
                "1 to 1024",
            ),
            (
                FileConfig {
                    ready_timeout: Some("soon".into()),
                    ..base()
                },
                "not a duration",
            ),
            (
                FileConfig {
                    ready_timeout: Some("5 weeks".into()),
                    ..base()
                },
                "unit",
            ),
            (
                FileConfig {
                    max_memory: Some("lots".into()),
                    ..base()
                },
                "not a size",
            ),
            (
                FileConfig {
                    max_memory: Some("99999999999GiB".into()),
                    ..base()
                },
                "usable",
            ),
            (
                FileConfig {
                    heartbeat: Some("1s".into()),
                    heartbeat_timeout: Some("1s".into()),
                    ..base()
                },
                "two heartbeat",
            ),
        ] {
            let e = f.finish().unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should say {want:?}");
        }
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    }

    #[test]
    fn a_file_with_an_unknown_key_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(&path, "command = [\"app\"]\nworkerz = 4\n").unwrap();
        let e = FileConfig::read(&path).unwrap_err().to_string();
        assert!(e.contains("workerz") && e.contains("line 2"), "{e}");
        std::fs::write(&path, "command = [\"app\"]\nworkers = \"four\"\n").unwrap();
        let e = FileConfig::read(&path).unwrap_err().to_string();
        assert!(e.contains("workers"), "{e}");
    }
}
