//! Talking to a live process over its attach socket (see [`greenhub_snapshot::attach`]).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use greenhub_snapshot::attach::{
    Acted, REQUEST_KILL, REQUEST_KILL_TREE, REQUEST_PROFILE, REQUEST_RESIZE, REQUEST_SET,
    REQUEST_SNAPSHOT, REQUEST_SNAPSHOT_STACKS, REQUEST_STACK, REQUEST_SUMMARY, REQUEST_TIMING_OFF,
    REQUEST_TIMING_ON, REQUEST_TRACE, Summary, directory, peer_uid,
};
use greenhub_snapshot::{Profile, SCHEMA_VERSION, Snapshot, ThreadStack, Trace};

/// How long a snapshot may take to arrive, all of it. One of 100,000 green threads takes well
/// under a second.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a summary may take: `list` asks every process for one, and a process that
/// answers slowly must not hold it up.
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest snapshot read, in bytes: 100,000 green threads make about 30 MB, and a
/// process cannot hold many more (`vm.max_map_count`).
pub const MAX_SNAPSHOT: usize = 128 << 20;

/// The longest summary read, in bytes.
const MAX_SUMMARY: usize = 64 << 10;

/// The longest answer to a stack request (128 frames of long generic names).
const MAX_STACK: usize = 1 << 20;

/// Why a process could not be read.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// No socket for the pid: not a greenhub process, another user's, or the channel is off.
    #[error(
        "no greenhub process {pid} to attach to: {} does not exist (is {pid} running greenhub \
         as your user, with GREENHUB_ATTACH on and the same GREENHUB_ATTACH_DIR?)",
        path.display()
    )]
    NotFound {
        /// The pid asked for.
        pid: u32,
        /// Where its socket would be.
        path: PathBuf,
    },
    /// The socket exists but nobody answers: the process has ended without removing it.
    #[error("process {pid} is gone (its socket {} is left from a crash)", path.display())]
    Gone {
        /// The pid asked for.
        pid: u32,
        /// The stale socket.
        path: PathBuf,
    },
    /// The process refused: another user's process, or too many inspectors attached.
    #[error("process {pid} refused: {message}")]
    Refused {
        /// The pid asked for.
        pid: u32,
        /// What it said.
        message: String,
    },
    /// The answer was not what the protocol says (a greenhub too old or too new).
    #[error("process {pid} answered something unreadable: {reason}")]
    Protocol {
        /// The pid asked for.
        pid: u32,
        /// What was wrong.
        reason: String,
    },
    /// The socket's directory or the process behind it is not this user's: another user
    /// could answer in the target's place, so nothing is read.
    #[error("not reading {}: {reason}", path.display())]
    Untrusted {
        /// The directory or socket.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The answer did not end in time (a stuck process, or one that trickles bytes).
    #[error("process {pid} did not answer within {}s", limit.as_secs())]
    TimedOut {
        /// The pid asked for.
        pid: u32,
        /// The time it had.
        limit: Duration,
    },
    /// Reading or writing the socket failed.
    #[error("talking to process {pid}: {source}")]
    Io {
        /// The pid asked for.
        pid: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// A connection to one process; it answers request after request.
#[derive(Debug)]
pub struct Client {
    pid: u32,
    /// Whether this connection asked for timing.
    timing: bool,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the process `pid` of this user.
    pub fn connect(pid: u32) -> Result<Client, InspectError> {
        Client::connect_in(&directory(), pid)
    }

    /// Connects to the process `pid` whose socket is in `dir` (the `GREENHUB_ATTACH_DIR` it
    /// was started with, when that differs from this process's).
    pub fn connect_in(dir: &Path, pid: u32) -> Result<Client, InspectError> {
        let path = dir.join(format!("{pid}.sock"));
        let owner = match trusted_directory(dir) {
            Ok(owner) => owner,
            Err(InspectError::NotFound { .. }) => return Err(InspectError::NotFound { pid, path }),
            Err(e) => return Err(e),
        };
        let stream = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(InspectError::NotFound { pid, path });
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(InspectError::Gone { pid, path });
            }
            Err(source) => return Err(InspectError::Io { pid, source }),
        };
        let io = |source| InspectError::Io { pid, source };
        match peer_uid(&stream) {
            Ok(uid) if uid == owner => {}
            Ok(uid) => {
                return Err(InspectError::Untrusted {
                    path,
                    reason: format!(
                        "it is served by uid {uid}, not by the directory's owner {owner}"
                    ),
                });
            }
            Err(source) => return Err(InspectError::Io { pid, source }),
        }
        stream
            .set_write_timeout(Some(SUMMARY_TIMEOUT))
            .map_err(io)?;
        Ok(Client {
            pid,
            timing: false,
            writer: stream.try_clone().map_err(io)?,
            reader: BufReader::new(stream),
        })
    }

    /// The pid this client talks to.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process's registry holds now, as the process sent it: before showing
    /// its texts, escape them ([`Snapshot::escape_controls`]; `format_run_info` does).
    pub fn snapshot(&mut self) -> Result<Snapshot, InspectError> {
        let snap: Snapshot = self.ask(REQUEST_SNAPSHOT, MAX_SNAPSHOT, SNAPSHOT_TIMEOUT)?;
        self.checked(snap)
    }

    /// [`Client::snapshot`] with the stack of every parked green thread
    /// ([`ThreadInfo::stack`](greenhub_snapshot::ThreadInfo::stack); the process resolves the
    /// symbols, the first time at some cost to its attach thread, never to its workers).
    pub fn snapshot_with_stacks(&mut self) -> Result<Snapshot, InspectError> {
        let snap: Snapshot =
            self.ask(REQUEST_SNAPSHOT_STACKS, 4 * MAX_SNAPSHOT, SNAPSHOT_TIMEOUT)?;
        self.checked(snap)
    }

    /// The stack of one parked green thread. A thread that is running, gone or unreadable is
    /// [`InspectError::Refused`] with the process's reason.
    pub fn stack(&mut self, thread: u64) -> Result<ThreadStack, InspectError> {
        self.ask(
            &format!("{REQUEST_STACK} {thread}"),
            MAX_STACK,
            SNAPSHOT_TIMEOUT,
        )
    }

    /// A profile taken over `seconds` at `hz` samples per second of each worker's CPU time
    /// (see [`greenhub_snapshot::attach::REQUEST_PROFILE`]); waits as long, and the process's
    /// symbolizing after.
    pub fn profile(&mut self, seconds: f64, hz: u32) -> Result<Profile, InspectError> {
        // The process refuses what it cannot take; this only bounds the wait.
        let wait = if seconds.is_finite() {
            seconds.clamp(0.0, 3600.0)
        } else {
            0.0
        };
        let within = Duration::from_secs_f64(wait) + SNAPSHOT_TIMEOUT;
        self.ask(
            &format!("{REQUEST_PROFILE} {seconds} {hz}"),
            MAX_SNAPSHOT,
            within,
        )
    }

    /// Asks the process to time its green threads for as long as this connection is open
    /// (`on`), or gives that back; returns whether timing is on now.
    pub fn timing(&mut self, on: bool) -> Result<bool, InspectError> {
        #[derive(serde::Deserialize)]
        struct Answer {
            timing: bool,
        }
        let request = if on {
            REQUEST_TIMING_ON
        } else {
            REQUEST_TIMING_OFF
        };
        let answer: Answer = self.ask(request, MAX_SUMMARY, SUMMARY_TIMEOUT)?;
        self.timing = on;
        Ok(answer.timing)
    }

    /// Whether this connection holds a claim on timing ([`Client::timing`]).
    pub fn timing_claimed(&self) -> bool {
        self.timing
    }

    fn checked(&self, snap: Snapshot) -> Result<Snapshot, InspectError> {
        if snap.schema_version != SCHEMA_VERSION {
            return Err(self.protocol(format!(
                "snapshot schema {} (this inspector reads {SCHEMA_VERSION})",
                snap.schema_version
            )));
        }
        Ok(snap)
    }

    /// The process's name, live green threads and uptime.
    pub fn summary(&mut self) -> Result<Summary, InspectError> {
        self.ask(REQUEST_SUMMARY, MAX_SUMMARY, SUMMARY_TIMEOUT)
    }

    /// The flight recorder's events of the last `seconds` (see
    /// [`greenhub_snapshot::attach::REQUEST_TRACE`]); empty while the process's recorder is off.
    pub fn trace(&mut self, seconds: f64) -> Result<Trace, InspectError> {
        self.ask(
            &format!("{REQUEST_TRACE} {seconds}"),
            MAX_SNAPSHOT,
            SNAPSHOT_TIMEOUT,
        )
    }

    /// Kills the green thread `thread` (and, with `tree`, every live thread it spawned, theirs
    /// included). The process logs the request with this inspector's pid and user first.
    pub fn kill(&mut self, thread: u64, tree: bool) -> Result<Acted, InspectError> {
        let request = if tree {
            format!("{REQUEST_KILL_TREE} {thread}")
        } else {
            format!("{REQUEST_KILL} {thread}")
        };
        self.ask(&request, MAX_SUMMARY, SUMMARY_TIMEOUT)
    }

    /// Changes a setting of the running process: [`SETTING_MAX_BLOCKING_TIME`] (milliseconds
    /// or `off`) or [`SETTING_LOG_LEVEL`] (`off` to `trace`). Logged by the process.
    ///
    /// [`SETTING_MAX_BLOCKING_TIME`]: greenhub_snapshot::attach::SETTING_MAX_BLOCKING_TIME
    /// [`SETTING_LOG_LEVEL`]: greenhub_snapshot::attach::SETTING_LOG_LEVEL
    pub fn set(&mut self, setting: &str, value: &str) -> Result<Acted, InspectError> {
        self.ask(
            &format!("{REQUEST_SET} {} {}", one_word(setting), one_word(value)),
            MAX_SUMMARY,
            SUMMARY_TIMEOUT,
        )
    }

    /// Resizes the pool `object` (its id in the snapshot): a tpool's threads, a green pool's
    /// slots, an item pool's items. Logged by the process.
    pub fn resize(&mut self, object: u64, size: usize) -> Result<Acted, InspectError> {
        self.ask(
            &format!("{REQUEST_RESIZE} {object} {size}"),
            MAX_SUMMARY,
            SUMMARY_TIMEOUT,
        )
    }

    /// Sends `request` and reads the one line that answers it: at most `limit` bytes, all of
    /// it within `within`.
    fn ask<T: serde::de::DeserializeOwned>(
        &mut self,
        request: &str,
        limit: usize,
        within: Duration,
    ) -> Result<T, InspectError> {
        let pid = self.pid;
        let io = |source| InspectError::Io { pid, source };
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(io)?;
        let line = self.read_line(limit, within)?;
        // Straight into `T`: going through `serde_json::Value` first took most of a second for
        // a snapshot of 100,000 threads. Only a reply that is not a `T` is looked at again.
        match serde_json::from_slice::<T>(&line) {
            Ok(answer) => Ok(answer),
            Err(e) => match serde_json::from_slice::<Refusal>(&line) {
                Ok(r) => Err(InspectError::Refused {
                    pid,
                    // Shown in terminals: escaped like every text from a target.
                    message: greenhub_snapshot::escape_controls(&r.error).into_owned(),
                }),
                Err(_) => Err(self.protocol(e.to_string())),
            },
        }
    }

    /// One line of at most `limit` bytes, ended within `within` however the bytes trickle in.
    fn read_line(&mut self, limit: usize, within: Duration) -> Result<Vec<u8>, InspectError> {
        let pid = self.pid;
        let deadline = Instant::now() + within;
        let timed_out = InspectError::TimedOut { pid, limit: within };
        let mut line = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out);
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|source| InspectError::Io { pid, source })?;
            let buf = match self.reader.fill_buf() {
                Ok(buf) => buf,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(timed_out);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => return Err(InspectError::Io { pid, source }),
            };
            if buf.is_empty() {
                return Err(InspectError::Io {
                    pid,
                    source: io::ErrorKind::UnexpectedEof.into(),
                });
            }
            let (taken, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if line.len() + taken > limit + 1 {
                return Err(self.protocol(format!("an answer longer than {limit} bytes")));
            }
            line.extend_from_slice(&buf[..taken]);
            self.reader.consume(taken);
            if done {
                return Ok(line);
            }
        }
    }

    fn protocol(&self, reason: String) -> InspectError {
        InspectError::Protocol {
            pid: self.pid,
            reason,
        }
    }
}

/// What the process answers to a request it refuses.
#[derive(serde::Deserialize)]
struct Refusal {
    error: String,
}

/// A process found by [`list`].
#[derive(Debug)]
pub struct Listed {
    /// Its pid.
    pub pid: u32,
    /// What it said about itself, or why it could not be read.
    pub summary: Result<Summary, InspectError>,
}

/// The inspectable processes of this user, by pid. Sockets left by processes that have ended
/// are removed on the way (the directory is this user's own).
pub fn list() -> io::Result<Vec<Listed>> {
    let dir = directory();
    if let Err(e) = trusted_directory(&dir) {
        return match e {
            InspectError::Untrusted { .. } => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                e.to_string(),
            )),
            // No directory: no process of this user has started one.
            _ => Ok(Vec::new()),
        };
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".sock"))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let summary = Client::connect(pid).and_then(|mut c| c.summary());
        if let Err(InspectError::Gone { path, .. }) = &summary {
            // Only when the pid is free: a live process may be starting up right now.
            if !PathBuf::from(format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(path);
            }
            continue;
        }
        found.push(Listed { pid, summary });
    }
    found.sort_by_key(|l| l.pid);
    Ok(found)
}

/// Checks that `dir` is a real directory that only its owner can enter, owned by this user
/// (root may read any user's), and returns its owner: the only uid trusted to answer there.
fn trusted_directory(dir: &Path) -> Result<u32, InspectError> {
    let untrusted = |reason: String| InspectError::Untrusted {
        path: dir.to_path_buf(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(InspectError::NotFound {
                pid: 0,
                path: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(untrusted(e.to_string())),
    };
    // SAFETY: geteuid has no failure mode.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() {
        return Err(untrusted("it is not a directory".into()));
    }
    if meta.uid() != me && me != 0 {
        return Err(untrusted(format!(
            "it belongs to uid {}, not to you (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(untrusted(format!(
            "others can enter it (mode {:o}); it must be 0700",
            meta.mode() & 0o777
        )));
    }
    Ok(meta.uid())
}

/// `text` as one word of a request line: whitespace and line breaks would make it another
/// request, so they become `_` (which the process then refuses as a value it does not know).
fn one_word(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}
