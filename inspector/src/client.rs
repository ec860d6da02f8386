//! Talking to a live process over its attach socket (see [`greenhub_snapshot::attach`]).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use greenhub_snapshot::attach::{Summary, directory};
use greenhub_snapshot::{SCHEMA_VERSION, Snapshot};

/// How long an answer may take. A snapshot of 100,000 green threads takes well under this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

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
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(io)?;
        Ok(Client {
            pid,
            writer: stream.try_clone().map_err(io)?,
            reader: BufReader::new(stream),
        })
    }

    /// The pid this client talks to.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Everything the process's registry holds now.
    pub fn snapshot(&mut self) -> Result<Snapshot, InspectError> {
        let snap: Snapshot = self.ask("snapshot")?;
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
        self.ask("summary")
    }

    /// Sends `request` and reads the one line that answers it.
    fn ask<T: serde::de::DeserializeOwned>(&mut self, request: &str) -> Result<T, InspectError> {
        let pid = self.pid;
        let io = |source| InspectError::Io { pid, source };
        self.writer
            .write_all(format!("{request}\n").as_bytes())
            .map_err(io)?;
        let mut line = String::new();
        if self.reader.read_line(&mut line).map_err(io)? == 0 {
            return Err(InspectError::Io {
                pid,
                source: io::ErrorKind::UnexpectedEof.into(),
            });
        }
        // Straight into `T`: going through `serde_json::Value` first took most of a second for
        // a snapshot of 100,000 threads. Only a reply that is not a `T` is looked at again.
        match serde_json::from_str::<T>(&line) {
            Ok(answer) => Ok(answer),
            Err(e) => match serde_json::from_str::<Refusal>(&line) {
                Ok(r) => Err(InspectError::Refused {
                    pid,
                    message: r.error,
                }),
                Err(_) => Err(self.protocol(e.to_string())),
            },
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
    let entries = match std::fs::read_dir(directory()) {
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
