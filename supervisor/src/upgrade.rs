//! Upgrading the master's own binary without closing a socket (SIGUSR2), as Envoy's hot
//! restart does: the old master starts the new binary with `GREENHUB_SERVE_TAKEOVER` naming
//! its control socket; the new master connects, is handed the listening sockets with
//! `SCM_RIGHTS`, starts its workers, and once they are all ready says `ready`; only then
//! does the old master drain its workers and exit. A new master that fails before that
//! changes nothing: the old one keeps serving.
//!
//! The control socket lives in the master's private directory (mode 0700), and both ends
//! check that the peer runs as the same user.
//!
//! It uses `listen.rs`.

use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use crate::listen::{self, Listener};

/// The variable that names the old master's control socket to a new master.
pub const TAKEOVER_VAR: &str = "GREENHUB_SERVE_TAKEOVER";

/// The most sockets handed over.
pub const MAX_SOCKETS: usize = 64;

/// What a connection to the control socket asks for.
const TAKEOVER: &str = "takeover";

/// What the new master says once its workers are ready.
pub const READY: &str = "ready";

/// How long a control connection may take to ask.
const ASK_LIMIT: Duration = Duration::from_secs(1);

/// Why a takeover failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The control socket could not be reached or spoke out of turn.
    #[error("taking the sockets over from {path}: {why}")]
    Takeover {
        /// The old master's control socket.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// The old master's side: a listening control socket.
#[derive(Debug)]
pub struct Control {
    listener: UnixListener,
    path: PathBuf,
}

impl Control {
    /// Binds `dir/control`.
    pub fn bind(dir: &Path) -> std::io::Result<Control> {
        let path = dir.join("control");
        let listener = UnixListener::bind(&path)?;
        listener.set_nonblocking(true)?;
        Ok(Control { listener, path })
    }

    /// The path a new master is given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor to poll.
    pub fn raw(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Serves a waiting connection, if any: a takeover request from `expected` (the new
    /// master this one started) gets the sockets, and the connection is returned to wait for
    /// `ready` on. Anything else is closed.
    /// An `accept` that fails for another reason than an empty queue (out of descriptors)
    /// is the error: the caller stops polling the socket for a while.
    pub fn serve(
        &self,
        listeners: &[Listener],
        expected: Option<u32>,
    ) -> std::io::Result<Option<(UnixStream, u32)>> {
        match self.listener.accept() {
            Ok((stream, _)) => Ok(self.answer(stream, listeners, expected)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn answer(
        &self,
        stream: UnixStream,
        listeners: &[Listener],
        expected: Option<u32>,
    ) -> Option<(UnixStream, u32)> {
        let (uid, pid) = peer(&stream)?;
        if uid != nix::unistd::geteuid().as_raw() {
            log::warn!("control socket: refused a connection from uid {uid}");
            return None;
        }
        if expected != Some(pid) {
            log::warn!(
                "control socket: refused pid {pid}, which is not a new master this one started"
            );
            return None;
        }
        stream.set_nonblocking(false).ok()?;
        stream.set_read_timeout(Some(ASK_LIMIT)).ok()?;
        stream.set_write_timeout(Some(ASK_LIMIT)).ok()?;
        let mut line = String::new();
        BufReader::new((&stream).take(64))
            .read_line(&mut line)
            .ok()?;
        if line.trim_end() != TAKEOVER {
            log::warn!(
                "control socket: pid {pid} asked {:?}; closed",
                line.trim_end()
            );
            return None;
        }
        let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
        let payload = serde_json::to_vec(&names).ok()?;
        let fds: Vec<RawFd> = listeners.iter().map(|l| l.raw()).collect();
        let sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(&payload)],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        );
        if let Err(e) = sent {
            log::warn!("control socket: cannot hand the sockets to pid {pid}: {e}");
            return None;
        }
        stream.set_nonblocking(true).ok()?;
        Some((stream, pid))
    }
}

/// Whether the new master said `ready` on `stream`: `Some(true)` when it did, `Some(false)`
/// when the connection ended without it, `None` while it has said nothing yet.
pub fn said_ready(stream: &UnixStream) -> Option<bool> {
    let mut buf = [0u8; 64];
    match (&*stream).read(&mut buf) {
        Ok(0) => Some(false),
        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).trim_end() == READY),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
        Err(_) => Some(false),
    }
}

/// The new master's side: connects to `path`, asks, and receives the sockets.
pub fn take(path: &Path) -> Result<(Vec<Listener>, UnixStream), UpgradeError> {
    let fail = |why: String| UpgradeError::Takeover {
        path: path.to_path_buf(),
        why,
    };
    let stream = UnixStream::connect(path).map_err(|e| fail(e.to_string()))?;
    let (uid, _) = peer(&stream).ok_or_else(|| fail("no peer credentials".into()))?;
    if uid != nix::unistd::geteuid().as_raw() {
        return Err(fail(format!("the socket belongs to uid {uid}")));
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| fail(e.to_string()))?;
    (&stream)
        .write_all(format!("{TAKEOVER}\n").as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (n, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| fail(e.to_string()))?;
        let mut fds: Vec<OwnedFd> = Vec::new();
        for c in msg.cmsgs().map_err(|e| fail(e.to_string()))? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: the kernel installed these descriptors in this process for this
                // message; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    let names: Vec<String> =
        serde_json::from_slice(&buf[..n]).map_err(|e| fail(format!("its answer: {e}")))?;
    if names.len() != fds.len() || fds.is_empty() {
        return Err(fail(format!(
            "{} names for {} sockets",
            names.len(),
            fds.len()
        )));
    }
    let listeners = names
        .into_iter()
        .zip(fds)
        .map(|(name, fd)| {
            let shown =
                listen::describe(&fd).unwrap_or_else(|| format!("descriptor {}", fd.as_raw_fd()));
            Listener { name, fd, shown }
        })
        .collect();
    Ok((listeners, stream))
}

/// The peer's uid and pid.
fn peer(stream: &UnixStream) -> Option<(u32, u32)> {
    let cred =
        nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some((cred.uid(), cred.pid() as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(name: &str) -> Listener {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let shown = l.local_addr().unwrap().to_string();
        Listener {
            name: name.into(),
            fd: OwnedFd::from(l),
            shown,
        }
    }

    #[test]
    fn only_the_expected_new_master_gets_the_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let control = Control::bind(dir.path()).unwrap();
        let listeners = vec![listener("http"), listener("admin")];
        let me = std::process::id();
        // Not the expected pid: refused, nothing handed.
        let path = control.path().to_path_buf();
        let asker = std::thread::spawn(move || take(&path).map(|(l, _)| l.len()));
        let t0 = std::time::Instant::now();
        while control.serve(&listeners, Some(me + 1)).unwrap().is_none() && !asker.is_finished() {
            assert!(t0.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(asker.join().unwrap().is_err());
        // A wrong request: closed.
        let mut odd = UnixStream::connect(control.path()).unwrap();
        odd.write_all(b"give me everything\n").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(control.serve(&listeners, Some(me)).unwrap().is_none());
        let mut rest = Vec::new();
        assert_eq!(odd.read_to_end(&mut rest).unwrap(), 0);
        // The expected one: every socket, named, listening on the same address.
        let path = control.path().to_path_buf();
        let asker = std::thread::spawn(move || take(&path));
        let (conn, pid) = loop {
            if let Some(got) = control.serve(&listeners, Some(me)).unwrap() {
                break got;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(pid, me);
        let (taken, mut back) = asker.join().unwrap().unwrap();
        let names: Vec<&str> = taken.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["http", "admin"]);
        assert_eq!(taken[0].shown, listeners[0].shown);
        assert_eq!(said_ready(&conn), None);
        back.write_all(b"ready\n").unwrap();
        let t0 = std::time::Instant::now();
        while said_ready(&conn).is_none() {
            assert!(t0.elapsed() < Duration::from_secs(30));
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
