//! TLS for greenhub's cooperative sockets, on rustls (eventlet's `wrap_ssl`, gevent's `ssl`).
//!
//! The handshake and every encrypted read and write go through the socket's own cooperative
//! `read` and `write`, so they park the green thread, not the worker; they are bounded by the
//! enclosing deadline scope and the socket's timeouts, end at once on a kill, and the wait shows
//! in the registry as a wait on the descriptor.
//!
//! ```
//! # use std::sync::Arc;
//! # fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
//! #     let key = rcgen::KeyPair::generate().unwrap();
//! #     let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap()
//! #         .self_signed(&key).unwrap();
//! #     let mut roots = rustls::RootCertStore::empty();
//! #     roots.add(cert.der().clone()).unwrap();
//! #     let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
//! #     let server = rustls::ServerConfig::builder().with_no_client_auth()
//! #         .with_single_cert(vec![cert.der().clone()], key).unwrap();
//! #     let client = rustls::ClientConfig::builder().with_root_certificates(roots)
//! #         .with_no_client_auth();
//! #     (Arc::new(server), Arc::new(client))
//! # }
//! use std::io::{Read, Write};
//! use greenhub::net::{TcpListener, TcpStream};
//! use greenhub_tls::{TlsAcceptor, TlsConnector};
//!
//! // A handshake takes about 20 KiB of stack in release builds and 70 KiB in debug builds.
//! greenhub::Config::new().stack_size(256 * 1024).init().unwrap();
//! // A certificate for "localhost", and a client configuration that trusts it.
//! let (server_config, client_config) = configs();
//! let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//! let addr = listener.local_addr().unwrap();
//! let acceptor = TlsAcceptor::new(server_config);
//! let server = greenhub::spawn(move || {
//!     let (tcp, _) = listener.accept().unwrap();
//!     let mut tls = acceptor.accept(tcp).unwrap();
//!     let mut word = [0; 5];
//!     tls.read_exact(&mut word).unwrap();
//!     tls.write_all(&word).unwrap(); // echo
//!     tls.shutdown().unwrap();
//! });
//! let client = greenhub::spawn(move || {
//!     let tcp = TcpStream::connect(addr).unwrap();
//!     let mut tls = TlsConnector::new(client_config).connect("localhost", tcp).unwrap();
//!     tls.write_all(b"hello").unwrap();
//!     let mut back = String::new();
//!     tls.read_to_string(&mut back).unwrap();
//!     back
//! });
//! server.wait().unwrap();
//! assert_eq!(client.wait().unwrap(), "hello");
//! ```
//!
//! The rules:
//!
//! - Configurations are rustls's own ([`rustls::ClientConfig`], [`rustls::ServerConfig`]),
//!   re-exported as [`rustls`] so that they match this crate's version; the crypto is `ring`.
//! - [`TlsConnector::connect`] and [`TlsAcceptor::accept`] return once the handshake is
//!   complete, or with a [`TlsError`] that says why it failed. To bound a handshake with a
//!   peer that says nothing, set the socket's read timeout or use a deadline scope.
//! - A [`TlsStream`] is one TLS session: one green thread uses it at a time (a read waiting
//!   for the peer holds the session, as in Python's `ssl`).
//! - Stack: a handshake (certificate checks and signatures in `ring`) needs about 20 KiB of
//!   green-thread stack in release builds and about 70 KiB in debug builds, more than
//!   greenhub's default of 64 KiB. Debug builds serving TLS should raise it
//!   (`GREENHUB_STACK_SIZE=256k`, or [`greenhub::Config::stack_size`]); a thread that
//!   overflows stops the process with a message that says so.
//! - A peer that closes without TLS's `close_notify` makes a read fail with
//!   `ErrorKind::UnexpectedEof` (a truncation attack looks the same); after `close_notify`
//!   reads return `Ok(0)`. [`TlsStream::shutdown`] sends it.

use std::fmt;
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use greenhub::net::TcpStream;
pub use rustls;
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData,
};

/// Why a TLS session could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The name to verify the server's certificate against is neither a DNS name nor an IP
    /// address.
    #[error(
        "`{0}` is not a server name (a DNS name or an IP address): pass the host name the certificate is for"
    )]
    InvalidServerName(String),
    /// The configuration cannot start a session (for example, no protocol version in
    /// common with its cipher suites).
    #[error("the TLS configuration cannot start a session: {0}")]
    Config(#[source] rustls::Error),
    /// The handshake failed: a certificate that is not trusted or not for this name, no
    /// protocol or cipher in common, a peer that does not speak TLS, or the peer's alert.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] rustls::Error),
    /// The peer closed the connection before the handshake was complete.
    #[error("the peer closed the connection during the TLS handshake")]
    Closed,
    /// The socket's timeout or the enclosing deadline scope passed during the handshake.
    #[error("the TLS handshake timed out")]
    TimedOut,
    /// The socket failed during the handshake.
    #[error("socket error during the TLS handshake: {0}")]
    Io(#[source] io::Error),
}

impl From<greenhub::TimedOut> for TlsError {
    fn from(_: greenhub::TimedOut) -> TlsError {
        TlsError::TimedOut
    }
}

impl greenhub::timeout::IsTimeout for TlsError {
    fn is_timeout(&self) -> bool {
        matches!(self, TlsError::TimedOut)
    }
}

impl TlsError {
    fn from_io(e: io::Error) -> TlsError {
        // rustls reports its own errors inside `io::Error`s of kind `InvalidData`.
        if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            let kind = e.kind();
            return match e
                .into_inner()
                .map(|inner| inner.downcast::<rustls::Error>())
            {
                Some(Ok(tls)) => TlsError::Handshake(*tls),
                Some(Err(other)) => TlsError::Io(io::Error::new(kind, other)),
                None => TlsError::Io(kind.into()),
            };
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => TlsError::Closed,
            io::ErrorKind::TimedOut => TlsError::TimedOut,
            _ => TlsError::Io(e),
        }
    }
}

/// Starts client sessions with one configuration (cheap to clone; share it).
#[derive(Clone, Debug)]
pub struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    /// A connector with `config` (roots to trust, client certificate, ALPN protocols).
    pub fn new(config: Arc<ClientConfig>) -> TlsConnector {
        TlsConnector { config }
    }

    /// Runs the client handshake over `socket`, verifying the server's certificate against
    /// `server_name` (a DNS name or an IP address).
    pub fn connect<S: Read + Write>(
        &self,
        server_name: &str,
        socket: S,
    ) -> Result<ClientStream<S>, TlsError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::InvalidServerName(server_name.to_owned()))?;
        let conn = ClientConnection::new(self.config.clone(), name).map_err(TlsError::Config)?;
        handshake(conn, socket)
    }
}

/// Accepts server sessions with one configuration (cheap to clone; share it across the
/// connection handlers).
#[derive(Clone, Debug)]
pub struct TlsAcceptor {
    config: Arc<ServerConfig>,
}

impl TlsAcceptor {
    /// An acceptor with `config` (certificate chain and key, client verification, ALPN).
    pub fn new(config: Arc<ServerConfig>) -> TlsAcceptor {
        TlsAcceptor { config }
    }

    /// Runs the server handshake over `socket`, an accepted connection.
    pub fn accept<S: Read + Write>(&self, socket: S) -> Result<ServerStream<S>, TlsError> {
        let conn = ServerConnection::new(self.config.clone()).map_err(TlsError::Config)?;
        handshake(conn, socket)
    }
}

fn handshake<C, D, S>(mut conn: C, mut socket: S) -> Result<TlsStream<C, S>, TlsError>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData,
    S: Read + Write,
{
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).map_err(TlsError::from_io)?;
    }
    Ok(TlsStream {
        inner: rustls::StreamOwned::new(conn, socket),
    })
}

/// A TLS session over a cooperative socket: `Read` and `Write` carry the plaintext.
pub struct TlsStream<C, S: Read + Write = TcpStream> {
    inner: rustls::StreamOwned<C, S>,
}

/// The client side of a session.
pub type ClientStream<S = TcpStream> = TlsStream<ClientConnection, S>;

/// The server side of a session.
pub type ServerStream<S = TcpStream> = TlsStream<ServerConnection, S>;

impl<C, D, S> TlsStream<C, S>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData,
    S: Read + Write,
{
    /// The socket underneath, to set its timeouts or read its addresses. Reading or writing
    /// it directly would corrupt the session.
    pub fn get_ref(&self) -> &S {
        &self.inner.sock
    }

    /// The rustls session: the negotiated protocol version, cipher suite and ALPN protocol,
    /// the peer's certificates, and (on the server) the name the client asked for.
    pub fn connection(&self) -> &C {
        &self.inner.conn
    }

    /// Sends `close_notify` and everything still buffered: the peer's reads then end with
    /// `Ok(0)`. The socket stays open until the stream is dropped.
    pub fn shutdown(&mut self) -> io::Result<()> {
        self.inner.conn.send_close_notify();
        self.inner.flush()
    }
}

impl<C, D, S> Read for TlsStream<C, S>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData,
    S: Read + Write,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

impl<C, D, S> Write for TlsStream<C, S>
where
    C: DerefMut + Deref<Target = ConnectionCommon<D>>,
    D: SideData,
    S: Read + Write,
{
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<C, D, S> fmt::Debug for TlsStream<C, S>
where
    C: Deref<Target = ConnectionCommon<D>>,
    S: Read + Write,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsStream")
            .field("protocol", &self.inner.conn.protocol_version())
            .field(
                "cipher_suite",
                &self.inner.conn.negotiated_cipher_suite().map(|s| s.suite()),
            )
            .finish_non_exhaustive()
    }
}
