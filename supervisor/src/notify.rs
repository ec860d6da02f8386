//! The master's end of the `sd_notify` protocol: one datagram socket in the master's private
//! directory (mode 0700), named to every worker by `NOTIFY_SOCKET`. The kernel stamps
//! each datagram with its sender's pid (`SO_PASSCRED`), so a message counts only for the
//! worker that sent it (a worker's own children, or anything else that reaches the socket,
//! are not believed).
//!
//! It uses nothing else of the crate.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};

/// The largest message read; longer ones are cut (systemd reads up to 4 KiB too).
const MAX_MESSAGE: usize = 4096;

/// The socket.
#[derive(Debug)]
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

/// One message: its sender and its `KEY=VALUE` lines.
#[derive(Debug)]
pub struct Message {
    /// The sender's pid, as the kernel says.
    pub pid: u32,
    /// The fields; a key given twice keeps its last value.
    pub fields: HashMap<String, String>,
}

impl NotifySocket {
    /// Binds `dir/notify`; `dir` is the master's private directory.
    pub fn bind(dir: &std::path::Path) -> std::io::Result<NotifySocket> {
        let path = dir.join("notify");
        if path.as_os_str().len() >= 108 {
            return Err(std::io::Error::other(format!(
                "{} is too long for a Unix socket (set TMPDIR to a shorter directory)",
                path.display()
            )));
        }
        let socket = UnixDatagram::bind(&path)?;
        socket.set_nonblocking(true)?;
        setsockopt(&socket.as_fd(), sockopt::PassCred, &true).map_err(std::io::Error::from)?;
        Ok(NotifySocket { socket, path })
    }

    /// What `NOTIFY_SOCKET` says.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The descriptor to poll.
    pub fn raw(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// The next message waiting, if any. Messages without credentials or that are not text
    /// are skipped.
    pub fn receive(&self) -> Option<Message> {
        loop {
            let mut buf = [0u8; MAX_MESSAGE];
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let (n, pid) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                let msg = match recvmsg::<()>(
                    self.socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Ok(m) => m,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return None,
                };
                let pid = msg.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                        _ => None,
                    })
                });
                (msg.bytes, pid)
            };
            let Some(pid) = pid.filter(|p| *p > 0) else {
                continue;
            };
            let Ok(text) = std::str::from_utf8(&buf[..n]) else {
                continue;
            };
            let fields = text
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            return Some(Message {
                pid: pid as u32,
                fields,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_senders_pid_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let n = NotifySocket::bind(dir.path()).unwrap();
        assert!(n.receive().is_none(), "nothing waiting");
        let tx = UnixDatagram::unbound().unwrap();
        tx.send_to(&[0xff, 0xfe, b'\n'], n.path()).unwrap();
        tx.send_to(b"READY=1\nSTATUS=a=b\nno equals sign", n.path())
            .unwrap();
        let m = n.receive().expect("the text message");
        assert_eq!(m.pid, std::process::id());
        assert_eq!(m.fields["READY"], "1");
        assert_eq!(m.fields["STATUS"], "a=b");
        assert_eq!(m.fields.len(), 2);
        assert!(n.receive().is_none());
        // An oversized datagram is cut, not a crash.
        tx.send_to(&vec![b'A'; 60_000], n.path()).unwrap();
        assert!(n.receive().is_some_and(|m| m.fields.is_empty()));
    }
}
