//! One connection: requests read, answered and written in order, until the client or a
//! limit ends it. Pipelined requests wait in the read buffer and their answers leave
//! together.

use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode, Version};

use crate::body::{Body, Payload, TooLarge};
use crate::response::{self, Response};
use crate::server::books::{Connection, InFlight, Phase};
use crate::server::{RemoteAddr, SERVED, Shared};
use crate::wire::body::{Decoder, send_stream};
use crate::wire::head::{Framing, HeadError, HeadLimits, RequestHead, parse_request, write_field};
use crate::wire::{Stream, Upgraded, Wire};

/// A request body left unread is skipped if at most this much of it is left; past that the
/// connection closes instead.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// Answers waiting in the write buffer are sent once they reach this size, or when no
/// pipelined request is left to answer.
const BATCH: usize = 64 * 1024;

/// How long a closing connection reads what the client still sends, so that the client
/// reads the last answer before the connection resets.
const LINGER: Duration = Duration::from_secs(2);

enum Next {
    /// Keep the connection for the next request.
    Keep,
    /// Close it (after lingering).
    Close,
    /// Broken: nothing more to do.
    Done,
    /// Hand it to the function (`101 Switching Protocols` is out).
    Upgrade(Box<dyn FnOnce(Upgraded) + Send>),
}

/// Serves the connection until it ends.
pub(crate) fn serve<S: Stream>(shared: &Shared, conn: &Connection, io: S) {
    let limits = &shared.limits;
    let head_limits = HeadLimits {
        line: limits.request_line,
        head: limits.head,
        fields: limits.fields,
    };
    let mut wire = Wire::new(io, 4096, limits.head.max(4096));
    // Each wait for the first byte of a request is bounded by the socket's read timeout (the
    // header limit for the first request, the idle limit after), and each write's wait by
    // its write timeout: cheaper than a deadline scope per request, which costs even when
    // nothing waits.
    wire.io
        .set_timeouts(Some(limits.header_timeout), limits.write_timeout);
    loop {
        // Blank lines between requests are skipped (RFC 9112, section 2.2): a client that
        // sends CRLF after a body is not starting a request.
        let blank = wire
            .buffered()
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        wire.consume(blank);
        if wire.buffered().is_empty() {
            // Nothing more to answer for now: what is waiting goes out before the wait.
            if wire.flush().is_err() {
                break;
            }
            // Idle, even while the server stops: the previous answer may have left before
            // the stop began, so the client may be sending another request; it is answered
            // with `Connection: close`, and the stop closes a connection that stays silent.
            conn.set(Phase::Idle);
            match wire.fill() {
                Ok(n) if n > 0 => {}
                // Closed, or silent past the limit: nothing was asked, nothing to answer.
                _ => return,
            }
            if !conn.start_reading() {
                // A graceful stop claimed the idle connection: it is closing.
                return;
            }
            continue;
        }
        conn.set(Phase::Reading);
        let started = Instant::now();
        // Most heads arrive whole; one that does not is read under the header limit.
        let head = match parse_request(wire.buffered(), &head_limits) {
            Ok(Some(head)) => Ok(Some(head)),
            Ok(None) => {
                // The rest of the head must be waited for: earlier answers go out first.
                if wire.flush().is_err() {
                    return;
                }
                greenhub::with_timeout(limits.header_timeout, || read_head(&mut wire, &head_limits))
            }
            Err(e) => Err(Refusal::Head(e)),
        };
        let (head, len) = match head {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(Refusal::Head(e)) => {
                refuse(shared, conn, &mut wire, e.status(), e.reason(), started);
                break;
            }
            Err(Refusal::TimedOut) => {
                let status = StatusCode::REQUEST_TIMEOUT;
                refuse(
                    shared,
                    conn,
                    &mut wire,
                    status,
                    "the request head came too slowly",
                    started,
                );
                break;
            }
            Err(Refusal::Io) => return,
        };
        wire.consume(len);
        if conn.requests.fetch_add(1, Ordering::Relaxed) == 0 {
            wire.io
                .set_timeouts(Some(limits.idle_timeout), limits.write_timeout);
        }
        shared.books.requests.fetch_add(1, Ordering::Relaxed);
        SERVED.fetch_add(1, Ordering::Relaxed);
        match answer(shared, conn, &mut wire, head, started) {
            Next::Keep => {}
            Next::Close => break,
            Next::Done => return,
            Next::Upgrade(f) => {
                conn.set(Phase::Upgraded);
                let (io, early) = wire.into_parts();
                // The new protocol sets its own time limits (the upgrade's function).
                io.set_timeouts(None, None);
                f(Upgraded {
                    io: Box::new(io),
                    early,
                    read_timeout: None,
                    write_timeout: None,
                });
                return;
            }
        }
    }
    conn.set(Phase::Closing);
    close(wire);
}

enum Refusal {
    Head(HeadError),
    TimedOut,
    Io,
}

fn read_head<S: Stream>(
    wire: &mut Wire<S>,
    limits: &HeadLimits,
) -> Result<Option<(RequestHead, usize)>, Refusal> {
    loop {
        if let Some(parsed) = parse_request(wire.buffered(), limits).map_err(Refusal::Head)? {
            return Ok(Some(parsed));
        }
        match wire.fill() {
            Ok(0) if wire.is_full() => return Err(Refusal::Head(HeadError::TooLarge)),
            // The client went away in the middle of a head.
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(Refusal::TimedOut),
            Err(_) => return Err(Refusal::Io),
        }
    }
}

/// Answers a request the server refuses, then the connection closes.
fn refuse<S: Stream>(
    shared: &Shared,
    conn: &Connection,
    wire: &mut Wire<S>,
    status: StatusCode,
    reason: &str,
    started: Instant,
) {
    shared.books.refused.fetch_add(1, Ordering::Relaxed);
    conn.set(Phase::Writing);
    let body = format!("{reason}\n");
    let _ = write!(
        wire.out,
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\ndate: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        crate::date::header().to_str().unwrap_or(""),
    );
    let _ = greenhub::with_timeout(Duration::from_secs(5), || wire.flush());
    shared
        .books
        .answered(conn.id, status.as_u16(), started.elapsed());
    if shared.access_log {
        access_log(conn, "-", status.as_u16(), body.len() as u64);
    }
}

/// The request body as the handler reads it: decoded, bounded in size and time, with the
/// `100 Continue` the client waits for sent on the first read.
struct Incoming<'w, S: Stream> {
    wire: &'w mut Wire<S>,
    decoder: Decoder,
    limit: u64,
    read: u64,
    deadline: Option<Instant>,
    send_continue: bool,
}

impl<S: Stream> Read for Incoming<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.decoder.is_done() {
            return Ok(0);
        }
        if self.send_continue {
            self.send_continue = false;
            // Answers to earlier pipelined requests go first.
            self.wire
                .out
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.within_deadline(|w, _| w.flush())?;
        }
        let (wire, decoder) = (&mut *self.wire, &mut self.decoder);
        let n = match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                greenhub::with_timeout(left, || decoder.read(wire, buf))?
            }
            None => decoder.read(wire, buf)?,
        };
        self.read += n as u64;
        if self.read > self.limit {
            return Err(io::Error::other(TooLarge { limit: self.limit }));
        }
        Ok(n)
    }
}

impl<S: Stream> Incoming<'_, S> {
    fn within_deadline<R>(
        &mut self,
        f: impl FnOnce(&mut Wire<S>, &mut Decoder) -> io::Result<R>,
    ) -> io::Result<R> {
        let (wire, decoder) = (&mut *self.wire, &mut self.decoder);
        match self.deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                greenhub::with_timeout(left, || f(wire, decoder))
            }
            None => f(wire, decoder),
        }
    }

    /// Reads and drops what the handler left of the body, if little is left; false if the
    /// connection cannot carry another request.
    fn drain(&mut self) -> bool {
        if self.decoder.is_done() {
            return true;
        }
        // The client waits for a 100 that was never sent: it may or may not send the body.
        if self.send_continue || self.read > self.limit {
            return false;
        }
        if self.decoder.known_left() > DRAIN_LIMIT {
            return false;
        }
        let mut skipped = 0u64;
        let mut scratch = [0u8; 4096];
        let deadline = self
            .deadline
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(5));
        let left = deadline.saturating_duration_since(Instant::now());
        greenhub::with_timeout(left, || {
            while !self.decoder.is_done() {
                match self.decoder.read(self.wire, &mut scratch) {
                    Ok(0) => break,
                    Ok(n) => {
                        skipped += n as u64;
                        if skipped > DRAIN_LIMIT {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
            self.decoder.is_done()
        })
    }
}

/// Runs the handler on one request and writes its answer.
fn answer<S: Stream>(
    shared: &Shared,
    conn: &Connection,
    wire: &mut Wire<S>,
    head: RequestHead,
    started: Instant,
) -> Next {
    let limits = &shared.limits;
    let RequestHead {
        method,
        uri,
        version,
        headers,
        framing,
        expects_continue,
        keep_alive,
    } = head;
    if let Framing::Length(n) = framing
        && n > limits.body
    {
        let why = format!(
            "the request body of {n} bytes is larger than the limit of {} bytes",
            limits.body
        );
        refuse(
            shared,
            conn,
            wire,
            StatusCode::PAYLOAD_TOO_LARGE,
            &why,
            started,
        );
        return Next::Close;
    }
    let length = match framing {
        Framing::Length(n) => Some(n),
        Framing::Empty => Some(0),
        _ => None,
    };
    let is_head = method == Method::HEAD;
    conn.handling(InFlight {
        method: method.clone(),
        uri: uri.clone(),
        since: started,
    });
    let target = if shared.access_log {
        uri.to_string()
    } else {
        String::new()
    };
    let mut incoming = Incoming {
        wire,
        decoder: Decoder::new(framing),
        limit: limits.body,
        read: 0,
        // A request without a body has nothing to time (and its clock read is saved).
        deadline: match framing {
            Framing::Empty | Framing::Length(0) => None,
            _ => limits.body_timeout.map(|t| Instant::now() + t),
        },
        send_continue: expects_continue && framing != Framing::Empty,
    };
    let outcome = {
        let mut request = http::Request::new(Body::new(&mut incoming, length));
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        request.extensions_mut().insert(RemoteAddr(conn.peer));
        greenhub::catch_panic(|| shared.handler.handle(request))
    };
    let response = match outcome {
        Ok(r) => r,
        Err(panic) => {
            shared.books.panics.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "greenhub-http: the handler panicked on {method} {target} from {}: {panic}",
                conn.peer
            );
            response::status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    };
    let drained = incoming.drain();
    let wire = incoming.wire;
    conn.set(Phase::Writing);
    let stopping = shared.stopping.load(Ordering::SeqCst);
    let keep = keep_alive && drained && !stopping;
    let written = write_response(wire, response, version, is_head, keep, limits.write_timeout);
    match written {
        Ok(Written::Sent {
            status,
            bytes,
            keep,
        }) => {
            shared.books.answered(conn.id, status, started.elapsed());
            if shared.access_log {
                access_log_request(conn, &method, &target, version, status, bytes);
            }
            if keep { Next::Keep } else { Next::Close }
        }
        Ok(Written::Upgrade(status, f)) => {
            shared.books.answered(conn.id, status, started.elapsed());
            if shared.access_log {
                access_log_request(conn, &method, &target, version, status, 0);
            }
            Next::Upgrade(f)
        }
        Err(_) => Next::Done,
    }
}

/// What writing a response did.
enum Written {
    Sent { status: u16, bytes: u64, keep: bool },
    Upgrade(u16, Box<dyn FnOnce(Upgraded) + Send>),
}

/// Writes the head and body of `response` into the write buffer, sending it when it is
/// large, streamed, or the last answer the buffer holds.
fn write_response<S: Stream>(
    wire: &mut Wire<S>,
    response: Response,
    version: Version,
    is_head: bool,
    keep: bool,
    write_timeout: Option<Duration>,
) -> io::Result<Written> {
    let (parts, payload) = response.into_parts();
    let status = parts.status;
    let code = status.as_u16();
    let bodiless = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let closes_itself = parts
        .headers
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let chunked_ok = version == Version::HTTP_11;
    let (length, mut keep) = match &payload {
        Payload::Empty => (Some(0), keep),
        Payload::Bytes(b) => (Some(b.len() as u64), keep),
        Payload::File { len, .. } => (Some(*len), keep),
        // An HTTP/1.0 client reads a stream until the connection closes.
        Payload::Stream(_) => (None, keep && chunked_ok),
        Payload::Upgrade(_) => (None, false),
    };
    keep &= !closes_itself;
    let out = &mut wire.out;
    let _ = write!(
        out,
        "HTTP/1.1 {code} {}\r\n",
        status.canonical_reason().unwrap_or("")
    );
    let upgrade = matches!(payload, Payload::Upgrade(_));
    // A body-less answer with no payload (HEAD, 304) keeps the length its handler gave.
    let given_length =
        bodiless && matches!(payload, Payload::Empty) && parts.headers.contains_key(CONTENT_LENGTH);
    write_headers(out, &parts.headers, upgrade, given_length);
    if !parts.headers.contains_key(DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(crate::date::header().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let no_length = upgrade
        || given_length
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || (status == StatusCode::NOT_MODIFIED && matches!(payload, Payload::Empty));
    if !no_length {
        match length {
            Some(n) => {
                let _ = write!(out, "content-length: {n}\r\n");
            }
            None if chunked_ok => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            None => {}
        }
    }
    if !upgrade {
        if !keep {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    let mut bytes = 0u64;
    match payload {
        Payload::Upgrade(f) => {
            wire.flush()?;
            return Ok(Written::Upgrade(code, f));
        }
        _ if bodiless => {}
        Payload::Empty => {}
        Payload::Bytes(b) => {
            bytes = b.len() as u64;
            if b.len() > BATCH {
                wire.flush()?;
                wire.io.write_all(&b)?;
            } else {
                wire.out.extend_from_slice(&b);
            }
        }
        Payload::Stream(mut reader) => {
            // A stream's whole answer within the limit (its producer may be slow too).
            bytes = match write_timeout {
                Some(t) => {
                    greenhub::with_timeout(t, || send_stream(wire, &mut *reader, chunked_ok))?
                }
                None => send_stream(wire, &mut *reader, chunked_ok)?,
            };
        }
        Payload::File { file, len } => {
            wire.flush()?;
            bytes = match write_timeout {
                Some(t) => greenhub::with_timeout(t, || send_file(wire, file, len))?,
                None => send_file(wire, file, len)?,
            };
        }
    }
    // Answers to pipelined requests leave together: the buffer is sent when it is large, when
    // the connection closes, or (in `serve`) before any wait for more of the client's bytes.
    if !keep || wire.out.len() >= BATCH {
        wire.flush()?;
    }
    Ok(Written::Sent {
        status: code,
        bytes,
        keep,
    })
}

/// The handler's headers, but those the server sets itself from the payload (an upgrade's
/// `Connection`, and a body-less answer's given length, are the handler's).
fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap, upgrade: bool, given_length: bool) {
    for (name, value) in headers {
        let ours = (name == CONTENT_LENGTH && !given_length)
            || name == TRANSFER_ENCODING
            || (name == CONNECTION && !upgrade);
        if ours {
            continue;
        }
        write_field(out, name, value);
    }
}

/// Sends a file's first `len` bytes, read in pieces on the thread pool.
fn send_file<S: Stream>(wire: &mut Wire<S>, file: std::fs::File, len: u64) -> io::Result<u64> {
    const PIECE: usize = 64 * 1024;
    let mut file = Some(file);
    let mut sent = 0u64;
    while sent < len {
        let want = PIECE.min((len - sent) as usize);
        let mut f = file.take().expect("the file comes back with each piece");
        let (f, piece) = greenhub_tpool::execute(move || {
            let mut buf = vec![0u8; want];
            let r = f.read(&mut buf).map(|n| {
                buf.truncate(n);
                buf
            });
            (f, r)
        })
        .map_err(io::Error::other)?;
        file = Some(f);
        let piece = piece?;
        if piece.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file is shorter than the length the response gave",
            ));
        }
        wire.io.write_all(&piece)?;
        sent += piece.len() as u64;
    }
    Ok(sent)
}

/// Closes after the last answer: the sending side first, then what the client still sends
/// is read and dropped for a while, so that its last answer is not lost to a reset.
fn close<S: Stream>(mut wire: Wire<S>) {
    let _ = greenhub::with_timeout(Duration::from_secs(5), || wire.flush());
    wire.io.close_write();
    let mut scratch = [0u8; 4096];
    greenhub::with_timeout(LINGER, || {
        let mut seen = 0usize;
        while seen < 256 * 1024 {
            match wire.io.read(&mut scratch) {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    });
}

fn access_log_request(
    conn: &Connection,
    method: &Method,
    target: &str,
    version: Version,
    status: u16,
    bytes: u64,
) {
    let line = format!("{method} {} {version:?}", sanitize(target));
    access_log(conn, &line, status, bytes);
}

/// One line of the Common Log Format.
fn access_log(conn: &Connection, request: &str, status: u16, bytes: u64) {
    if !log::log_enabled!(target: "greenhub_http::access", log::Level::Info) {
        return;
    }
    log::info!(
        target: "greenhub_http::access",
        "{} - - [{}] \"{request}\" {status} {bytes}",
        conn.peer.ip(),
        crate::date::common_log(SystemTime::now()),
    );
}

/// A request target as the log shows it: control characters and quotes escaped, so that a
/// client cannot forge log lines or terminal escapes.
fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' => "\\\"".chars().collect::<Vec<_>>(),
            c if c.is_control() => c.escape_default().collect(),
            c => vec![c],
        })
        .collect()
}
