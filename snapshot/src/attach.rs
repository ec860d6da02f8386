//! The attach protocol: where a process's attach socket is, what may be asked on it, and
//! what it answers.
//!
//! A process listens on a Unix socket at [`socket_path`]`(pid)`, in a [`directory`] only its
//! user can enter. The client sends one request per line; each gets one line of JSON.
//!
//! | request | answer |
//! |---|---|
//! | [`REQUEST_SNAPSHOT`] | the [`Snapshot`](crate::Snapshot) |
//! | [`REQUEST_SNAPSHOT_STACKS`] | the [`Snapshot`](crate::Snapshot) with the stack of every parked thread |
//! | [`REQUEST_STACK`] `<id>` | the [`ThreadStack`](crate::ThreadStack) of one parked thread |
//! | [`REQUEST_TIMING_ON`], [`REQUEST_TIMING_OFF`] | `{"timing": true}` or `false`: timing (each green thread's time running, waiting and runnable; histograms by spawn site) is on while any connection that asked for it is open, or the program asks for it |
//! | [`REQUEST_PROFILE`] `<seconds> [<hz>]` | a [`Profile`](crate::Profile) taken over that many seconds (at most [`MAX_PROFILE_SECONDS`]) at `hz` samples per second of CPU (1 to 1000, default [`DEFAULT_PROFILE_HZ`]) |
//! | [`REQUEST_SUMMARY`] | [`Summary`]: pid, process name, live green threads, uptime; for a worker of `greenhub-serve` its place ([`Supervised`]); for a master, its workers ([`WorkerProcess`]) |
//! | [`REQUEST_KILL`] `<id>` | [`Acted`]: the green thread killed |
//! | [`REQUEST_KILL_TREE`] `<id>` | [`Acted`]: the green thread and every live descendant killed |
//! | [`REQUEST_SET`] `max_blocking_time <ms or off>` | [`Acted`]: the blocked-worker threshold changed |
//! | [`REQUEST_SET`] `log_level <off, error, warn, info, debug or trace>` | [`Acted`]: the `log` crate's maximum level changed |
//! | [`REQUEST_RESIZE`] `<object id> <size>` | [`Acted`]: a pool (tpool, green pool, item pool) resized |
//! | [`REQUEST_SET`] `flight_recorder <on or off>` | [`Acted`]: the flight recorder started or stopped |
//! | [`REQUEST_TRACE`] `<seconds>` | the flight recorder's [`Trace`](crate::Trace) of the last seconds (at most [`MAX_TRACE_SECONDS`]) |
//!
//! The requests that act (kill, set, resize) are logged by the process, with the inspector's
//! pid and user, before they are carried out.
//!
//! Anything else gets `{"error": "..."}` and the connection stays usable; a request longer
//! than [`MAX_REQUEST`] bytes gets an error and the connection is closed. At most
//! [`MAX_CLIENTS`] clients are served at once.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The request for a full snapshot.
pub const REQUEST_SNAPSHOT: &str = "snapshot";

/// The request for a full snapshot with the stacks of the parked threads.
pub const REQUEST_SNAPSHOT_STACKS: &str = "snapshot stacks";

/// The request for one thread's stack: this word, a space and the thread's id.
pub const REQUEST_STACK: &str = "stack";

/// The request for a profile: this word, a space, the seconds, and optionally a space and the
/// sampling rate.
pub const REQUEST_PROFILE: &str = "profile";

/// The longest profile served, in seconds.
pub const MAX_PROFILE_SECONDS: u64 = 60;

/// The sampling rate of a profile when the request names none.
pub const DEFAULT_PROFILE_HZ: u32 = 499;

/// Turns timing on for as long as this connection is open (or until [`REQUEST_TIMING_OFF`]).
pub const REQUEST_TIMING_ON: &str = "timing on";

/// Gives back this connection's claim on timing.
pub const REQUEST_TIMING_OFF: &str = "timing off";

/// The request for a [`Summary`].
pub const REQUEST_SUMMARY: &str = "summary";

/// Kills a green thread: this word, a space and its id.
pub const REQUEST_KILL: &str = "kill";

/// Kills a green thread and every live thread it spawned, their children included: these
/// words, a space and the id.
pub const REQUEST_KILL_TREE: &str = "kill tree";

/// Changes a setting of the running process: this word, a space, the setting
/// ([`SETTING_MAX_BLOCKING_TIME`] or [`SETTING_LOG_LEVEL`]), a space and the value.
pub const REQUEST_SET: &str = "set";

/// The blocked-worker threshold, in milliseconds, or `off`.
pub const SETTING_MAX_BLOCKING_TIME: &str = "max_blocking_time";

/// The `log` crate's maximum level: `off`, `error`, `warn`, `info`, `debug` or `trace`.
pub const SETTING_LOG_LEVEL: &str = "log_level";

/// The flight recorder: `on` or `off`.
pub const SETTING_FLIGHT_RECORDER: &str = "flight_recorder";

/// The request for the flight recorder's events: this word, a space and how many seconds back.
pub const REQUEST_TRACE: &str = "trace";

/// The longest stretch a trace request may ask for, in seconds (the rings hold what they hold).
pub const MAX_TRACE_SECONDS: u64 = 3600;

/// Resizes a pool: this word, a space, the object's id (as the snapshot lists it), a space
/// and the new size.
pub const REQUEST_RESIZE: &str = "resize";

/// The answer to a request that acts: what was done, in words, and the green threads
/// killed (for a kill).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acted {
    /// What was done, in one line.
    pub done: String,
    /// The green threads a kill reached, by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub killed: Vec<u64>,
}

/// The longest request line served, in bytes.
pub const MAX_REQUEST: usize = 1024;

/// How many inspectors are served at once.
pub const MAX_CLIENTS: usize = 8;

/// The answer to `summary`: enough to list processes without reading every thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// [`SCHEMA_VERSION`](crate::SCHEMA_VERSION) of the producer.
    pub schema_version: u32,
    /// Process id.
    pub pid: u32,
    /// Process name.
    pub process: String,
    /// Live green threads.
    pub threads: u64,
    /// Time since the runtime started.
    pub uptime_us: u64,
    /// For a worker of `greenhub-serve`: which.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervised: Option<Supervised>,
    /// For a `greenhub-serve` master (which runs no green threads): its workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<WorkerProcess>>,
}

/// A worker's place under its `greenhub-serve` master (from `GREENHUB_SERVE_WORKER` and
/// `GREENHUB_SERVE_GENERATION`, which the master sets).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supervised {
    /// The master's pid.
    pub master: u32,
    /// The worker's number, counted by the master from 1.
    pub worker: u64,
    /// The reload generation it was started in.
    pub generation: u32,
}

impl Supervised {
    /// This process's place, if a master started it.
    pub fn from_env() -> Option<Supervised> {
        let var = |name| std::env::var(name).ok()?.trim().parse().ok();
        Some(Supervised {
            // SAFETY: getppid has no failure mode.
            master: unsafe { libc::getppid() } as u32,
            worker: var("GREENHUB_SERVE_WORKER")?,
            generation: var("GREENHUB_SERVE_GENERATION")? as u32,
        })
    }
}

/// A worker as its master sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerProcess {
    /// The worker's number, counted by the master from 1.
    pub id: u64,
    /// Its pid.
    pub pid: u32,
    /// The reload generation it was started in.
    pub generation: u32,
    /// `starting`, `ready`, `draining` or `killed`.
    pub state: String,
    /// Time since it started.
    pub age_us: u64,
    /// Requests it has served, from its last heartbeat.
    pub requests: u64,
    /// Its resident memory, in bytes.
    pub rss_bytes: u64,
    /// How long its longest ongoing blocked-worker report has lasted, in milliseconds.
    pub blocked_ms: u64,
    /// Why it is to be replaced, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retiring: Option<String>,
}

/// Creates `dir` private to this user, or checks that it is: a real directory, owned by the
/// effective user, with no access for group or others. A directory someone else controls
/// could let them answer in a process's place, so it is refused, not repaired.
pub fn private_directory(dir: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
        _ => {}
    }
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no failure mode.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} must be a directory owned by uid {uid} with mode 0700",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// The directory of this user's attach sockets: `GREENHUB_ATTACH_DIR` if set, else
/// `$XDG_RUNTIME_DIR/greenhub` if that runtime directory exists, else `/tmp/greenhub-<uid>`.
pub fn directory() -> PathBuf {
    if let Some(dir) = std::env::var_os("GREENHUB_ATTACH_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        let run = PathBuf::from(run);
        if run.is_dir() {
            return run.join("greenhub");
        }
    }
    // SAFETY: geteuid has no failure mode.
    let uid = unsafe { libc::geteuid() };
    PathBuf::from(format!("/tmp/greenhub-{uid}"))
}

/// Where the process `pid` of this user listens.
pub fn socket_path(pid: u32) -> PathBuf {
    directory().join(format!("{pid}.sock"))
}

/// The uid of the process at the other end of a connected Unix socket: both ends of the
/// attach channel check it (the process serves only its user and root; the inspector trusts
/// only the directory's owner).
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    peer(stream).map(|p| p.uid)
}

/// Who is at the other end of a Unix socket, as the kernel recorded it when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its process id.
    pub pid: i32,
    /// Its user id.
    pub uid: u32,
}

/// The process id and user id of the peer of a connected Unix socket (`SO_PEERCRED`).
pub fn peer(stream: &UnixStream) -> io::Result<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the given length on a connected Unix socket.
    let r = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
    })
}
