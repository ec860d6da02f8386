//! Telling a supervisor how the process is doing, in systemd's `sd_notify` protocol, which
//! `greenhub-serve` speaks too: a datagram of `KEY=VALUE` lines to the Unix socket named by
//! `NOTIFY_SOCKET` (a path, or `@name` for an abstract one).
//!
//! [`ready`] says the process has warmed up and serves; a supervisor that gates a reload on
//! readiness starts draining an old process only then. When the supervisor asks for a
//! heartbeat (`WATCHDOG_USEC`), `ready` also starts one: a green thread that sends
//! `WATCHDOG=1` every half period. It runs on the workers like any green thread, so a
//! process whose workers are all stuck stops beating and its supervisor sees it; with each
//! beat go `X_GREENHUB_BLOCKED_MS` (how long the longest ongoing blocked-worker report has
//! lasted, 0 without one), `X_GREENHUB_STATS` (the stats endpoint's address, when it runs)
//! and the fields registered with [`heartbeat_field`] (greenhub-http adds
//! `X_GREENHUB_REQUESTS`).
//!
//! Without `NOTIFY_SOCKET` every call does nothing and returns `Ok(false)`: a program that
//! notifies also runs alone. A send never blocks: a supervisor whose queue is full misses
//! that message (the call says so) and the next beat goes again.
//!
//! It uses `core` (the monitor's reports, warnings), `observe` (the stats endpoint's address)
//! and `green` (the heartbeat's thread).

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use thiserror::Error;

use crate::core::{monitor, report};
use crate::green::thread::Builder;
use crate::green::time::sleep;

/// The shortest heartbeat period accepted; a smaller `WATCHDOG_USEC` is raised to it.
const MIN_PERIOD: Duration = Duration::from_millis(20);

/// What went wrong telling the supervisor.
#[derive(Debug, Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` names no usable socket address; the supervisor set it wrong.
    #[error("NOTIFY_SOCKET={value:?} is not a socket address: {why}")]
    Address {
        /// What it holds (cut short).
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The datagram did not go: the supervisor is gone, or its queue is full (`WouldBlock`).
    #[error("cannot notify the supervisor: {0}")]
    Send(#[source] io::Error),
    /// A message holds a line that is not `KEY=VALUE`, or a field name is not made of
    /// capital letters, digits and `_`.
    #[error("{0:?} is not a notification: lines of KEY=VALUE, keys of A-Z, 0-9 and _")]
    Malformed(String),
}

struct Channel {
    socket: UnixDatagram,
    to: SocketAddr,
}

/// The channel, made on first use: `None` when the process is not supervised.
static CHANNEL: OnceLock<Result<Option<Channel>, String>> = OnceLock::new();

/// A field of the heartbeat: its name and what reads its value.
type Field = (&'static str, fn() -> u64);

/// Fields sent with each heartbeat.
static FIELDS: Mutex<Vec<Field>> = Mutex::new(Vec::new());

/// Whether [`ready`] has been called.
static READY: AtomicBool = AtomicBool::new(false);

/// Whether the heartbeat has been started.
static HEARTBEAT: OnceLock<()> = OnceLock::new();

fn channel() -> Result<Option<&'static Channel>, NotifyError> {
    let made = CHANNEL.get_or_init(|| {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let value = value.to_string_lossy().into_owned();
        let to = address(&value)?;
        let socket = UnixDatagram::unbound().map_err(|e| e.to_string())?;
        socket.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Some(Channel { socket, to }))
    });
    match made {
        Ok(c) => Ok(c.as_ref()),
        Err(why) => Err(NotifyError::Address {
            value: std::env::var("NOTIFY_SOCKET")
                .unwrap_or_default()
                .chars()
                .take(108)
                .collect(),
            why: why.clone(),
        }),
    }
}

fn address(value: &str) -> Result<SocketAddr, String> {
    if let Some(name) = value.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string());
    }
    if !value.starts_with('/') {
        return Err("neither an absolute path nor @name".into());
    }
    SocketAddr::from_pathname(value).map_err(|e| e.to_string())
}

/// Whether a supervisor listens (`NOTIFY_SOCKET` is set).
pub fn is_supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty())
}

/// Sends `state` (lines of `KEY=VALUE`) to the supervisor. `Ok(false)` when there is none.
///
/// ```
/// // Run alone, nothing is sent and nothing fails.
/// assert!(!greenhub::notify::send("STATUS=warming up").unwrap());
/// ```
pub fn send(state: &str) -> Result<bool, NotifyError> {
    let well_formed = state
        .lines()
        .all(|line| line.split_once('=').is_some_and(|(key, _)| field_name(key)));
    if state.is_empty() || !well_formed {
        return Err(NotifyError::Malformed(state.chars().take(200).collect()));
    }
    let Some(c) = channel()? else {
        return Ok(false);
    };
    c.socket
        .send_to_addr(state.as_bytes(), &c.to)
        .map_err(NotifyError::Send)?;
    Ok(true)
}

fn field_name(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// Says the process is ready to serve (`READY=1`), and starts the heartbeat if the
/// supervisor asked for one (each beat repeats `READY=1`, so a supervisor whose queue was
/// full at this call still learns it). Call it once warm-up is done: listeners open, pools
/// filled.
///
/// ```
/// assert!(!greenhub::notify::ready().unwrap()); // not supervised here
/// ```
pub fn ready() -> Result<bool, NotifyError> {
    let Some(_) = channel()? else {
        return Ok(false);
    };
    READY.store(true, Ordering::SeqCst);
    let period = heartbeat_period();
    // With a heartbeat asked for, the first beat goes with READY=1: the supervisor watches the
    // heartbeat from the moment the process is ready, even if the workers are held before the
    // heartbeat's thread first runs.
    let sent = send(&format!(
        "READY=1\nMAINPID={}{}",
        std::process::id(),
        if period.is_some() { "\nWATCHDOG=1" } else { "" }
    ));
    // Each beat says READY=1 again: a supervisor whose queue was full when this one went
    // learns it from the next beat.
    if let Some(period) = period {
        start_heartbeat(period);
    }
    sent
}

/// Says the process has begun a graceful stop (`STOPPING=1`).
pub fn stopping() -> Result<bool, NotifyError> {
    send("STOPPING=1")
}

/// A one-line status for the supervisor to show (`STATUS=`); line breaks become spaces.
pub fn status(text: &str) -> Result<bool, NotifyError> {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    send(&format!("STATUS={line}"))
}

/// Adds a field to every heartbeat: `X_GREENHUB_<name>=<value()>`. `name` is made of capital
/// letters, digits and `_`. A name registered twice keeps its first function.
///
/// ```
/// fn jobs_done() -> u64 { 42 }
/// greenhub::notify::heartbeat_field("JOBS", jobs_done).unwrap();
/// assert!(greenhub::notify::heartbeat_field("not a name", jobs_done).is_err());
/// ```
pub fn heartbeat_field(name: &'static str, value: fn() -> u64) -> Result<(), NotifyError> {
    if !field_name(name) {
        return Err(NotifyError::Malformed(name.to_string()));
    }
    let mut fields = FIELDS.lock();
    if !fields.iter().any(|(n, _)| *n == name) {
        fields.push((name, value));
    }
    Ok(())
}

/// Half of `WATCHDOG_USEC`, when it is set for this process (`WATCHDOG_PID` absent or ours).
fn heartbeat_period() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| (Duration::from_micros(usec) / 2).max(MIN_PERIOD))
}

/// One heartbeat's message.
fn beat() -> String {
    let blocked = monitor::reports()
        .iter()
        .filter(|r| r.ongoing)
        .map(|r| r.duration.as_millis() as u64)
        .max()
        .unwrap_or(0);
    let mut msg = format!("WATCHDOG=1\nX_GREENHUB_BLOCKED_MS={blocked}");
    if READY.load(Ordering::SeqCst) {
        msg.push_str("\nREADY=1");
    }
    #[cfg(feature = "stats")]
    if let Some(addr) = crate::observe::stats::local_addr() {
        msg.push_str(&format!("\nX_GREENHUB_STATS={addr}"));
    }
    for (name, value) in FIELDS.lock().iter() {
        msg.push_str(&format!("\nX_GREENHUB_{name}={}", value()));
    }
    msg
}

fn start_heartbeat(period: Duration) {
    HEARTBEAT.get_or_init(|| {
        let spawned = Builder::new().name("greenhub heartbeat").spawn(move || {
            let mut said = false;
            loop {
                if let Err(e) = send(&beat())
                    && !said
                {
                    report::warn(&format!("greenhub: heartbeat: {e} (said once)"));
                    said = true;
                }
                if sleep(period).is_err() {
                    return;
                }
            }
        });
        if let Err(e) = spawned {
            report::warn(&format!("greenhub: cannot start the heartbeat: {e}"));
        }
    });
}
