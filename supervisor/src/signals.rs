//! The master's signals: each handled one sets a flag and writes a byte to a socket the
//! master's loop polls (signal-hook's flag and pipe actions; nothing else runs in signal
//! context). The loop takes the flags when it wakes.
//!
//! It uses nothing else of the crate.

use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The signals the master acts on.
pub const HANDLED: [i32; 8] = [
    libc::SIGHUP,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR2,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGCHLD,
];

/// The flags and the wake-up socket.
pub struct Signals {
    flags: Vec<(i32, Arc<AtomicBool>)>,
    wake: UnixStream,
    _wake_write: UnixStream,
}

impl Signals {
    /// Installs the actions.
    pub fn install() -> std::io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        write.set_nonblocking(true)?;
        let mut flags = Vec::new();
        for sig in HANDLED {
            let flag = Arc::new(AtomicBool::new(false));
            signal_hook::flag::register(sig, flag.clone())?;
            signal_hook::low_level::pipe::register_raw(sig, write.as_raw_fd())?;
            flags.push((sig, flag));
        }
        Ok(Signals {
            flags,
            wake: read,
            _wake_write: write,
        })
    }

    /// The descriptor to poll.
    pub fn raw(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The signals that came since the last call, in the order of [`HANDLED`].
    pub fn take(&mut self) -> Vec<i32> {
        let mut sink = [0u8; 256];
        while matches!((&self.wake).read(&mut sink), Ok(n) if n > 0) {}
        self.flags
            .iter()
            .filter(|(_, f)| f.swap(false, Ordering::SeqCst))
            .map(|(s, _)| *s)
            .collect()
    }
}
