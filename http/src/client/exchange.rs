//! One request and its response on one connection, and the idle connections kept per origin
//! for reuse.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};
use parking_lot::Mutex;

use crate::wire::body::{Decoder, send_stream};
use crate::wire::head::{HeadLimits, ResponseHead, parse_response, write_field};
use crate::wire::{Stream, Wire};

/// Where a connection goes: scheme, host and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Origin {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// The origin as a `Host` header writes it: an IPv6 address in brackets, the port unless
    /// it is the scheme's default.
    pub(crate) fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default_port = if self.tls { 443 } else { 80 };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

/// A connection to an origin.
pub(crate) type Conn = Wire<Box<dyn Stream>>;

/// What a request sends.
pub(crate) enum Outgoing<'a> {
    Empty,
    Bytes(&'a [u8]),
    Stream(&'a mut (dyn Read + Send)),
}

/// How an exchange failed, and whether it may be tried again on a new connection: only if
/// the connection was a reused one and nothing of a response came back (the server had
/// closed it while it was idle).
#[derive(Debug)]
pub(crate) struct Failed {
    pub error: io::Error,
    pub retry: bool,
}

/// A response read whole.
pub(crate) struct Received {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// The connection can carry another request.
    pub reusable: bool,
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn exchange(
    conn: &mut Conn,
    reused: bool,
    method: &Method,
    origin: &Origin,
    target: &str,
    headers: &HeaderMap,
    body: Outgoing<'_>,
    limits: &HeadLimits,
    max_body: u64,
) -> Result<Received, Failed> {
    let mut got_any = false;
    let fail = |error: io::Error, got_any: bool| Failed {
        error,
        retry: reused && !got_any,
    };
    write_request(conn, method, origin, target, headers, body).map_err(|e| fail(e, false))?;
    // Interim (1xx) responses come before the final one.
    let head: ResponseHead = loop {
        let parsed = loop {
            match parse_response(conn.buffered(), method, limits) {
                Ok(Some(done)) => break done,
                Ok(None) => {}
                Err(e) => {
                    return Err(fail(
                        io::Error::new(io::ErrorKind::InvalidData, e.reason()),
                        true,
                    ));
                }
            }
            match conn.fill() {
                Ok(0) if conn.is_full() => {
                    return Err(fail(
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the response head is too large",
                        ),
                        true,
                    ));
                }
                Ok(0) => {
                    return Err(fail(
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection without a response",
                        ),
                        got_any,
                    ));
                }
                Ok(_) => got_any = true,
                Err(e) => return Err(fail(e, got_any)),
            }
        };
        let (head, len) = parsed;
        conn.consume(len);
        if head.status.is_informational() && head.status != StatusCode::SWITCHING_PROTOCOLS {
            got_any = true;
            continue;
        }
        break head;
    };
    let mut decoder = Decoder::new(head.framing);
    let mut body = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = decoder.read(conn, &mut buf).map_err(|e| fail(e, true))?;
        if n == 0 {
            break;
        }
        if body.len() as u64 + n as u64 > max_body {
            return Err(fail(
                io::Error::other(format!(
                    "the response body is larger than the limit of {max_body} bytes"
                )),
                true,
            ));
        }
        body.extend_from_slice(&buf[..n]);
    }
    Ok(Received {
        status: head.status,
        version: head.version,
        headers: head.headers,
        body,
        // After a 101 the connection speaks another protocol: never reused for HTTP.
        reusable: head.keep_alive
            && head.status != StatusCode::SWITCHING_PROTOCOLS
            && decoder.is_done()
            && conn.buffered().is_empty(),
    })
}

fn write_request(
    conn: &mut Conn,
    method: &Method,
    origin: &Origin,
    target: &str,
    headers: &HeaderMap,
    body: Outgoing<'_>,
) -> io::Result<()> {
    let out = &mut conn.out;
    out.clear();
    let _ = write!(out, "{method} {target} HTTP/1.1\r\n");
    if !headers.contains_key(HOST) {
        let _ = write!(out, "host: {}\r\n", origin.authority());
    }
    for (name, value) in headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        write_field(out, name, value);
    }
    match body {
        Outgoing::Empty => {
            if method == Method::POST || method == Method::PUT || method == Method::PATCH {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            out.extend_from_slice(b"\r\n");
            conn.flush()
        }
        Outgoing::Bytes(b) => {
            let _ = write!(out, "content-length: {}\r\n\r\n", b.len());
            if b.len() <= 16 * 1024 {
                out.extend_from_slice(b);
                conn.flush()
            } else {
                conn.flush()?;
                conn.io.write_all(b)?;
                conn.io.flush()
            }
        }
        Outgoing::Stream(reader) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            send_stream(conn, reader, true)?;
            conn.flush()
        }
    }
}

/// Idle connections, by origin, newest last.
pub(crate) struct Idle {
    conns: Mutex<HashMap<Origin, Vec<(Conn, Instant)>>>,
    per_origin: usize,
    idle_timeout: Duration,
}

impl Idle {
    pub(crate) fn new(per_origin: usize, idle_timeout: Duration) -> Idle {
        Idle {
            conns: Mutex::new(HashMap::new()),
            per_origin,
            idle_timeout,
        }
    }

    /// The most recently used idle connection to `origin` that has not idled too long and
    /// that the server has not closed (nor sent anything on) meanwhile.
    pub(crate) fn take(&self, origin: &Origin) -> Option<Conn> {
        loop {
            let (conn, since) = self.conns.lock().get_mut(origin)?.pop()?;
            if since.elapsed() < self.idle_timeout && !conn.io.peer_closed() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection for reuse, dropping the oldest past the per-origin limit and any
    /// that has idled too long, to this origin or another.
    pub(crate) fn put(&self, origin: Origin, conn: Conn) {
        if self.per_origin == 0 {
            return;
        }
        let mut dropped = Vec::new();
        {
            let mut conns = self.conns.lock();
            for list in conns.values_mut() {
                while list
                    .first()
                    .is_some_and(|(_, since)| since.elapsed() >= self.idle_timeout)
                {
                    dropped.push(list.remove(0));
                }
            }
            conns.retain(|_, list| !list.is_empty());
            let list = conns.entry(origin).or_default();
            list.push((conn, Instant::now()));
            if list.len() > self.per_origin {
                dropped.push(list.remove(0));
            }
        }
        // Closed outside the lock.
        drop(dropped);
    }

    /// Idle connections now, to all origins.
    pub(crate) fn count(&self) -> usize {
        self.conns.lock().values().map(Vec::len).sum()
    }
}
