//! Descriptors green threads wait on: registration with the hub (`may`'s poller), the retry
//! loop every cooperative socket operation runs, and [`trampoline`] for any other descriptor.
//!
//! An operation runs non-blocking; when it would block, the green thread waits for readiness
//! (edge-triggered, so it simply retries after any event) and tries again. Each wait is bounded
//! by the enclosing deadline scope, shows in the registry as a wait on the descriptor, and ends
//! at once on a kill. On a plain OS thread the same calls block the thread in `poll(2)`.
//!
//! One registration wakes one waiting green thread: two green threads that must wait on the
//! same socket at once (a reader and a writer) each use their own handle
//! ([`TcpStream::try_clone`](crate::net::TcpStream::try_clone)), as with `may`'s sockets.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use may::io::CoIo;

use crate::core::alarm::IoAlarm;
use crate::core::report::{self, Throttle};
use crate::core::timeout::{IsTimeout, TimedOut};
use crate::core::wait::wait_io;
use crate::green::time::{deadline, sleep};
use crate::start;
use greenhub_snapshot::{Interest, WaitOn};

/// A descriptor registered with the hub: non-blocking, its readiness reported by the poller.
///
/// The registration borrows the descriptor and is declared (so dropped) before the owner:
/// it must leave the poller while the descriptor is still open. `CoIo` owning the descriptor
/// would close it first and deregister its number afterwards, and by then another thread may
/// have opened and registered a new socket under that number, whose readiness would never
/// be reported again (a green thread waiting forever on data that has arrived).
pub(crate) struct Registered<T: AsRawFd> {
    io: CoIo<Borrowed>,
    /// The deadline alarm of its timed waits, made on the first one.
    alarm: OnceLock<Arc<IoAlarm>>,
    /// The last read of this stream took everything that had arrived (see
    /// [`Registered::read`]).
    drained: AtomicBool,
    /// A wait on it saw the peer's end of the stream, a hang-up or an error.
    closed: AtomicBool,
    inner: T,
}

impl<T: AsRawFd> std::fmt::Debug for Registered<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registered")
            .field("fd", &self.io.as_raw_fd())
            .finish()
    }
}

impl<T: AsRawFd> Registered<T> {
    pub(crate) fn new(inner: T) -> io::Result<Registered<T>> {
        // Registering starts `may`'s scheduler: greenhub's configuration must come first.
        start::runtime();
        let io = CoIo::new(Borrowed(inner.as_raw_fd())).map_err(io::Error::from)?;
        Ok(Registered {
            io,
            alarm: OnceLock::new(),
            drained: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            inner,
        })
    }

    pub(crate) fn get(&self) -> &T {
        &self.inner
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.io.as_raw_fd()
    }

    /// Runs `op` until it does not report `WouldBlock`, waiting for readiness in between,
    /// bounded by the enclosing deadline scope (then `ErrorKind::TimedOut`).
    /// `accept` by `op`, as [`Registered::io`], except that a lack of descriptors or memory
    /// (EMFILE, ENFILE, ENOBUFS, ENOMEM) is waited out rather than returned: the caller pauses
    /// (5 ms, doubling to 100 ms) and tries again, so an accept loop neither spins nor fails,
    /// and takes connections again as soon as descriptors are free. It is reported once a
    /// minute. A connection the client aborted before it was taken is skipped. The wait stays
    /// bounded by the deadline scope and ends on a kill.
    pub(crate) fn accept<R>(&self, mut op: impl FnMut(&T) -> io::Result<R>) -> io::Result<R> {
        static REPORTED: Throttle = Throttle::new();
        let mut pause = Duration::from_millis(5);
        loop {
            match self.io(Interest::Read, None, &mut op) {
                Err(e) if out_of_resources(&e) => {
                    if REPORTED.allow(Duration::from_secs(60)) {
                        report::warn(&format!(
                            "greenhub: accept on descriptor {} failed: {e}; waiting for \
                             descriptors to free up (raise the open-files limit, `ulimit -n`, \
                             if this goes on)",
                            self.fd()
                        ));
                    }
                    sleep(pause).map_err(|_| timed_out())?;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => {}
                other => return other,
            }
        }
    }

    pub(crate) fn io<R>(
        &self,
        interest: Interest,
        timeout: Option<Duration>,
        op: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        self.io_as(interest, timeout, None, op)
    }

    /// A read from a TCP stream: `op` reads at most `len` bytes. [`Registered::io`], except
    /// that a read of a green thread that returned less than it asked for marks the stream
    /// drained, and the next read then waits for readiness before it asks the kernel, unless
    /// an event came since. A TCP read returns less than asked only once the receive queue
    /// is empty, and whatever arrives later raises an event (the poller is edge-triggered and
    /// records every event in the descriptor's flag, waited on or not), so the `recv` that
    /// would report `WouldBlock` is skipped: a connection that answers requests makes one
    /// `recv` per request instead of two. The end of the stream does not raise an event of
    /// its own once reported: after a wait saw it (or a hang-up, or an error) every read asks
    /// the kernel. After the wait the read is tried as usual, so a wait that ends for another
    /// reason (a deadline, a write event) costs one `recv`; past its deadline a read is always
    /// tried. Not for datagrams (a short one leaves others queued), nor Unix streams (a read
    /// stops short at a message with credentials or descriptors).
    pub(crate) fn read(
        &self,
        len: usize,
        timeout: Option<Duration>,
        mut op: impl FnMut(&T) -> io::Result<usize>,
    ) -> io::Result<usize> {
        let mut limit = Limit::new(timeout);
        if !may::coroutine::is_coroutine() {
            return self.retry(Interest::Read, limit, None, op);
        }
        // A load, and a store only when set: most reads find the flag clear, and an exchange
        // would cost a locked instruction on every one.
        let drained = self.drained.load(Ordering::Relaxed);
        if drained {
            self.drained.store(false, Ordering::Relaxed);
        }
        if drained
            && !self.closed.load(Ordering::Relaxed)
            && !self.event_since_wait()
            && let Some(until) = limit.left()
        {
            self.wait(Interest::Read, until, None);
        }
        self.retry(Interest::Read, limit, None, |inner| {
            let read = op(inner);
            if read.as_ref().is_ok_and(|&n| n > 0 && n < len) {
                self.drained.store(true, Ordering::Relaxed);
            }
            read
        })
    }

    /// Whether the poller reported an event for the descriptor since the last wait on it
    /// ended (each wait clears the flag as it returns).
    fn event_since_wait(&self) -> bool {
        use may::io::AsIoData;
        self.io.as_io_data().io_flag.load(Ordering::Acquire) != 0
    }

    /// A green thread's wait for readiness, which keeps in `closed` whether the events it
    /// collected include the end of the stream, a hang-up or an error.
    fn wait(&self, interest: Interest, deadline: Option<Instant>, on: Option<WaitOn>) {
        let events = wait_io(&self.io, &self.alarm, interest, deadline, on);
        let ends = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as usize;
        if events & ends != 0 {
            self.closed.store(true, Ordering::Relaxed);
        }
    }

    /// [`Registered::io`], the wait shown in the registry as a wait `on` an object (a child
    /// process, say) rather than on the descriptor.
    pub(crate) fn io_as<R>(
        &self,
        interest: Interest,
        timeout: Option<Duration>,
        on: Option<WaitOn>,
        op: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        self.retry(interest, Limit::new(timeout), on, op)
    }

    /// Runs `op` until it does not report `WouldBlock`, waiting for readiness in between, or
    /// until `limit` passes (then `ErrorKind::TimedOut`, though the operation is always tried
    /// once).
    fn retry<R>(
        &self,
        interest: Interest,
        mut limit: Limit,
        on: Option<WaitOn>,
        mut op: impl FnMut(&T) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match op(&self.inner) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => return other,
            }
            let Some(until) = limit.left() else {
                return Err(timed_out());
            };
            if may::coroutine::is_coroutine() {
                self.wait(interest, until, on);
            } else {
                poll(self.fd(), interest, until)?;
            }
        }
    }
}

/// When a socket operation gives up: the enclosing scope's deadline, and the socket's own
/// timeout, which counts from the operation's first wait. An operation that does not wait
/// (the common case: the data or the buffer space is there) neither reads the clock nor
/// looks at its green thread's context. Moved, not copied, into each step of one operation:
/// a copy would resolve the timeout again.
struct Limit {
    /// The deadline known so far: the scope's once looked up, and once resolved the
    /// timeout's too.
    until: Option<Instant>,
    /// The socket's timeout, until the first wait folds it into `until`.
    timeout: Option<Duration>,
    /// Whether `until` holds the scope's deadline yet (looked up at the first wait).
    scoped: bool,
}

impl Limit {
    fn new(timeout: Option<Duration>) -> Limit {
        Limit {
            until: None,
            timeout,
            scoped: false,
        }
    }

    /// Before a wait: `None` if the limit has passed, else the deadline the wait keeps to
    /// (`Some(None)`: none). Reads the clock only when there is a limit.
    fn left(&mut self) -> Option<Option<Instant>> {
        if !self.scoped {
            self.scoped = true;
            self.until = deadline();
        }
        if self.until.is_none() && self.timeout.is_none() {
            return Some(None);
        }
        let now = Instant::now();
        if let Some(timeout) = self.timeout.take() {
            self.until = earliest_of(self.until, now.checked_add(timeout));
        }
        match self.until {
            Some(d) if now >= d => None,
            until => Some(until),
        }
    }
}

/// The earlier of two optional deadlines (none: no limit).
fn earliest_of(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The earlier of a scope's deadline and a timeout from now.
pub(crate) fn earliest(scope: Option<Instant>, timeout: Option<Duration>) -> Option<Instant> {
    earliest_of(scope, timeout.and_then(|t| Instant::now().checked_add(t)))
}

/// Errors that retrying at once cannot cure: the process or system is out of descriptors or
/// memory until something is closed.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The error a socket operation returns when the enclosing deadline passes.
pub(crate) fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, TimedOut)
}

/// Blocks the OS thread until `fd` is ready for `interest` or `deadline` passes (then
/// `Ok(false)`).
fn poll(fd: RawFd, interest: Interest, deadline: Option<Instant>) -> io::Result<bool> {
    loop {
        let timeout_ms = match deadline {
            None => -1,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                // Rounded up: a poll that returns just before the deadline would spin.
                left.as_millis().saturating_add(1).min(i32::MAX as u128) as i32
            }
        };
        match poll_once(fd, interest, timeout_ms) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(false) if deadline.is_none() => {}
            other => return other,
        }
    }
}

/// One `poll(2)`: whether `fd` is ready for `interest` (or hung up, or in error) within
/// `timeout_ms` (0: now; -1: no limit).
fn poll_once(fd: RawFd, interest: Interest, timeout_ms: i32) -> io::Result<bool> {
    let events = match interest {
        Interest::Read => libc::POLLIN,
        Interest::Write => libc::POLLOUT,
        Interest::ReadWrite => libc::POLLIN | libc::POLLOUT,
    };
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n > 0 && pfd.revents & libc::POLLNVAL != 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    Ok(n > 0)
}

/// A raw descriptor borrowed for the length of a [`trampoline`] call.
struct Borrowed(RawFd);

impl AsRawFd for Borrowed {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

/// Waits cooperatively until `fd` is readable, writable or either (eventlet's `trampoline`),
/// for at most `timeout` and never past the enclosing deadline scope. Use it to make any other
/// descriptor (a pipe, a device, a driver's socket) cooperative: do the operation non-blocking
/// and call this when it would block. The wait shows in the registry as on `fd`.
///
/// The descriptor is registered with the hub for the length of the call, and left with the
/// blocking mode it had. Hang-up and errors count as ready: the next operation reports them.
///
/// ```
/// use std::io::Write;
/// use std::os::fd::AsRawFd;
/// use std::os::unix::net::UnixStream;
/// use greenhub::ext::Interest;
///
/// let (a, mut b) = UnixStream::pair().unwrap();
/// let fd = a.as_raw_fd();
/// let t = greenhub::spawn(move || greenhub::net::trampoline(fd, Interest::Read, None));
/// b.write_all(b"x").unwrap();
/// assert!(t.wait().unwrap().is_ok());
/// ```
pub fn trampoline(
    fd: RawFd,
    interest: Interest,
    timeout: Option<Duration>,
) -> Result<(), TrampolineError> {
    let deadline = earliest(deadline(), timeout);
    // SAFETY: F_GETFL on a descriptor the caller owns has no side effect.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(TrampolineError::Io(io::Error::last_os_error()));
    }
    let ready = if may::coroutine::is_coroutine() {
        let registered = Registered::new(Borrowed(fd)).map_err(TrampolineError::Io)?;
        let ready = loop {
            match poll_once(fd, interest, 0) {
                Ok(true) => break Ok(true),
                Ok(false) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break Ok(false);
            }
            registered.wait(interest, deadline, None);
        };
        drop(registered);
        ready
    } else {
        poll(fd, interest, deadline)
    };
    // SAFETY: restores the flags read above on the caller's descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
    match ready {
        Ok(true) => Ok(()),
        Ok(false) => Err(TrampolineError::TimedOut),
        Err(e) => Err(TrampolineError::Io(e)),
    }
}

/// Why [`trampoline`] returned without the descriptor being ready.
#[derive(Debug, thiserror::Error)]
pub enum TrampolineError {
    /// The timeout, or the enclosing deadline scope, passed first.
    #[error("timed out waiting for the descriptor")]
    TimedOut,
    /// The descriptor could not be watched (closed, or not pollable).
    #[error("cannot wait on the descriptor: {0}")]
    Io(#[source] io::Error),
}

impl From<TimedOut> for TrampolineError {
    fn from(_: TimedOut) -> TrampolineError {
        TrampolineError::TimedOut
    }
}

impl IsTimeout for TrampolineError {
    fn is_timeout(&self) -> bool {
        match self {
            TrampolineError::TimedOut => true,
            TrampolineError::Io(e) => e.is_timeout(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Whether any of the process's epoll instances watches `fd` (from `/proc/self/fdinfo`).
    fn watched(fd: RawFd) -> bool {
        let mut found = false;
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            let is_epoll = std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().contains("eventpoll"));
            if !is_epoll {
                continue;
            }
            let name = entry.file_name();
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{}", name.to_string_lossy()))
                    .unwrap_or_default();
            found |= info
                .lines()
                .any(|l| l.split_whitespace().nth(1) == Some(&fd.to_string()));
        }
        found
    }

    /// A socket that notes, as it is closed, whether the poller still watched it.
    struct Probe {
        socket: std::net::UdpSocket,
        watched_at_close: Arc<AtomicBool>,
    }

    impl AsRawFd for Probe {
        fn as_raw_fd(&self) -> RawFd {
            self.socket.as_raw_fd()
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.watched_at_close
                .store(watched(self.socket.as_raw_fd()), Ordering::SeqCst);
        }
    }

    /// The descriptor leaves the poller before it is closed: afterwards its number may belong
    /// to a socket another thread has just registered.
    #[test]
    fn a_descriptor_leaves_the_poller_before_it_is_closed() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = socket.as_raw_fd();
        let watched_at_close = Arc::new(AtomicBool::new(true));
        let registered = Registered::new(Probe {
            socket,
            watched_at_close: watched_at_close.clone(),
        })
        .unwrap();
        assert!(watched(fd), "a registered descriptor is in the poller");
        drop(registered);
        assert!(
            !watched_at_close.load(Ordering::SeqCst),
            "the descriptor was still in the poller when it was closed"
        );
    }
}
