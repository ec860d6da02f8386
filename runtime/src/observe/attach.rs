//! The local attach channel: how `inspector attach <pid>` reads a live process with no code
//! change and no port to choose.
//!
//! When the runtime starts, an OS thread (`greenhub-attach`) listens on a Unix socket at
//! `socket_path(pid)`, in a directory only this user can enter. It is an OS thread so that
//! it answers even when every worker is blocked; until an inspector connects it sleeps in
//! `accept` and costs nothing. Only a peer of the same user (or root) is served: the directory
//! is private (mode 0700, owned by the user, refused otherwise), the socket is mode 0600, and
//! the peer's credentials are checked on every connection.
//!
//! The protocol is lines: the client sends a request per line, the process answers each with
//! one line of JSON.
//!
//! | request | answer |
//! |---|---|
//! | `snapshot` | the `Snapshot` |
//! | `snapshot stacks` | the `Snapshot` with the stack of every parked thread |
//! | `stack <id>` | the `ThreadStack` of one parked thread |
//! | `profile <seconds> [<hz>]` | a `Profile` taken over that many seconds (the connection waits) |
//! | `timing on`, `timing off` | `{"timing": true}` or `false`: timing is on while any connection (or the program) asks for it |
//! | `summary` | `Summary`: pid, process name, live green threads, uptime |
//! | `kill <id>`, `kill tree <id>` | `Acted`: the green thread (and its live descendants) killed |
//! | `set max_blocking_time <ms or off>`, `set log_level <level>` | `Acted`: the setting changed |
//! | `resize <object id> <size>` | `Acted`: the pool resized (`Inspect::resize`) |
//! | `set flight_recorder <on or off>` | `Acted`: the flight recorder started or stopped |
//! | `trace <seconds>` | the flight recorder's `Trace` of the last seconds |
//!
//! The requests that act are logged (`log`'s warn level, or standard error) with the
//! inspector's pid and uid before they are carried out: the process keeps the record of who
//! changed it, as eventlet's backdoor never did.
//!
//! Anything else gets `{"error": "..."}` and the connection stays usable; a request longer
//! than `MAX_REQUEST` bytes gets an error and the connection is closed. At most
//! `MAX_CLIENTS` inspectors are served at once; when all slots are taken, a new inspector
//! gets the slot of the one that has been idle longest, so silent connections cannot lock a
//! real reader out (only readers in the middle of an answer keep theirs). The socket is removed when the process
//! exits normally; one left by a crash is replaced by the next process with that pid and
//! skipped by `inspector list` (nobody answers on it).
//!
//! `GREENHUB_ATTACH=off` (or `Config::attach`) turns the channel off;
//! `GREENHUB_ATTACH_DIR` puts the sockets in another private directory.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use greenhub_snapshot::SCHEMA_VERSION;
use greenhub_snapshot::attach::{
    Acted, MAX_TRACE_SECONDS, Peer, REQUEST_KILL, REQUEST_KILL_TREE, REQUEST_RESIZE, REQUEST_SET,
    REQUEST_TRACE, SETTING_FLIGHT_RECORDER, SETTING_LOG_LEVEL, SETTING_MAX_BLOCKING_TIME, peer,
};
use greenhub_snapshot::attach::{
    DEFAULT_PROFILE_HZ, MAX_CLIENTS, MAX_PROFILE_SECONDS, MAX_REQUEST, REQUEST_PROFILE,
    REQUEST_SNAPSHOT, REQUEST_SNAPSHOT_STACKS, REQUEST_STACK, REQUEST_SUMMARY, REQUEST_TIMING_OFF,
    REQUEST_TIMING_ON, Summary, Supervised, directory, peer_uid, socket_path,
};

use crate::core::quiescence;
use crate::core::registry::registry;
use parking_lot::Mutex;

use crate::core::{clock, flight, monitor, report, timing, trace};
use crate::observe::profile::profile;
use crate::observe::snapshot::{process_name, snapshot, snapshot_with_stacks};
use crate::observe::stacks::stack_of;

/// A client that sends nothing for this long is disconnected.
const IDLE: Duration = Duration::from_secs(300);

static PATH: OnceLock<PathBuf> = OnceLock::new();

/// Starts the attach thread. A failure is reported and leaves the process running, without
/// the channel.
pub(crate) fn start() {
    if let Err(e) = try_start() {
        report::warn(&format!(
            "greenhub: no attach channel, `inspector attach {}` will not work: {e} \
             (GREENHUB_ATTACH_DIR chooses the directory)",
            std::process::id()
        ));
    }
}

fn try_start() -> io::Result<()> {
    let dir = directory();
    greenhub_snapshot::attach::private_directory(&dir)?;
    let path = socket_path(std::process::id());
    // A socket of this pid can only be left by a process that has ended.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let _ = PATH.set(path);
    // SAFETY: registers a plain function with no arguments to run at normal exit.
    unsafe { libc::atexit(remove_socket) };
    std::thread::Builder::new()
        .name("greenhub-attach".into())
        .spawn(move || {
            let _own = quiescence::own_thread();
            serve(listener)
        })?;
    Ok(())
}

extern "C" fn remove_socket() {
    if let Some(path) = PATH.get() {
        let _ = std::fs::remove_file(path);
    }
}

/// A served inspector: its connection (to close it) and when it last asked something.
struct Slot {
    id: u64,
    conn: UnixStream,
    last_ms: Arc<AtomicU64>,
}

/// The inspectors served now, at most `MAX_CLIENTS`.
static SLOTS: Mutex<Vec<Slot>> = Mutex::new(Vec::new());

fn now_ms() -> u64 {
    clock::uptime().as_millis() as u64
}

fn serve(listener: UnixListener) {
    let mut next_id = 0u64;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if let Err(reason) = allowed(&conn) {
            let _ = reply(&mut conn, &error(&reason));
            continue;
        }
        let Ok(handle) = conn.try_clone() else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        let last_ms = Arc::new(AtomicU64::new(now_ms()));
        {
            let mut slots = SLOTS.lock();
            if slots.len() >= MAX_CLIENTS {
                // The slot of the connection idle longest (not one mid-answer) goes to the
                // newcomer: silent connections (a paused TUI, or someone holding slots on
                // purpose) never lock a real `inspector dump` out, and an idle reader that
                // loses its slot just connects again.
                let oldest = slots
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.last_ms.load(Ordering::Relaxed) != u64::MAX)
                    .min_by_key(|(_, s)| s.last_ms.load(Ordering::Relaxed))
                    .map(|(i, _)| i);
                match oldest {
                    Some(i) => {
                        // Its thread sees the end of its connection and leaves.
                        let _ = slots.swap_remove(i).conn.shutdown(std::net::Shutdown::Both);
                    }
                    None => {
                        drop(slots);
                        let _ = reply(
                            &mut conn,
                            &error(&format!(
                                "{MAX_CLIENTS} inspectors are busy reading already"
                            )),
                        );
                        continue;
                    }
                }
            }
            slots.push(Slot {
                id,
                conn: handle,
                last_ms: last_ms.clone(),
            });
        }
        let spawned = std::thread::Builder::new()
            .name("greenhub-attach-client".into())
            .spawn(move || {
                let _own = quiescence::own_thread();
                let _ = client(conn, &last_ms);
                SLOTS.lock().retain(|s| s.id != id);
            });
        if spawned.is_err() {
            SLOTS.lock().retain(|s| s.id != id);
        }
    }
}

/// Whether the peer runs as this user or as root.
fn allowed(conn: &UnixStream) -> Result<(), String> {
    let uid = peer_uid(conn).map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    if uid != me && uid != 0 {
        return Err(format!(
            "permission denied: uid {uid} may not inspect a process of uid {me}"
        ));
    }
    Ok(())
}

/// Serves one inspector until it hangs up, goes quiet or misbehaves.
fn client(conn: UnixStream, last_ms: &AtomicU64) -> io::Result<()> {
    let who = peer(&conn)?;
    conn.set_read_timeout(Some(IDLE))?;
    conn.set_write_timeout(Some(IDLE))?;
    let mut out = conn.try_clone()?;
    let mut reader = BufReader::new(conn);
    let mut line = Vec::new();
    // This connection's claim on timing, given back when it closes.
    let mut timing_claim = None;
    loop {
        line.clear();
        // One byte more than allowed tells an overlong request from one that fits.
        let n = (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(());
        }
        // Busy until the answer is out: a slot is never taken from a reader mid-answer.
        last_ms.store(u64::MAX, Ordering::Relaxed);
        if line.last() != Some(&b'\n') {
            let why = if line.len() > MAX_REQUEST {
                format!("request longer than {MAX_REQUEST} bytes")
            } else {
                "request not ended by a newline".to_owned()
            };
            return reply(&mut out, &error(&why));
        }
        let request = std::str::from_utf8(&line).map(str::trim);
        let answer = match request.ok().and_then(control) {
            Some(act) => match act.and_then(|act| act.run(who)) {
                Ok(acted) => serde_json::to_string(&acted),
                Err(why) => Ok(error(&why)),
            },
            None => answer(request, &mut timing_claim),
        };
        let answer = answer.unwrap_or_else(|e| error(&format!("cannot encode the answer: {e}")));
        reply(&mut out, &answer)?;
        last_ms.store(now_ms(), Ordering::Relaxed);
    }
}

/// The answer to a request that only reads (or claims timing for this connection).
fn answer(
    request: Result<&str, std::str::Utf8Error>,
    timing_claim: &mut Option<timing::Claim>,
) -> serde_json::Result<String> {
    {
        match request {
            Ok(REQUEST_SNAPSHOT) => serde_json::to_string(&snapshot()),
            Ok(REQUEST_SNAPSHOT_STACKS) => serde_json::to_string(&snapshot_with_stacks()),
            Ok(REQUEST_SUMMARY) => serde_json::to_string(&summary()),
            Ok(REQUEST_TIMING_ON) => {
                timing_claim.get_or_insert_with(timing::claim);
                Ok(serde_json::json!({ "timing": true }).to_string())
            }
            Ok(REQUEST_TIMING_OFF) => {
                *timing_claim = None;
                Ok(serde_json::json!({ "timing": timing::on() }).to_string())
            }
            Ok(other) if other.starts_with(REQUEST_TRACE) => {
                match trace_request(&other[REQUEST_TRACE.len()..]) {
                    Ok(span) => serde_json::to_string(&flight::last(span)),
                    Err(why) => Ok(error(&why)),
                }
            }
            Ok(other) if other.starts_with(REQUEST_PROFILE) => {
                match profile_request(&other[REQUEST_PROFILE.len()..]) {
                    Ok((duration, hz)) => match profile(duration, hz) {
                        Ok(p) => serde_json::to_string(&p),
                        Err(e) => Ok(error(&e.to_string())),
                    },
                    Err(why) => Ok(error(&why)),
                }
            }
            Ok(other) => match other
                .strip_prefix(REQUEST_STACK)
                .and_then(|rest| rest.strip_prefix(' '))
            {
                Some(id) => match id.trim().parse::<u64>() {
                    Ok(id) => match stack_of(id) {
                        Ok(stack) => serde_json::to_string(&stack),
                        Err(e) => Ok(error(&e.to_string())),
                    },
                    Err(_) => Ok(error(&format!(
                        "`{REQUEST_STACK}` takes a thread id, not `{}`",
                        id.escape_debug()
                    ))),
                },
                None => Ok(error(&format!(
                    "unknown request `{}`: expected `snapshot`, `snapshot stacks`, `stack <id>`, \
                     `profile <seconds> [<hz>]`, `timing on`, `timing off`, `summary`, \
                     `kill [tree] <id>`, `set max_blocking_time <ms|off>`, \
                     `set log_level <level>`, `set flight_recorder <on|off>`, \
                     `trace <seconds>` or `resize <object id> <size>`",
                    other.escape_debug()
                ))),
            },
            Err(_) => Ok(error("the request is not UTF-8")),
        }
    }
}

/// A request that acts on the process, parsed and checked.
#[derive(Debug, PartialEq)]
enum Act {
    Kill { id: u64, tree: bool },
    MaxBlockingTime(Option<Duration>),
    LogLevel(log::LevelFilter),
    FlightRecorder(bool),
    Resize { object: u64, size: usize },
}

/// `None` when `request` is not one that acts; otherwise the act, or why it is malformed.
fn control(request: &str) -> Option<Result<Act, String>> {
    let mut words = request.split_whitespace();
    let first = words.next()?;
    let rest: Vec<&str> = words.collect();
    let number = |w: &str, what: &str| -> Result<u64, String> {
        w.parse()
            .map_err(|_| format!("{what} must be a whole number, not `{}`", w.escape_debug()))
    };
    Some(match (first, rest.as_slice()) {
        (REQUEST_KILL, ["tree", id]) => {
            number(id, "a thread id").map(|id| Act::Kill { id, tree: true })
        }
        (REQUEST_KILL, ["tree"]) => Err(format!("usage: `{REQUEST_KILL_TREE} <id>`")),
        (REQUEST_KILL, [id]) => number(id, "a thread id").map(|id| Act::Kill { id, tree: false }),
        (REQUEST_KILL, _) => Err(format!(
            "usage: `{REQUEST_KILL} <id>` or `{REQUEST_KILL_TREE} <id>`"
        )),
        (REQUEST_SET, [SETTING_MAX_BLOCKING_TIME, "off"]) => Ok(Act::MaxBlockingTime(None)),
        (REQUEST_SET, [SETTING_MAX_BLOCKING_TIME, ms]) => {
            number(ms, "max_blocking_time (milliseconds)").and_then(|ms| {
                if (1..=3_600_000).contains(&ms) {
                    Ok(Act::MaxBlockingTime(Some(Duration::from_millis(ms))))
                } else {
                    Err("max_blocking_time takes 1 to 3600000 milliseconds, or `off`".into())
                }
            })
        }
        (REQUEST_SET, [SETTING_LOG_LEVEL, level]) => level
            .parse::<log::LevelFilter>()
            .map(Act::LogLevel)
            .map_err(|_| {
                format!(
                    "log_level takes off, error, warn, info, debug or trace, not `{}`",
                    level.escape_debug()
                )
            }),
        (REQUEST_SET, [SETTING_FLIGHT_RECORDER, "on"]) => Ok(Act::FlightRecorder(true)),
        (REQUEST_SET, [SETTING_FLIGHT_RECORDER, "off"]) => Ok(Act::FlightRecorder(false)),
        (REQUEST_SET, _) => Err(format!(
            "usage: `{REQUEST_SET} {SETTING_MAX_BLOCKING_TIME} <ms|off>`, \
             `{REQUEST_SET} {SETTING_LOG_LEVEL} <level>` or \
             `{REQUEST_SET} {SETTING_FLIGHT_RECORDER} <on|off>`"
        )),
        (REQUEST_RESIZE, [object, size]) => number(object, "an object id").and_then(|object| {
            number(size, "a size").map(|size| Act::Resize {
                object,
                size: size.min(usize::MAX as u64) as usize,
            })
        }),
        (REQUEST_RESIZE, _) => Err(format!("usage: `{REQUEST_RESIZE} <object id> <size>`")),
        _ => return None,
    })
}

impl Act {
    /// Carries the act out for the inspector `who`, logged first.
    fn run(self, who: Peer) -> Result<Acted, String> {
        let say = |what: &str| {
            report::warn(&format!(
                "greenhub: inspector (pid {}, uid {}) asks: {what}",
                who.pid, who.uid
            ))
        };
        match self {
            Act::Kill { id, tree } => {
                say(&if tree {
                    format!("kill green thread #{id} and its descendants")
                } else {
                    format!("kill green thread #{id}")
                });
                let targets = if tree { descendants(id) } else { vec![id] };
                let killed: Vec<u64> = targets.into_iter().filter(|t| kill(*t)).collect();
                if killed.is_empty() {
                    return Err(format!("no live green thread has id {id}"));
                }
                Ok(Acted {
                    done: format!(
                        "killed {} green thread{}",
                        killed.len(),
                        if killed.len() == 1 { "" } else { "s" }
                    ),
                    killed,
                })
            }
            Act::MaxBlockingTime(limit) => {
                let text = limit.map_or("off".to_owned(), |d| format!("{} ms", d.as_millis()));
                say(&format!("set max_blocking_time to {text}"));
                monitor::set_max_blocking_time(limit);
                Ok(Acted {
                    done: format!("max_blocking_time is {text}"),
                    killed: Vec::new(),
                })
            }
            Act::LogLevel(level) => {
                say(&format!("set the log level to {level}"));
                log::set_max_level(level);
                Ok(Acted {
                    done: format!("the log level is {level}"),
                    killed: Vec::new(),
                })
            }
            Act::FlightRecorder(on) => {
                let word = if on { "on" } else { "off" };
                say(&format!("turn the flight recorder {word}"));
                trace::set(on);
                Ok(Acted {
                    done: format!("the flight recorder is {word}"),
                    killed: Vec::new(),
                })
            }
            Act::Resize { object, size } => {
                say(&format!("resize object #{object} to {size}"));
                let found = registry()
                    .object(object)
                    .ok_or_else(|| format!("no live object has id {object}"))?;
                let kind = found.inspect().kind;
                found
                    .resize(size)
                    .map_err(|why| format!("{} #{object}: {why}", kind.name()))?;
                Ok(Acted {
                    done: format!("{} #{object} resized to {size}", kind.name()),
                    killed: Vec::new(),
                })
            }
        }
    }
}

/// Kills the live green thread `id` as its handle would; false if none is alive.
fn kill(id: u64) -> bool {
    registry().thread(id).map(|r| r.kill()).is_some()
}

/// `id` and every live green thread it spawned, their children included, parents first.
fn descendants(id: u64) -> Vec<u64> {
    let (live, _) = registry().live_threads();
    let mut children: std::collections::HashMap<u64, Vec<u64>> = std::collections::HashMap::new();
    for r in &live {
        if let Some(p) = r.parent() {
            children.entry(p).or_default().push(r.id);
        }
    }
    let mut out = vec![id];
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            out.extend(kids);
        }
        i += 1;
    }
    out
}

/// The stretch of a `trace` request (what follows the word), checked.
fn trace_request(args: &str) -> Result<Duration, String> {
    let seconds: f64 = args
        .strip_prefix(' ')
        .map(str::trim)
        .and_then(|w| w.parse().ok())
        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= MAX_TRACE_SECONDS as f64)
        .ok_or_else(|| {
            format!(
                "`{REQUEST_TRACE}` takes seconds (more than 0, at most {MAX_TRACE_SECONDS}): \
                 not `{}`",
                args.trim().escape_debug()
            )
        })?;
    Ok(Duration::from_secs_f64(seconds))
}

/// The seconds and rate of a `profile` request (what follows the word), checked.
fn profile_request(args: &str) -> Result<(Duration, u32), String> {
    let usage = || {
        format!(
            "`{REQUEST_PROFILE}` takes seconds (more than 0, at most {MAX_PROFILE_SECONDS}) and \
             optionally samples per second (1 to 1000): not `{}`",
            args.trim().escape_debug()
        )
    };
    let mut words = args.split_whitespace();
    let seconds: f64 = words
        .next()
        .and_then(|w| w.parse().ok())
        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= MAX_PROFILE_SECONDS as f64)
        .ok_or_else(usage)?;
    let hz = match words.next() {
        None => DEFAULT_PROFILE_HZ,
        Some(w) => w
            .parse()
            .ok()
            .filter(|hz| (1..=1000).contains(hz))
            .ok_or_else(usage)?,
    };
    if words.next().is_some() || !args.is_empty() && !args.starts_with(' ') {
        return Err(usage());
    }
    Ok((Duration::from_secs_f64(seconds), hz))
}

/// This process's place under a `greenhub-serve` master, read once.
static SUPERVISED: std::sync::OnceLock<Option<Supervised>> = std::sync::OnceLock::new();

fn summary() -> Summary {
    Summary {
        schema_version: SCHEMA_VERSION,
        pid: std::process::id(),
        process: process_name(),
        threads: registry().live_count() as u64,
        uptime_us: clock::uptime().as_micros() as u64,
        supervised: SUPERVISED.get_or_init(Supervised::from_env).clone(),
        workers: None,
    }
}

fn error(message: &str) -> String {
    serde_json::json!({ "error": message }).to_string()
}

fn reply(out: &mut UnixStream, line: &str) -> io::Result<()> {
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}
