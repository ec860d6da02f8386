//! The byte stream to the server and its framing: a green TCP or Unix socket, the messages
//! queued to send, and the backend messages read back one at a time.
//!
//! Every read and write is a greenhub wait: it parks the green thread, not its worker, and
//! ends at the enclosing deadline scope or a kill. A message longer than [`MAX_MESSAGE`] is
//! refused before anything is allocated for it.
//!
//! It uses the crate's errors only.

use std::io::{self, Read, Write};

use bytes::BytesMut;
use postgres_protocol::message::backend::{Header, Message};

use crate::error::Error;

/// The longest backend message taken: a value is at most 1 GiB in PostgreSQL, and a row of
/// several such is not something to buffer whole.
pub(crate) const MAX_MESSAGE: usize = 1 << 30;

/// What one read asks the socket for at least.
const READ_CHUNK: usize = 16 * 1024;

/// A connected socket.
pub(crate) enum Stream {
    Tcp(greenhub::net::TcpStream),
    Unix(greenhub::net::UnixStream),
}

impl Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => (&*s).read(buf),
        }
    }

    fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf),
            Stream::Unix(s) => (&*s).write_all(buf),
        }
    }
}

/// A socket with its buffers.
pub(crate) struct Wire {
    stream: Stream,
    /// Bytes read and not yet parsed. Parsed messages share its memory (a row's values are
    /// slices of it), so it is only appended to, never written in place.
    read: BytesMut,
    /// What one socket read lands in before it is appended to `read`: zeroed once, so that a
    /// read costs a copy of what came rather than the zeroing of a whole chunk.
    scratch: Box<[u8]>,
    /// Messages built and not yet sent; [`Wire::flush`] sends them in one write.
    pub out: BytesMut,
}

/// An I/O error as the crate's: the deadline scope's as [`Error::TimedOut`].
pub(crate) fn io_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::TimedOut {
        Error::TimedOut
    } else {
        Error::Io(e)
    }
}

impl Wire {
    pub(crate) fn new(stream: Stream) -> Wire {
        Wire {
            stream,
            read: BytesMut::with_capacity(READ_CHUNK),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            out: BytesMut::with_capacity(1024),
        }
    }

    /// Ends the connection both ways now (the socket itself closes when dropped): the
    /// server sees the client leave.
    pub(crate) fn shutdown(&mut self) {
        let _ = self.stream.shutdown();
    }

    /// Sends what is queued in `out`.
    pub(crate) fn flush(&mut self) -> Result<(), Error> {
        let sent = self.stream.write_all(&self.out).map_err(io_error);
        self.out.clear();
        sent
    }

    /// The next backend message, reading as much as it takes.
    pub(crate) fn recv(&mut self) -> Result<Message, Error> {
        loop {
            if let Some(header) = Header::parse(&self.read).map_err(Error::Io)? {
                let len = header.len() as usize;
                if len > MAX_MESSAGE {
                    return Err(Error::Protocol(format!(
                        "a message of {len} bytes (tag {:?}); at most {MAX_MESSAGE} are taken",
                        header.tag() as char
                    )));
                }
                if self.read.len() > len {
                    return match Message::parse(&mut self.read) {
                        Ok(Some(message)) => Ok(message),
                        Ok(None) => Err(Error::Protocol("a message cut short".into())),
                        Err(e) => Err(Error::Protocol(e.to_string())),
                    };
                }
            }
            self.fill()?;
        }
    }

    /// Reads once more from the socket into the read buffer.
    fn fill(&mut self) -> Result<(), Error> {
        match self.stream.read(&mut self.scratch) {
            Ok(0) => Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ))),
            Ok(n) => {
                self.read.extend_from_slice(&self.scratch[..n]);
                Ok(())
            }
            Err(e) => Err(io_error(e)),
        }
    }
}
