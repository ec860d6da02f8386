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
    DEFAULT_PROFILE_HZ, MAX_CLIENTS, MAX_PROFILE_SECONDS, MAX_REQUEST, REQUEST_PROFILE,
    REQUEST_SNAPSHOT, REQUEST_SNAPSHOT_STACKS, REQUEST_STACK, REQUEST_SUMMARY, REQUEST_TIMING_OFF,
    REQUEST_TIMING_ON, Summary, Supervised, directory, peer_uid, socket_path,
};

use crate::core::registry::registry;
use parking_lot::Mutex;

use crate::core::{clock, report, timing};
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
            "greenhub: no attach channel, `inspector attach {}` will not work: {e}",
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
        .spawn(move || serve(listener))?;
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
        let answer = match std::str::from_utf8(&line).map(str::trim) {
            Ok(REQUEST_SNAPSHOT) => serde_json::to_string(&snapshot()),
            Ok(REQUEST_SNAPSHOT_STACKS) => serde_json::to_string(&snapshot_with_stacks()),
            Ok(REQUEST_SUMMARY) => serde_json::to_string(&summary()),
            Ok(REQUEST_TIMING_ON) => {
                timing_claim.get_or_insert_with(timing::claim);
                Ok(serde_json::json!({ "timing": true }).to_string())
            }
            Ok(REQUEST_TIMING_OFF) => {
                timing_claim = None;
                Ok(serde_json::json!({ "timing": timing::on() }).to_string())
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
                     `profile <seconds> [<hz>]`, `timing on`, `timing off` or `summary`",
                    other.escape_debug()
                ))),
            },
            Err(_) => Ok(error("the request is not UTF-8")),
        };
        let answer = answer.unwrap_or_else(|e| error(&format!("cannot encode the answer: {e}")));
        reply(&mut out, &answer)?;
        last_ms.store(now_ms(), Ordering::Relaxed);
    }
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
