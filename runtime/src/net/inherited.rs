//! Listening sockets handed to the process by its supervisor (`greenhub-serve`, systemd's
//! socket activation) in the `LISTEN_FDS` convention: descriptors 3, 4, ... are open
//! listening sockets, `LISTEN_FDS` says how many, `LISTEN_PID` names the process they are
//! for, `LISTEN_FDNAMES` optionally names them (colon-separated).
//!
//! A program written this way also runs alone: [`listen_or_inherit`] takes the first handed
//! socket, or binds an address when there is none.
//!
//! This file may use `net/socket.rs`.

use std::collections::VecDeque;
use std::io;
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use parking_lot::Mutex;

use crate::net::socket::{TcpListener, UnixListener};

/// The first descriptor of the convention.
const FIRST_FD: RawFd = 3;

/// The most descriptors accepted from `LISTEN_FDS`: a larger count is refused as malformed,
/// not trusted to walk the descriptor table.
pub const MAX_INHERITED: usize = 1024;

/// The handed sockets not taken yet; `None` until the environment has been read.
static LEFT: Mutex<Option<Handed>> = Mutex::new(None);

/// What the environment handed: the sockets not taken yet, or the descriptor (and its name)
/// that was announced but not open.
type Handed = Result<VecDeque<Inherited>, (RawFd, String)>;

/// What is wrong with the handed sockets, or with binding one.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A variable of the convention does not parse; the supervisor that started the process
    /// set it wrong.
    #[error("{var}={value:?} is not valid: {why}")]
    Malformed {
        /// `LISTEN_FDS`, `LISTEN_PID` or `LISTEN_FDNAMES`.
        var: &'static str,
        /// What it holds.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A descriptor the convention promises is not open.
    #[error("descriptor {fd} ({name:?}) was announced in LISTEN_FDS but is not open")]
    NotOpen {
        /// The descriptor.
        fd: RawFd,
        /// Its name (`LISTEN_FDNAMES`, or `unknown`).
        name: String,
    },
    /// A handed descriptor is not the kind of socket asked for.
    #[error("descriptor {fd} ({name:?}) is not a listening {wanted} socket: {found}")]
    WrongKind {
        /// The descriptor.
        fd: RawFd,
        /// Its name.
        name: String,
        /// What was asked for (`TCP`, `Unix`).
        wanted: &'static str,
        /// What it is.
        found: String,
    },
    /// Binding the fallback address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// A system call on a handed descriptor failed.
    #[error("descriptor {fd}: {source}")]
    Io {
        /// The descriptor.
        fd: RawFd,
        /// Why.
        source: io::Error,
    },
}

/// One socket handed to the process.
#[derive(Debug)]
pub struct Inherited {
    fd: OwnedFd,
    name: String,
}

impl Inherited {
    /// Its name from `LISTEN_FDNAMES`, `unknown` when the supervisor gave none (systemd's
    /// rule).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The descriptor number.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The socket as a cooperative TCP listener, if it is one (a listening stream socket of
    /// IPv4 or IPv6).
    pub fn into_tcp_listener(self) -> Result<TcpListener, ListenError> {
        let fd = self.fd.as_raw_fd();
        let socket = self.check(socket2::Type::STREAM, "TCP", |a| a.is_ipv4() || a.is_ipv6())?;
        TcpListener::from_std(socket.into()).map_err(|source| ListenError::Io { fd, source })
    }

    /// The socket as a cooperative Unix listener, if it is one.
    pub fn into_unix_listener(self) -> Result<UnixListener, ListenError> {
        let fd = self.fd.as_raw_fd();
        let socket = self.check(socket2::Type::STREAM, "Unix", |a| a.is_unix())?;
        UnixListener::from_std(socket.into()).map_err(|source| ListenError::Io { fd, source })
    }

    /// The descriptor itself, for a socket greenhub has no type for.
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    fn check(
        self,
        ty: socket2::Type,
        wanted: &'static str,
        family: impl Fn(&socket2::SockAddr) -> bool,
    ) -> Result<socket2::Socket, ListenError> {
        let fd = self.fd.as_raw_fd();
        let name = self.name;
        let socket = socket2::Socket::from(self.fd);
        let wrong = |found: String| ListenError::WrongKind {
            fd,
            name: name.clone(),
            wanted,
            found,
        };
        let io = |source| ListenError::Io { fd, source };
        let found_ty = match socket.r#type() {
            Ok(t) => t,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
                return Err(wrong("not a socket".into()));
            }
            Err(e) => return Err(io(e)),
        };
        if found_ty != ty {
            return Err(wrong(format!("a socket of type {found_ty:?}")));
        }
        let local = socket.local_addr().map_err(io)?;
        if !family(&local) {
            return Err(wrong(format!("a socket of family {:?}", local.family())));
        }
        if !socket.is_listener().map_err(io)? {
            return Err(wrong("a socket that does not listen".into()));
        }
        Ok(socket)
    }
}

/// Takes the sockets handed to this process that nobody has taken yet, in order. They are
/// read from the environment once (each made close-on-exec, so the process's own children do
/// not inherit them) and owned once: a later call, or a process that was handed none or
/// whose `LISTEN_PID` names another process, gets what is left, often nothing. The variables
/// stay in the environment: a child sees a `LISTEN_PID` that is not its own and ignores
/// them.
///
/// ```
/// // Run alone, nothing was handed over.
/// assert!(greenhub::net::take_inherited().unwrap().is_empty());
/// ```
pub fn take_inherited() -> Result<Vec<Inherited>, ListenError> {
    parse_env()?;
    let mut left = LEFT.lock();
    Ok(handed(&mut left)?.drain(..).collect())
}

/// The sockets not taken yet: read from the environment on first use. A broken handover
/// (a malformed variable, a descriptor that is not open) is an error at every call, never
/// "nothing was handed": a program must not quietly bind its fallback address instead.
fn handed(left: &mut Option<Handed>) -> Result<&mut VecDeque<Inherited>, ListenError> {
    match left.get_or_insert_with(read_handed) {
        Ok(list) => Ok(list),
        Err((fd, name)) => Err(ListenError::NotOpen {
            fd: *fd,
            name: name.clone(),
        }),
    }
}

/// The handed sockets, or the descriptor announced but not open. A malformed variable
/// leaves nothing taken (each call says so again).
fn read_handed() -> Handed {
    let Ok(Some(names)) = parse_env() else {
        return Ok(VecDeque::new());
    };
    let mut taken = VecDeque::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let fd = FIRST_FD + i as RawFd;
        // SAFETY: F_GETFD only reads the descriptor's flags; it fails with EBADF if closed.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            return Err((fd, name));
        }
        // SAFETY: as above; setting FD_CLOEXEC changes only this descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
        // SAFETY: the descriptor is open, and the convention hands it to this process, which
        // reads the environment once (`LEFT` is set before the first read): nothing else in
        // the process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        taken.push_back(Inherited { fd, name });
    }
    Ok(taken)
}

/// The names of the descriptors handed to this process, from its environment.
fn parse_env() -> Result<Option<Vec<String>>, ListenError> {
    let var = |name| std::env::var(name).ok();
    parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    )
}

/// The names of the descriptors handed to process `pid`, or `None` if none were.
fn parse(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    me: u32,
) -> Result<Option<Vec<String>>, ListenError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    let malformed = |var, value: &str, why| ListenError::Malformed {
        var,
        value: value.chars().take(64).collect(),
        why,
    };
    let for_pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| malformed("LISTEN_PID", pid, "not a process id"))?;
    if for_pid != me {
        return Ok(None);
    }
    let n: usize = fds
        .trim()
        .parse()
        .map_err(|_| malformed("LISTEN_FDS", fds, "not a count"))?;
    if n > MAX_INHERITED {
        return Err(malformed("LISTEN_FDS", fds, "more than 1024 descriptors"));
    }
    let names: Vec<String> = match names {
        None => vec!["unknown".to_string(); n],
        Some(list) => {
            let names: Vec<String> = list.split(':').map(str::to_string).collect();
            if names.len() != n || (n == 0 && !list.is_empty()) {
                return Err(malformed(
                    "LISTEN_FDNAMES",
                    list,
                    "not one name per descriptor of LISTEN_FDS",
                ));
            }
            names
        }
    };
    Ok(Some(names).filter(|n| !n.is_empty()))
}

/// The next TCP socket handed to the process and not taken yet (the first, then the
/// second...), or, when there is none, a new listener on `addr` (with
/// [`Listen`](crate::net::Listen)'s defaults). A program that serves this way runs both
/// alone and under a supervisor that hands it its sockets: call it once per socket, in the
/// supervisor's order.
///
/// ```
/// let listener = greenhub::net::listen_or_inherit("127.0.0.1:0").unwrap();
/// assert!(listener.local_addr().unwrap().ip().is_loopback());
/// ```
pub fn listen_or_inherit<A>(addr: A) -> Result<TcpListener, ListenError>
where
    A: ToSocketAddrs + Send + std::fmt::Debug + 'static,
{
    parse_env()?;
    let next = handed(&mut LEFT.lock())?.pop_front();
    if let Some(next) = next {
        return next.into_tcp_listener();
    }
    let shown = format!("{addr:?}");
    TcpListener::bind(addr).map_err(|source| ListenError::Bind {
        addr: shown.trim_matches('"').to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_convention_parses_strictly() {
        assert!(parse(None, None, None, 7).unwrap().is_none());
        assert!(
            parse(Some("8"), Some("2"), None, 7).unwrap().is_none(),
            "not for us"
        );
        assert_eq!(
            parse(Some("7"), Some("2"), None, 7).unwrap().unwrap(),
            ["unknown", "unknown"]
        );
        assert_eq!(
            parse(Some("7"), Some("2"), Some("http:admin"), 7)
                .unwrap()
                .unwrap(),
            ["http", "admin"]
        );
        assert!(parse(Some("7"), Some("0"), None, 7).unwrap().is_none());
        for (pid, fds, names) in [
            ("x", "1", None),
            ("7", "-1", None),
            ("7", "99999999999999999999", None),
            ("7", "1025", None),
            ("7", "2", Some("one")),
            ("7", "1", Some("a:b")),
        ] {
            let e = parse(Some(pid), Some(fds), names, 7).unwrap_err();
            assert!(matches!(e, ListenError::Malformed { .. }), "{e}");
        }
        // A hostile value is shown cut short.
        let long = "9".repeat(10_000);
        let e = parse(Some("7"), Some(&long), None, 7).unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }
}
