//! The listening sockets the master hands to every worker: bound by the master, or taken from
//! its own supervisor (systemd's socket activation). All workers accept on these same
//! sockets, one accept queue each: a worker that stops accepting leaves the connections
//! waiting in the queue to the others (no `SO_REUSEPORT` split queue that drops them).
//!
//! It uses `config.rs`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::{ListenAddr, ListenSpec};

/// Why the sockets cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why (in use, permission).
        source: io::Error,
    },
    /// The sockets handed by systemd are unusable.
    #[error("the sockets handed to greenhub-serve: {0}")]
    Inherited(#[from] greenhub::net::ListenError),
    /// systemd handed a different number of sockets than the configuration lists.
    #[error("systemd handed {handed} sockets but the configuration lists {listed}")]
    Count {
        /// How many were handed.
        handed: usize,
        /// How many `listen` lists.
        listed: usize,
    },
}

/// One socket, with its name for the workers.
#[derive(Debug)]
pub struct Listener {
    /// Its name (`LISTEN_FDNAMES`).
    pub name: String,
    /// The socket.
    pub fd: OwnedFd,
    /// What it listens on, for messages.
    pub shown: String,
}

impl Listener {
    /// The descriptor.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The sockets of `specs`: those systemd handed the master when it did (all of them when
/// `specs` is empty; otherwise their count must match, and names systemd gives win), otherwise
/// bound here.
pub fn open(specs: &[ListenSpec], backlog: u32) -> Result<Vec<Listener>, ListenError> {
    let handed = greenhub::net::take_inherited()?;
    if !handed.is_empty() {
        if !specs.is_empty() && handed.len() != specs.len() {
            return Err(ListenError::Count {
                handed: handed.len(),
                listed: specs.len(),
            });
        }
        return Ok(handed
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                // systemd's name wins; without one, the configuration's, else a number.
                let name = match (h.name(), specs.get(i)) {
                    ("unknown", Some(spec)) => spec.name.clone(),
                    ("unknown", None) => format!("listen{i}"),
                    (name, _) => name.to_string(),
                };
                let fd = h.into_fd();
                let shown =
                    describe(&fd).unwrap_or_else(|| format!("descriptor {}", fd.as_raw_fd()));
                Listener { name, fd, shown }
            })
            .collect());
    }
    specs.iter().map(|s| bind(s, backlog)).collect()
}

fn bind(spec: &ListenSpec, backlog: u32) -> Result<Listener, ListenError> {
    let shown = match &spec.addr {
        ListenAddr::Tcp(a) => a.to_string(),
        ListenAddr::Unix(p) => format!("unix:{}", p.display()),
    };
    let fail = |source| ListenError::Bind {
        addr: shown.clone(),
        source,
    };
    let socket = match &spec.addr {
        ListenAddr::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None).map_err(fail)?;
            s.set_reuse_address(true).map_err(fail)?;
            s.bind(&(*addr).into()).map_err(fail)?;
            s
        }
        ListenAddr::Unix(path) => {
            remove_stale(path);
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail)?;
            s.bind(&SockAddr::unix(path).map_err(fail)?).map_err(fail)?;
            s
        }
    };
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .map_err(fail)?;
    let fd = OwnedFd::from(socket);
    // A bound port 0 shows the port it got.
    let shown = describe(&fd).unwrap_or(shown);
    Ok(Listener {
        name: spec.name.clone(),
        fd,
        shown,
    })
}

/// Removes a socket file nobody listens on any more (left by a master that crashed), so
/// that binding it again works; a file that is not a socket, or a socket someone serves,
/// stays (the bind then says the address is in use).
fn remove_stale(path: &std::path::Path) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if is_socket
        && std::os::unix::net::UnixStream::connect(path)
            .is_err_and(|e| e.kind() == io::ErrorKind::ConnectionRefused)
    {
        let _ = std::fs::remove_file(path);
    }
}

/// What a listening socket is bound to, for messages.
pub fn describe(fd: &OwnedFd) -> Option<String> {
    let s = socket2::SockRef::from(fd);
    let addr = s.local_addr().ok()?;
    if let Some(a) = addr.as_socket() {
        return Some(a.to_string());
    }
    addr.as_pathname().map(|p| format!("unix:{}", p.display()))
}
