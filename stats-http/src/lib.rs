//! A small HTTP/1.1 server for stats endpoints (`/metrics` and the like): GET and HEAD only,
//! one OS thread, non-blocking sockets and `poll(2)`, so that no client can hold it and no
//! client costs a thread. greenhub's stats endpoint and `greenhub-serve`'s master serve their
//! metrics with it; it knows nothing of either.
//!
//! ```no_run
//! use greenhub_stats_http::{Answer, Limits, serve};
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:9100").unwrap();
//! std::thread::spawn(move || {
//!     serve(
//!         listener,
//!         Limits::default(),
//!         |target: &str| match target {
//!             "/metrics" => Answer { status: 200, content_type: "text/plain; version=0.0.4", body: "up 1\n".into() },
//!             _ => Answer { status: 404, content_type: "text/plain", body: "not found\n".into() },
//!         },
//!         |trouble: &str| eprintln!("{trouble}"),
//!     )
//! });
//! ```
//!
//! Rules, each against a way an outside client could take the endpoint down:
//! - At most [`Limits::connections`] connections are open at once; the rest wait in the
//!   kernel's backlog and are taken in order. When every slot is taken and someone waits, a
//!   stalled connection gives its slot to the newcomer: one whose answer is out (closing),
//!   one that has sent nothing for [`Limits::evict_after`], or one that has taken no byte of
//!   its answer for [`STALLED`]; the longest stalled first. So clients that neither send nor
//!   read cannot lock the endpoint.
//! - A request's head (line and headers) is at most [`Limits::request`] bytes (431 past it)
//!   and must arrive within [`Limits::read`] of the connection's last answer or opening;
//!   requests have no body (GET and HEAD only).
//! - An answer is written without blocking, at most one per connection at a time (pipelined
//!   requests wait in the socket until it is out), and a client that does not read it within
//!   [`Limits::write`] is disconnected: a client that never reads holds one slot, not the
//!   endpoint. A connection answers at most [`ANSWERS_PER_TURN`] pipelined requests before the
//!   others get their turn.
//! - A client that sends a request and then closes its side still gets its answer.
//! - `accept` failing for want of descriptors (EMFILE, ENFILE) or memory stops accepting for
//!   [`Limits::backoff`] and is reported once per minute; the endpoint serves again as soon as
//!   descriptors are free.
//!
//! The caller gives it a function from a request's target (path and query) to an answer.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// What the server allows each client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// Bytes in a request's line and headers.
    pub request: usize,
    /// Time for a request's head to arrive, from the connection's opening or its last answer.
    pub read: Duration,
    /// Time for a client to read a whole answer.
    pub write: Duration,
    /// How long a connection must have been silent before a newcomer may take its slot.
    pub evict_after: Duration,
    /// The pause in accepting after `accept` fails for want of resources.
    pub backoff: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 16,
            request: 8 * 1024,
            read: Duration::from_secs(10),
            write: Duration::from_secs(10),
            evict_after: Duration::from_millis(100),
            backoff: Duration::from_millis(100),
        }
    }
}

/// An answer: status, content type and body.
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The `Content-Type`.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
}

/// How often one kind of trouble is reported at most.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Serves `listener` forever with `answer`. `report` receives the server's own troubles.
pub fn serve(
    listener: TcpListener,
    limits: Limits,
    answer: impl Fn(&str) -> Answer,
    report: impl Fn(&str),
) {
    if let Err(e) = listener.set_nonblocking(true) {
        report(&format!("the stats endpoint cannot run: {e}"));
        return;
    }
    let mut server = Server {
        listener,
        limits,
        conns: Vec::new(),
        paused_until: None,
        last_report: None,
    };
    loop {
        server.turn(&answer, &report);
    }
}

struct Server {
    listener: TcpListener,
    limits: Limits,
    conns: Vec<Conn>,
    /// Accepting is paused until then after a lack of descriptors.
    paused_until: Option<Instant>,
    last_report: Option<Instant>,
}

/// How long a connection may take no byte of its answer before a newcomer may take its slot.
pub const STALLED: Duration = Duration::from_secs(1);

/// The most pipelined requests one connection gets answered in one turn of the server.
pub const ANSWERS_PER_TURN: usize = 16;

enum Phase {
    /// Waiting for a request's head; `buf` holds what has arrived.
    Reading,
    /// Writing an answer; the connection closes after it when `close`.
    Writing {
        out: Vec<u8>,
        sent: usize,
        close: bool,
    },
    /// The answer is out and the connection is closing: what the client still sends is read
    /// and dropped (at most `DRAIN` bytes, for at most [`Limits::write`]), so that closing
    /// with unread bytes does not reset the connection before the client has read the answer.
    Draining { dropped: usize },
}

/// The most bytes read and dropped from a closing connection.
const DRAIN: usize = 1024 * 1024;

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    phase: Phase,
    /// When the current phase must be over.
    deadline: Instant,
    /// When the client last sent a byte or took one (or the connection opened).
    active: Instant,
    /// The client has closed its side: what it sent is answered, then the connection closes.
    eof: bool,
    /// Its last turn ended at [`ANSWERS_PER_TURN`] with work left: it goes on at the next turn
    /// without waiting for its socket.
    more: bool,
}

impl Conn {
    /// When a newcomer may take this connection's slot.
    fn evictable_at(&self, limits: &Limits) -> Instant {
        match self.phase {
            Phase::Draining { .. } => self.active,
            Phase::Reading => self.active + limits.evict_after,
            Phase::Writing { .. } => self.active + STALLED,
        }
    }

    /// Whether it has work left that its socket's readiness would not announce.
    fn has_backlog(&self) -> bool {
        self.more
    }
}

impl Server {
    /// One round: drop expired connections, wait for readiness, serve what is ready.
    fn turn(&mut self, answer: &impl Fn(&str) -> Answer, report: &impl Fn(&str)) {
        let now = Instant::now();
        self.conns.retain(|c| c.deadline > now);
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        let full = self.conns.len() >= self.limits.connections;
        let evictable_at = self
            .conns
            .iter()
            .map(|c| c.evictable_at(&self.limits))
            .min();
        let listen =
            self.paused_until.is_none() && (!full || evictable_at.is_some_and(|t| t <= now));

        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(self.conns.len() + 1);
        for c in &self.conns {
            let events = match c.phase {
                Phase::Reading | Phase::Draining { .. } => libc::POLLIN,
                Phase::Writing { .. } => libc::POLLOUT,
            };
            fds.push(pollfd(c.stream.as_raw_fd(), events));
        }
        if listen {
            fds.push(pollfd(self.listener.as_raw_fd(), libc::POLLIN));
        }
        let mut wake = self.conns.iter().map(|c| c.deadline).min();
        for t in [self.paused_until, evictable_at.filter(|_| full && !listen)]
            .into_iter()
            .flatten()
        {
            wake = Some(wake.map_or(t, |w| w.min(t)));
        }
        // Pipelined requests already read are answered without waiting for the socket.
        let backlog = self.conns.iter().any(Conn::has_backlog);
        let timeout_ms = if backlog {
            0
        } else {
            wake.map_or(-1, |w| {
                // Rounded up, so that a wake-up is never early and never spins.
                let ms = w
                    .saturating_duration_since(now)
                    .as_nanos()
                    .div_ceil(1_000_000);
                ms.min(i32::MAX as u128) as i32
            })
        };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd entries for the whole call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            // EINTR or ENOMEM: the next round tries again.
            return;
        }

        // `fds` lists the connections first, in order, then the listener.
        let mut keep = Vec::with_capacity(self.conns.len());
        for (mut conn, fd) in std::mem::take(&mut self.conns).into_iter().zip(&fds) {
            if (fd.revents == 0 && !conn.has_backlog()) || conn.progress(&self.limits, answer) {
                keep.push(conn);
            }
        }
        self.conns = keep;
        if listen && fds.last().is_some_and(|f| f.revents != 0) {
            self.accept(report);
        }
    }

    /// Takes waiting connections while there is room (or a silent connection to evict).
    fn accept(&mut self, report: &impl Fn(&str)) {
        loop {
            if self.conns.len() >= self.limits.connections && !self.evict_one() {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let now = Instant::now();
                    self.conns.push(Conn {
                        stream,
                        buf: Vec::new(),
                        phase: Phase::Reading,
                        deadline: now + self.limits.read,
                        active: now,
                        eof: false,
                        more: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if out_of_resources(&e) => {
                    self.paused_until = Some(Instant::now() + self.limits.backoff);
                    let now = Instant::now();
                    if self
                        .last_report
                        .is_none_or(|t| now.duration_since(t) >= REPORT_EVERY)
                    {
                        self.last_report = Some(now);
                        report(&format!(
                            "greenhub: the stats endpoint cannot accept a connection: {e}; it \
                             retries every {} ms (raise the open-files limit, `ulimit -n`, if \
                             this goes on)",
                            self.limits.backoff.as_millis()
                        ));
                    }
                    return;
                }
                // A connection reset before it was taken, and the like: the next one.
                Err(_) => {}
            }
        }
    }

    /// Closes the connection stalled for longest, if one is stalled.
    fn evict_one(&mut self) -> bool {
        let now = Instant::now();
        let stalled = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.evictable_at(&self.limits) <= now)
            .min_by_key(|(_, c)| c.evictable_at(&self.limits))
            .map(|(i, _)| i);
        match stalled {
            Some(i) => {
                self.conns.swap_remove(i);
                true
            }
            None => false,
        }
    }
}

impl Conn {
    /// Reads, answers and writes what the socket allows, up to [`ANSWERS_PER_TURN`] answers.
    /// False when the connection is over.
    fn progress(&mut self, limits: &Limits, answer: &impl Fn(&str) -> Answer) -> bool {
        self.more = false;
        for _ in 0..ANSWERS_PER_TURN {
            let step = match self.phase {
                Phase::Reading => self.read(limits, answer),
                Phase::Writing { .. } => self.write(limits),
                Phase::Draining { .. } => return self.drain(),
            };
            match step {
                Step::Wait => return true,
                Step::Close => return false,
                Step::Again => {}
            }
        }
        self.more = true;
        true
    }

    /// Reads what has arrived; answers the request at the front of `buf` once it is whole.
    fn read(&mut self, limits: &Limits, answer: &impl Fn(&str) -> Answer) -> Step {
        let mut chunk = [0u8; 4096];
        while !self.eof {
            // One byte past the limit tells a head that is too long from one that fits.
            let room = (limits.request + 1).saturating_sub(self.buf.len());
            if room == 0 {
                break;
            }
            let want = room.min(chunk.len());
            match self.stream.read(&mut chunk[..want]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.active = Instant::now();
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let (reply, consumed) = match req.parse(&self.buf) {
            // The last request of a client that has closed its side is the last answered.
            Ok(httparse::Status::Complete(len)) => {
                let last = self.eof && self.buf.len() == len;
                (reply_to(&req, answer, last), len)
            }
            Ok(httparse::Status::Partial) if self.buf.len() > limits.request => (
                Reply::fail(431, "the request's head is too long"),
                self.buf.len(),
            ),
            // Nothing more will come: an unfinished request is dropped with the connection.
            Ok(httparse::Status::Partial) if self.eof => return Step::Close,
            Ok(httparse::Status::Partial) => return Step::Wait,
            Err(httparse::Error::TooManyHeaders) => {
                (Reply::fail(431, "too many header fields"), self.buf.len())
            }
            Err(e) => (
                Reply::fail(400, &format!("malformed request: {e}")),
                self.buf.len(),
            ),
        };
        self.buf.drain(..consumed);
        self.phase = Phase::Writing {
            out: reply.bytes,
            sent: 0,
            close: reply.close,
        };
        self.deadline = Instant::now() + limits.write;
        // The socket is most likely writable now: no need to wait a round for it.
        Step::Again
    }

    fn write(&mut self, limits: &Limits) -> Step {
        let Phase::Writing { out, sent, close } = &mut self.phase else {
            return Step::Again;
        };
        while *sent < out.len() {
            match self.stream.write(&out[*sent..]) {
                Ok(0) => return Step::Close,
                Ok(n) => {
                    *sent += n;
                    self.active = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Step::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Step::Close,
            }
        }
        let now = Instant::now();
        if *close {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
            self.buf = Vec::new();
            self.phase = Phase::Draining { dropped: 0 };
            // Short: the answer is out, and a newcomer may take the slot at once.
            self.deadline = now + limits.write.min(STALLED);
            self.active = now;
            return Step::Again;
        }
        self.phase = Phase::Reading;
        self.deadline = now + limits.read;
        self.active = now;
        Step::Again
    }

    /// Reads and drops what a closing client still sends. False when it is done.
    fn drain(&mut self) -> bool {
        let Phase::Draining { dropped } = &mut self.phase else {
            return false;
        };
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    *dropped += n;
                    if *dropped > DRAIN {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
}

/// What a connection needs next.
enum Step {
    /// Readiness of its socket.
    Wait,
    /// Nothing: it is over.
    Close,
    /// Another step now.
    Again,
}

/// An answer on the wire.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
}

impl Reply {
    /// An error answer after which the connection closes.
    fn fail(status: u16, message: &str) -> Reply {
        let body = serde_json::json!({ "error": message }).to_string();
        Reply::new(status, "application/json", &body, false, true)
    }

    fn new(status: u16, content_type: &str, body: &str, head_only: bool, close: bool) -> Reply {
        let mut bytes = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: {}\r\n",
            reason(status),
            body.len(),
            if close { "close" } else { "keep-alive" },
        );
        if status == 405 {
            bytes.push_str("Allow: GET, HEAD\r\n");
        }
        bytes.push_str("\r\n");
        let mut bytes = bytes.into_bytes();
        if !head_only {
            bytes.extend_from_slice(body.as_bytes());
        }
        Reply { bytes, close }
    }
}

/// The reply to a whole request head; `last` closes the connection after it.
fn reply_to(req: &httparse::Request, answer: &impl Fn(&str) -> Answer, last: bool) -> Reply {
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("/");
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    // HTTP/1.0 closes unless asked to keep alive; 1.1 keeps alive unless asked to close.
    let close = last
        || match (req.version, header("connection").as_deref()) {
            (_, Some(c)) if c.split(',').any(|t| t.trim() == "close") => true,
            (Some(0), Some(c)) => !c.split(',').any(|t| t.trim() == "keep-alive"),
            (Some(0), None) => true,
            _ => false,
        };
    if method != "GET" && method != "HEAD" {
        // Any body of it is unread: the connection cannot go on.
        return Reply::fail(405, "only GET and HEAD are served");
    }
    let has_body =
        header("transfer-encoding").is_some() || header("content-length").is_some_and(|l| l != "0");
    if has_body {
        return Reply::fail(400, "a GET request has no body here");
    }
    let a = answer(target);
    Reply::new(a.status, a.content_type, &a.body, method == "HEAD", close)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "",
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Errors of `accept` that more tries will not cure until resources free up.
fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    //! Hostile clients against a server with short limits; each test checks that a polite
    //! client is still answered.

    use super::*;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    /// A server on a free loopback port whose answer to `/big` is `big` bytes long. Returns
    /// its address and what it reported.
    fn server(limits: Limits, big: usize) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        std::thread::spawn(move || {
            serve(
                listener,
                limits,
                move |target| Answer {
                    status: if target.starts_with("/big") || target == "/ok" {
                        200
                    } else {
                        404
                    },
                    content_type: "text/plain",
                    body: if target.starts_with("/big") {
                        "x".repeat(big)
                    } else {
                        format!("you asked {target}")
                    },
                },
                move |m| seen.lock().unwrap().push(m.to_owned()),
            )
        });
        (addr, reports)
    }

    fn short() -> Limits {
        Limits {
            connections: 4,
            request: 1024,
            read: Duration::from_millis(300),
            write: Duration::from_millis(300),
            evict_after: Duration::from_millis(50),
            backoff: Duration::from_millis(20),
        }
    }

    /// Sends `raw` and reads until the server closes: the whole exchange.
    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn polite(addr: SocketAddr) -> String {
        exchange(
            addr,
            b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
    }

    #[test]
    fn keep_alive_pipelining_head_and_http_1_0_are_answered() {
        let (addr, _) = server(short(), 10);
        let all = exchange(
            addr,
            b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\nHEAD /big HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(all.matches("HTTP/1.1 200 OK").count(), 2, "{all}");
        assert!(all.contains("you asked /ok"), "{all}");
        assert!(!all.contains("xxxxxxxxxx"), "HEAD has no body: {all}");
        assert!(all.contains("Content-Length: 10"), "{all}");
        assert!(all.ends_with("you asked /nope"), "{all}");
        let old = exchange(addr, b"GET /ok HTTP/1.0\r\n\r\n");
        assert!(
            old.contains("Connection: close") && old.ends_with("you asked /ok"),
            "{old}"
        );
    }

    #[test]
    fn bad_requests_get_a_clear_status_and_the_connection_closes() {
        let (addr, _) = server(short(), 10);
        for (raw, status) in [
            (
                &b"POST /ok HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"[..],
                "405",
            ),
            (b"GET /ok HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", "400"),
            (
                b"GET /ok HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "400",
            ),
            (b"\x01\x02 nonsense\r\n\r\n", "400"),
        ] {
            let all = exchange(addr, raw);
            assert!(all.starts_with(&format!("HTTP/1.1 {status}")), "{all}");
            assert_eq!(all.matches("HTTP/1.1").count(), 1, "closed after: {all}");
        }
        let many: String = (0..40).map(|i| format!("X-{i}: y\r\n")).collect();
        let all = exchange(addr, format!("GET /ok HTTP/1.1\r\n{many}\r\n").as_bytes());
        assert!(all.starts_with("HTTP/1.1 431"), "{all}");
        assert!(polite(addr).ends_with("you asked /ok"));
    }

    #[test]
    fn an_endless_header_line_is_refused_at_the_bound() {
        let (addr, _) = server(short(), 10);
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nX-Endless: ").unwrap();
        // The server answers and closes once the bound is passed; writing goes on until then.
        let chunk = [b'a'; 1024];
        let mut sent = 0usize;
        while sent < 64 * 1024 * 1024 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
            if sent > 4 * 1024 {
                s.set_nonblocking(true).unwrap();
                let mut peek = [0u8; 64];
                if s.peek(&mut peek).is_ok_and(|n| n > 0) {
                    break;
                }
                s.set_nonblocking(false).unwrap();
            }
        }
        s.set_nonblocking(false).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with("HTTP/1.1 431"), "{out}");
        assert!(
            sent < 64 * 1024 * 1024,
            "the server kept reading an endless line"
        );
        assert!(polite(addr).ends_with("you asked /ok"));
    }

    #[test]
    fn a_client_that_never_reads_holds_nobody_else_up() {
        let (addr, _) = server(short(), 8 * 1024 * 1024);
        // Asks for large answers, pipelined, and never reads.
        let mut hog = TcpStream::connect(addr).unwrap();
        for _ in 0..50 {
            hog.write_all(b"GET /big HTTP/1.1\r\n\r\n").unwrap();
        }
        for _ in 0..20 {
            assert!(polite(addr).ends_with("you asked /ok"));
        }
        // Past the write limit the hog is closed: reading drains what was sent, then ends.
        hog.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        std::thread::sleep(Duration::from_millis(600));
        let mut sink = vec![0u8; 1 << 16];
        let mut got = 0usize;
        loop {
            match hog.read(&mut sink) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n,
            }
        }
        assert!(
            got < 50 * 8 * 1024 * 1024,
            "every answer was written: {got}"
        );
    }

    #[test]
    fn silent_and_half_sent_connections_give_their_slots_to_newcomers() {
        let (addr, _) = server(short(), 10);
        let threads_before = threads();
        let silent: Vec<TcpStream> = (0..300)
            .map(|_| {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"GET /ok HTTP/1.1\r\nHost:").unwrap();
                s
            })
            .collect();
        for _ in 0..10 {
            assert!(polite(addr).ends_with("you asked /ok"));
        }
        // Other tests of this binary start threads meanwhile: the bound allows for them, not
        // for a thread per connection.
        assert!(
            threads() < threads_before + 100,
            "connections cost no threads: {threads_before} -> {}",
            threads()
        );
        // A slow client that keeps sending is still cut at the read limit.
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut closed = false;
        for _ in 0..200 {
            if slow.write_all(b"X").is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            let mut b = [0u8; 1];
            slow.set_nonblocking(true).unwrap();
            let r = slow.read(&mut b);
            slow.set_nonblocking(false).unwrap();
            if matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() != io::ErrorKind::WouldBlock) {
                closed = true;
                break;
            }
        }
        assert!(closed, "a trickling client was never cut off");
        drop(silent);
    }

    #[test]
    fn clients_that_take_their_answer_and_stall_lock_nobody_out() {
        let (addr, _) = server(short(), 64 * 1024 * 1024);
        // Every slot taken by clients that read nothing and close nothing: two asked for a
        // huge answer (stalled writing), two asked to close (draining), the rest sent half a
        // request. A polite client still gets in.
        let mut stalled = Vec::new();
        for i in 0..8 {
            let mut s = TcpStream::connect(addr).unwrap();
            let req: &[u8] = match i % 3 {
                0 => b"GET /big HTTP/1.1\r\n\r\n",
                1 => b"GET /ok HTTP/1.1\r\nConnection: close\r\n\r\n",
                _ => b"GET /ok HTTP/1.1\r\nHost",
            };
            s.write_all(req).unwrap();
            stalled.push(s);
        }
        for _ in 0..5 {
            assert!(polite(addr).ends_with("you asked /ok"));
        }
        drop(stalled);
    }

    #[test]
    fn a_request_then_a_half_close_is_answered() {
        let (addr, _) = server(short(), 10);
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n")
            .unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.contains("you asked /ok"), "{out}");
        assert!(out.ends_with("you asked /nope"), "{out}");
    }

    #[test]
    fn hundreds_of_pipelined_requests_are_all_answered_in_order() {
        let (addr, _) = server(short(), 10);
        let n = 400;
        // As many as fit in the head bound, several times over.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let reqs: String = (0..n)
            .map(|i| format!("GET /{i} HTTP/1.1\r\n\r\n"))
            .collect();
        let writer = {
            let mut w = s.try_clone().unwrap();
            std::thread::spawn(move || {
                w.write_all(reqs.as_bytes()).unwrap();
                w.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        writer.join().unwrap();
        let asked: Vec<&str> = out
            .split("you asked /")
            .skip(1)
            .map(|rest| rest.split("HTTP/1.1").next().unwrap())
            .collect();
        assert_eq!(asked.len(), n, "{}", &out[..out.len().min(500)]);
        for (i, a) in asked.iter().enumerate() {
            assert_eq!(*a, i.to_string());
        }
    }

    /// OS threads of this process.
    fn threads() -> usize {
        std::fs::read_dir("/proc/self/task").unwrap().count()
    }
}
