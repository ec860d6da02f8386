//! HTTP/1.1 on the wire, shared by the server and the client: a buffered connection
//! ([`Wire`]), heads (`head.rs`, parsed by httparse) and bodies (`body.rs`: lengths and the
//! chunked coding). Nothing here knows whether it serves or asks.

pub(crate) mod body;
pub(crate) mod head;

use std::io::{self, Read, Write};
use std::time::Duration;

use greenhub::net::TcpStream;

/// A connection with a read buffer (pipelined requests wait in it) and a write buffer (the
/// answers to them go out together).
pub(crate) struct Wire<S> {
    pub io: S,
    /// The read buffer: it starts small and grows up to `max` when what is buffered does
    /// not fit (a large head).
    inb: Vec<u8>,
    max: usize,
    start: usize,
    end: usize,
    pub out: Vec<u8>,
}

impl<S: Read + Write> Wire<S> {
    /// A connection over `io` whose read buffer holds `initial` bytes, and up to `max`.
    pub(crate) fn new(io: S, initial: usize, max: usize) -> Wire<S> {
        Wire {
            io,
            inb: vec![0; initial.min(max)],
            max,
            start: 0,
            end: 0,
            out: Vec::with_capacity(1024),
        }
    }

    /// The bytes read and not consumed yet.
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.inb[self.start..self.end]
    }

    /// Marks `n` buffered bytes consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Whether the buffer is full: what is buffered is all that can be.
    pub(crate) fn is_full(&self) -> bool {
        self.end - self.start >= self.max
    }

    /// Reads more from the connection into the buffer; `Ok(0)` at the end of the stream (or
    /// when the buffer is full: see [`Wire::is_full`]).
    pub(crate) fn fill(&mut self) -> io::Result<usize> {
        if self.end == self.inb.len() && self.start > 0 {
            self.inb.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.inb.len() {
            if self.inb.len() >= self.max {
                return Ok(0);
            }
            let grown = (self.inb.len() * 2).max(1024).min(self.max);
            self.inb.resize(grown, 0);
        }
        loop {
            match self.io.read(&mut self.inb[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Copies buffered bytes into `buf`, or reads straight into it when nothing is buffered
    /// (a large body skips the buffer).
    pub(crate) fn read_into(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if buf.len() >= self.inb.len() {
                return self.io.read(buf);
            }
            if self.fill()? == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.inb[self.start..self.start + n]);
        self.consume(n);
        Ok(n)
    }

    /// The connection, and what was read from it and not consumed.
    pub(crate) fn into_parts(self) -> (S, Vec<u8>) {
        let early = self.inb[self.start..self.end].to_vec();
        (self.io, early)
    }

    /// Writes out the write buffer.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out)?;
            self.out.clear();
        }
        self.io.flush()
    }
}

/// A connection HTTP is spoken over: plain TCP or TLS, either side.
pub(crate) trait Stream: Read + Write + Send + 'static {
    /// Ends the sending side (TLS: with its close_notify first).
    fn close_write(&mut self);

    /// Bounds each wait of a read or a write on the socket (`None`: no bound of its own).
    /// Cheaper than a deadline scope: nothing is set up unless the operation waits.
    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>);

    /// Whether the socket is readable now, which an idle kept connection should not be: the
    /// peer closed it (or sent something unasked).
    fn peer_closed(&self) -> bool;
}

/// Whether `fd` is readable (or hung up, or in error) right now.
fn readable_now(fd: std::os::fd::RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; a zero timeout never waits.
    unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
}

impl Stream for TcpStream {
    fn close_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) {
        let _ = self.set_read_timeout(read.filter(|d| !d.is_zero()));
        let _ = self.set_write_timeout(write.filter(|d| !d.is_zero()));
    }

    fn peer_closed(&self) -> bool {
        use std::os::fd::AsRawFd;
        readable_now(self.as_raw_fd())
    }
}

/// Either side of TLS over TCP.
impl<C, D> Stream for greenhub_tls::TlsStream<C, TcpStream>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = greenhub_tls::rustls::ConnectionCommon<D>>,
    C: Send + 'static,
    D: greenhub_tls::rustls::SideData,
{
    fn close_write(&mut self) {
        let _ = self.shutdown();
        let _ = self.get_ref().shutdown(std::net::Shutdown::Write);
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) {
        self.get_ref().set_timeouts(read, write);
    }

    fn peer_closed(&self) -> bool {
        self.get_ref().peer_closed()
    }
}

impl Stream for Box<dyn Stream> {
    fn close_write(&mut self) {
        (**self).close_write();
    }

    fn set_timeouts(&self, read: Option<Duration>, write: Option<Duration>) {
        (**self).set_timeouts(read, write);
    }

    fn peer_closed(&self) -> bool {
        (**self).peer_closed()
    }
}

/// A connection handed over by a `101 Switching Protocols` response (see
/// `Payload::Upgrade`): what the client sent after its request
/// comes first, then the socket.
pub struct Upgraded {
    pub(crate) io: Box<dyn Stream>,
    pub(crate) early: Vec<u8>,
    /// Each read within this (then `TimedOut`).
    pub(crate) read_timeout: Option<std::time::Duration>,
    /// Each write within this (then `TimedOut`).
    pub(crate) write_timeout: Option<std::time::Duration>,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("early", &self.early.len())
            .finish()
    }
}

impl Read for Upgraded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.early.is_empty() {
            let n = buf.len().min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return Ok(n);
        }
        match self.read_timeout {
            Some(t) => greenhub::with_timeout(t, || self.io.read(buf)),
            None => self.io.read(buf),
        }
    }
}

impl Write for Upgraded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.write_timeout {
            Some(t) => greenhub::with_timeout(t, || self.io.write(buf)),
            None => self.io.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.io.flush()
    }
}
