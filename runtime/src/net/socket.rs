//! The socket types: TCP, UDP and Unix, each a cooperative wrapper over `may`'s registration.

use std::any::Any;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::net::fd::{Registered, timed_out};
use crate::sync::event::{Event, EventError};
use greenhub_snapshot::Interest;

/// Resolves `addr` without blocking a worker: literal addresses at once, host names on a
/// helper OS thread while the green thread waits (bounded by the deadline scope).
fn resolve<A: ToSocketAddrs + Send + 'static>(addr: A) -> io::Result<Vec<SocketAddr>> {
    let any = &addr as &dyn Any;
    if let Some(a) = any.downcast_ref::<SocketAddr>() {
        return Ok(vec![*a]);
    }
    let text = any
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| any.downcast_ref::<&str>().copied());
    if let Some(Ok(a)) = text.map(str::parse::<SocketAddr>) {
        return Ok(vec![a]);
    }
    if !may::coroutine::is_coroutine() {
        return addr.to_socket_addrs().map(Iterator::collect);
    }
    let answer: Event<Vec<SocketAddr>, String> = Event::new();
    let reply = answer.clone();
    std::thread::Builder::new()
        .name("greenhub-resolve".into())
        .spawn(move || {
            // A fresh event: setting it cannot fail.
            match addr.to_socket_addrs() {
                Ok(addrs) => drop(reply.set(addrs.collect())),
                Err(e) => drop(reply.set_error(e.to_string())),
            }
        })?;
    match answer.wait() {
        Ok(addrs) => Ok(addrs),
        Err(EventError::Failed(e)) => {
            Err(io::Error::other(format!("cannot resolve the address: {e}")))
        }
        Err(_) => Err(timed_out()),
    }
}

/// A timeout in an atomic (nanoseconds, 0 for none), so that `&TcpStream` can read and write.
#[derive(Debug, Default)]
struct Timeout(AtomicU64);

impl Timeout {
    fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    fn set(&self, d: Option<Duration>) -> io::Result<()> {
        match d {
            Some(d) if d.is_zero() => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a zero timeout is not allowed (use None for no timeout)",
            )),
            d => {
                let n = d.map_or(0, |d| d.as_nanos().min(u64::MAX as u128) as u64);
                self.0.store(n, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

/// How to listen (eventlet's `listen(addr, backlog, reuse_addr, reuse_port)`): the length of
/// the accept queue, `SO_REUSEADDR` and `SO_REUSEPORT`.
///
/// ```
/// use greenhub::net::Listen;
///
/// // Two listeners on one port: the kernel spreads the connections over them.
/// let a = Listen::new().reuse_port(true).bind("127.0.0.1:0").unwrap();
/// let port = a.local_addr().unwrap().port();
/// let b = Listen::new().reuse_port(true).bind(("127.0.0.1", port)).unwrap();
/// assert_eq!(b.local_addr().unwrap().port(), port);
/// ```
#[derive(Clone, Debug)]
pub struct Listen {
    backlog: u32,
    reuse_addr: bool,
    reuse_port: bool,
}

impl Default for Listen {
    fn default() -> Listen {
        Listen::new()
    }
}

impl Listen {
    /// An accept queue of 1,024 connections (as tokio; the standard library's 128 drops the
    /// SYNs of a burst past it, and those clients wait a second to retry), `SO_REUSEADDR` on
    /// (a restarted server can bind while old connections linger in `TIME_WAIT`), and
    /// `SO_REUSEPORT` off.
    pub fn new() -> Listen {
        Listen {
            backlog: 1024,
            reuse_addr: true,
            reuse_port: false,
        }
    }

    /// How many connections the kernel queues before `accept` takes them; it caps the
    /// number at `net.core.somaxconn`.
    pub fn backlog(mut self, backlog: u32) -> Listen {
        self.backlog = backlog;
        self
    }

    /// Whether to set `SO_REUSEADDR`.
    pub fn reuse_addr(mut self, on: bool) -> Listen {
        self.reuse_addr = on;
        self
    }

    /// Whether to set `SO_REUSEPORT`: several listeners (in one process or several) bound
    /// to the same address, the kernel spreading new connections over them. Each must set it.
    pub fn reuse_port(mut self, on: bool) -> Listen {
        self.reuse_port = on;
        self
    }

    /// Binds to the first address `addr` resolves to that accepts the bind (host names are
    /// resolved off the hub) and listens.
    pub fn bind<A: ToSocketAddrs + Send + 'static>(&self, addr: A) -> io::Result<TcpListener> {
        let mut last = io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        );
        for a in resolve(addr)? {
            match self.bind_one(a) {
                Ok(l) => return TcpListener::from_std(l),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn bind_one(&self, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(self.reuse_addr)?;
        socket.set_reuse_port(self.reuse_port)?;
        socket.bind(&addr.into())?;
        socket.listen(self.backlog.min(i32::MAX as u32) as i32)?;
        Ok(socket.into())
    }
}

/// A TCP listener whose `accept` parks the green thread.
#[derive(Debug)]
pub struct TcpListener {
    inner: Registered<std::net::TcpListener>,
}

impl TcpListener {
    /// Binds to `addr` with [`Listen`]'s defaults: an accept queue of 1,024 connections and
    /// `SO_REUSEADDR`. Port 0 picks a free port: see [`TcpListener::local_addr`].
    pub fn bind<A: ToSocketAddrs + Send + 'static>(addr: A) -> io::Result<TcpListener> {
        Listen::new().bind(addr)
    }

    /// Makes a standard listener cooperative (it is switched to non-blocking mode).
    pub fn from_std(listener: std::net::TcpListener) -> io::Result<TcpListener> {
        Ok(TcpListener {
            inner: Registered::new(listener)?,
        })
    }

    /// Waits for a connection.
    ///
    /// Out of descriptors (EMFILE, ENFILE) or memory, it does not fail: it waits, trying
    /// again every few milliseconds (at most every 100 ms), and says so once a minute, so an
    /// accept loop neither spins nor stops, and takes connections again as soon as
    /// descriptors are free. The wait is bounded by the deadline scope.
    pub fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.inner.accept(|l| l.accept())?;
        Ok((TcpStream::from_std(stream)?, peer))
    }

    /// The connections, as they come ([`TcpListener::accept`] in a loop: a lack of
    /// descriptors is waited out, not returned).
    pub fn incoming(&self) -> impl Iterator<Item = io::Result<TcpStream>> + '_ {
        std::iter::repeat_with(move || self.accept().map(|(s, _)| s))
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get().local_addr()
    }
}

impl AsRawFd for TcpListener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}

impl AsFd for TcpListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get().as_fd()
    }
}

/// A TCP connection whose reads and writes park the green thread.
///
/// One handle serves one waiting green thread at a time: to read in one green thread and
/// write in another, give the writer its own handle with [`TcpStream::try_clone`].
pub struct TcpStream {
    inner: Registered<std::net::TcpStream>,
    read_timeout: Timeout,
    write_timeout: Timeout,
}

impl std::fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpStream")
            .field("fd", &self.inner.fd())
            .field("local", &self.local_addr().ok())
            .field("peer", &self.peer_addr().ok())
            .finish()
    }
}

impl TcpStream {
    /// Connects to `addr`, trying each address it resolves to in turn (eventlet's
    /// `connect`). Host names are resolved off the hub. The wait for the connection is bounded
    /// by the enclosing deadline scope.
    pub fn connect<A: ToSocketAddrs + Send + 'static>(addr: A) -> io::Result<TcpStream> {
        let mut last = io::Error::new(
            io::ErrorKind::InvalidInput,
            "the address resolved to nothing",
        );
        for a in resolve(addr)? {
            match TcpStream::connect_one(a) {
                Ok(s) => return Ok(s),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn connect_one(addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM.nonblocking().cloexec(),
            None,
        )?;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            // A non-blocking connect is under way: the socket turns writable when it ends.
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let std_stream: std::net::TcpStream = socket.into();
        let stream = TcpStream::from_std(std_stream)?;
        // Writable means connected, or failed: SO_ERROR tells which.
        stream
            .inner
            .io(Interest::Write, None, |s| match s.take_error()? {
                Some(e) => Err(e),
                None => match s.peer_addr() {
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        Err(io::ErrorKind::WouldBlock.into())
                    }
                    Err(e) => Err(e),
                },
            })?;
        Ok(stream)
    }

    /// Makes a standard stream cooperative (it is switched to non-blocking mode).
    pub fn from_std(stream: std::net::TcpStream) -> io::Result<TcpStream> {
        Ok(TcpStream {
            inner: Registered::new(stream)?,
            read_timeout: Timeout::default(),
            write_timeout: Timeout::default(),
        })
    }

    /// Another handle to the same connection (a duplicated descriptor), for a second green
    /// thread; timeouts are not shared.
    pub fn try_clone(&self) -> io::Result<TcpStream> {
        TcpStream::from_std(self.inner.get().try_clone()?)
    }

    /// Bounds each read (on top of the deadline scope); `None` for no bound. Zero is refused.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(timeout)
    }

    /// Bounds each write (on top of the deadline scope); `None` for no bound. Zero is refused.
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.write_timeout.set(timeout)
    }

    /// The read timeout.
    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout.get()
    }

    /// The write timeout.
    pub fn write_timeout(&self) -> Option<Duration> {
        self.write_timeout.get()
    }

    /// Shuts down reading, writing or both; a half-closed connection can still be used in
    /// the other direction.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.get().shutdown(how)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get().peer_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get().local_addr()
    }

    /// Sets `TCP_NODELAY` (no Nagle delay on small writes).
    pub fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.inner.get().set_nodelay(nodelay)
    }

    /// Reads what is there without consuming it, waiting for something if nothing is.
    pub fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .io(Interest::Read, self.read_timeout.get(), |s| s.peek(buf))
    }
}

impl Read for &TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.inner.get();
        self.inner
            .read(buf.len(), self.read_timeout.get(), |_| s.read(buf))
    }
}

impl Write for &TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.inner.get();
        self.inner
            .io(Interest::Write, self.write_timeout.get(), |_| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for TcpStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for TcpStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}

impl AsFd for TcpStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get().as_fd()
    }
}

/// A UDP socket whose sends and receives park the green thread (gevent's `DatagramServer`
/// is a loop over [`UdpSocket::recv_from`]).
///
/// ```
/// use greenhub::net::UdpSocket;
///
/// let a = UdpSocket::bind("127.0.0.1:0").unwrap();
/// let b = UdpSocket::bind("127.0.0.1:0").unwrap();
/// let to = b.local_addr().unwrap();
/// let got = greenhub::spawn(move || {
///     let mut buf = [0; 16];
///     let (n, _from) = b.recv_from(&mut buf).unwrap();
///     buf[..n].to_vec()
/// });
/// a.send_to(b"datagram", to).unwrap();
/// assert_eq!(got.wait().unwrap(), b"datagram");
/// ```
#[derive(Debug)]
pub struct UdpSocket {
    inner: Registered<std::net::UdpSocket>,
    read_timeout: Timeout,
}

impl UdpSocket {
    /// Binds to `addr` (port 0 picks a free one).
    pub fn bind<A: ToSocketAddrs + Send + 'static>(addr: A) -> io::Result<UdpSocket> {
        let addrs = resolve(addr)?;
        UdpSocket::from_std(std::net::UdpSocket::bind(&addrs[..])?)
    }

    /// Makes a standard socket cooperative (it is switched to non-blocking mode).
    pub fn from_std(socket: std::net::UdpSocket) -> io::Result<UdpSocket> {
        Ok(UdpSocket {
            inner: Registered::new(socket)?,
            read_timeout: Timeout::default(),
        })
    }

    /// Sends a datagram to `addr`.
    pub fn send_to(&self, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
        self.inner
            .io(Interest::Write, None, |s| s.send_to(buf, addr))
    }

    /// Waits for a datagram; returns its length and sender.
    pub fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        self.inner.io(Interest::Read, self.read_timeout.get(), |s| {
            s.recv_from(buf)
        })
    }

    /// Fixes the peer for [`UdpSocket::send`] and [`UdpSocket::recv`].
    pub fn connect(&self, addr: SocketAddr) -> io::Result<()> {
        self.inner.get().connect(addr)
    }

    /// Sends to the connected peer.
    pub fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.inner.io(Interest::Write, None, |s| s.send(buf))
    }

    /// Waits for a datagram from the connected peer.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .io(Interest::Read, self.read_timeout.get(), |s| s.recv(buf))
    }

    /// Bounds each receive (on top of the deadline scope); `None` for no bound.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.read_timeout.set(timeout)
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.get().local_addr()
    }

    /// Another handle to the same socket, for a second green thread.
    pub fn try_clone(&self) -> io::Result<UdpSocket> {
        UdpSocket::from_std(self.inner.get().try_clone()?)
    }
}

impl AsRawFd for UdpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}

impl AsFd for UdpSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get().as_fd()
    }
}

/// A Unix stream socket whose reads and writes park the green thread.
///
/// ```
/// use std::io::{Read, Write};
/// use greenhub::net::UnixStream;
///
/// let (a, b) = UnixStream::pair().unwrap();
/// let t = greenhub::spawn(move || {
///     let mut got = String::new();
///     (&b).read_to_string(&mut got).unwrap();
///     got
/// });
/// (&a).write_all(b"over a socketpair").unwrap();
/// drop(a);
/// assert_eq!(t.wait().unwrap(), "over a socketpair");
/// ```
#[derive(Debug)]
pub struct UnixStream {
    inner: Registered<std::os::unix::net::UnixStream>,
}

impl UnixStream {
    /// Connects to the socket at `path` (local: the connect does not wait on the network).
    pub fn connect(path: impl AsRef<std::path::Path>) -> io::Result<UnixStream> {
        UnixStream::from_std(std::os::unix::net::UnixStream::connect(path)?)
    }

    /// A connected pair.
    pub fn pair() -> io::Result<(UnixStream, UnixStream)> {
        let (a, b) = std::os::unix::net::UnixStream::pair()?;
        Ok((UnixStream::from_std(a)?, UnixStream::from_std(b)?))
    }

    /// Makes a standard stream cooperative (it is switched to non-blocking mode).
    pub fn from_std(stream: std::os::unix::net::UnixStream) -> io::Result<UnixStream> {
        Ok(UnixStream {
            inner: Registered::new(stream)?,
        })
    }

    /// Shuts down reading, writing or both.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.inner.get().shutdown(how)
    }

    /// Another handle to the same connection, for a second green thread.
    pub fn try_clone(&self) -> io::Result<UnixStream> {
        UnixStream::from_std(self.inner.get().try_clone()?)
    }
}

impl Read for &UnixStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.inner.get();
        self.inner.io(Interest::Read, None, |_| s.read(buf))
    }
}

impl Write for &UnixStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.inner.get();
        self.inner.io(Interest::Write, None, |_| s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for UnixStream {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd()
    }
}

impl AsFd for UnixStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get().as_fd()
    }
}

/// A Unix socket listener whose `accept` parks the green thread.
#[derive(Debug)]
pub struct UnixListener {
    inner: Registered<std::os::unix::net::UnixListener>,
}

impl AsFd for UnixListener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.get().as_fd()
    }
}

impl UnixListener {
    /// Binds to `path` (which must not exist).
    pub fn bind(path: impl AsRef<std::path::Path>) -> io::Result<UnixListener> {
        Ok(UnixListener {
            inner: Registered::new(std::os::unix::net::UnixListener::bind(path)?)?,
        })
    }

    /// Makes a standard listener cooperative (it is switched to non-blocking mode).
    pub fn from_std(listener: std::os::unix::net::UnixListener) -> io::Result<UnixListener> {
        Ok(UnixListener {
            inner: Registered::new(listener)?,
        })
    }

    /// Waits for a connection; a lack of descriptors is waited out, as
    /// [`TcpListener::accept`] does.
    pub fn accept(&self) -> io::Result<UnixStream> {
        let (s, _) = self.inner.accept(|l| l.accept())?;
        UnixStream::from_std(s)
    }
}
