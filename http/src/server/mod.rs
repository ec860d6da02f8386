//! The server: [`serve`] and [`Builder`] start it, [`Server`] stops it. One green thread
//! accepts, at most `max_connections` at a time (the rest wait in the listen backlog, in
//! order), and each connection runs in a green thread of its own (`conn.rs`). `books.rs`
//! keeps what the inspector shows.

mod books;
mod conn;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use greenhub::ext::{Inspect, ObjectInfo, ObjectKind, Registration};
use greenhub::net::{Stopped, TcpListener, TcpStream};
use greenhub::{Event, GreenThread, Semaphore};
use greenhub_tls::TlsAcceptor;
use parking_lot::Mutex;

use crate::body::Body;
use crate::response::Response;
use books::{Books, Connection, Phase};

static KIND: LazyLock<ObjectKind> = LazyLock::new(|| ObjectKind::named("http server"));

/// A request as a handler gets it: `http::Request` with a [`Body`] read from the connection.
/// Its extensions hold the client's address ([`RemoteAddr`]).
pub type Request<'a> = http::Request<Body<'a>>;

/// The address of the client, in every request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// What answers requests: any `Fn(Request) -> Response` shared by the connections.
///
/// A handler runs in the connection's green thread, so it may wait (query a database, call
/// another service) without holding up other connections. A handler that panics gets the
/// client a `500`, and the connection goes on.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, request: Request<'_>) -> Response;
}

impl<F> Handler for F
where
    F: Fn(Request<'_>) -> Response + Send + Sync + 'static,
{
    fn handle(&self, request: Request<'_>) -> Response {
        self(request)
    }
}

/// The server's limits. Each one answers what it refuses with a status that says why, and
/// closes the connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The request line, in bytes (414 past it). Default 8 KiB.
    pub request_line: usize,
    /// The whole request head, in bytes (431 past it). Default 16 KiB.
    pub head: usize,
    /// Header fields (431 past it; at most 128). Default 100.
    pub fields: usize,
    /// A request body, in bytes (413 past it). Default 16 MiB.
    pub body: u64,
    /// From a request's first byte to the end of its head (408 past it): a client sending
    /// its head slowly (slowloris) is closed here. A new connection also gets this long to
    /// send its first byte. Default 10 s.
    pub header_timeout: Duration,
    /// For the whole request body, from when the handler starts (408 to a handler reading
    /// it). Default 60 s.
    pub body_timeout: Option<Duration>,
    /// A kept-alive connection waits this long for its next request, then closes. Default
    /// 30 s.
    pub idle_timeout: Duration,
    /// A write of a response that makes no progress for this long closes the connection (a
    /// client that does not read); a streamed or file response must also be written whole
    /// within it. Default 60 s.
    pub write_timeout: Option<Duration>,
    /// During a graceful stop, how long an idle kept-alive connection is given for its next
    /// request (answered with `Connection: close`) before it is closed: a client that sent a
    /// request just as the stop began is answered, not cut. Default 1 s.
    pub drain_idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            request_line: 8 * 1024,
            head: 16 * 1024,
            fields: 100,
            body: 16 * 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Some(Duration::from_secs(60)),
            idle_timeout: Duration::from_secs(30),
            write_timeout: Some(Duration::from_secs(60)),
            drain_idle: Duration::from_secs(1),
        }
    }
}

/// Configures a server: limits, connection cap, TLS, name, access log.
///
/// ```
/// use std::time::Duration;
/// use greenhub_http::{Builder, Limits, response};
///
/// let server = Builder::new()
///     .limits(Limits { idle_timeout: Duration::from_secs(5), ..Limits::default() })
///     .max_connections(500)
///     .name("api")
///     .bind("127.0.0.1:0", |_req: greenhub_http::Request<'_>| response::text("ok"))
///     .unwrap();
/// server.stop(Duration::from_secs(1));
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    limits: Limits,
    max_connections: usize,
    tls: Option<TlsAcceptor>,
    name: Option<String>,
    access_log: bool,
    stack_size: Option<usize>,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// Default limits, at most 1,024 connections, plain HTTP, access log on.
    pub fn new() -> Builder {
        Builder {
            limits: Limits::default(),
            max_connections: 1024,
            tls: None,
            name: None,
            access_log: true,
            stack_size: None,
        }
    }

    /// The stack of each connection's green thread, in bytes (greenhub's default if unset).
    /// Handlers that recurse deeply, or TLS in a debug build, need more.
    pub fn stack_size(mut self, bytes: usize) -> Builder {
        self.stack_size = Some(bytes);
        self
    }

    /// The limits (see [`Limits`]).
    pub fn limits(mut self, limits: Limits) -> Builder {
        self.limits = limits;
        self
    }

    /// At most `n` connections at once; more wait in the listen backlog, taken in order as
    /// connections end.
    pub fn max_connections(mut self, n: usize) -> Builder {
        self.max_connections = n.max(1);
        self
    }

    /// Serves HTTPS: each connection starts with a TLS handshake (bounded by
    /// `header_timeout`).
    pub fn tls(mut self, acceptor: TlsAcceptor) -> Builder {
        self.tls = Some(acceptor);
        self
    }

    /// The server's name in the snapshot (its address otherwise).
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }

    /// Whether each response is logged in the Common Log Format, through `log` at `info`
    /// with target `greenhub_http::access` (default on).
    pub fn access_log(mut self, on: bool) -> Builder {
        self.access_log = on;
        self
    }

    /// Binds `addr` and serves it with `handler`.
    pub fn bind<A>(self, addr: A, handler: impl Handler) -> io::Result<Server>
    where
        A: ToSocketAddrs + Send + 'static,
    {
        let listener = greenhub::net::Listen::new().backlog(1024).bind(addr)?;
        self.serve(listener, handler)
    }

    /// Serves an open listener with `handler`.
    pub fn serve(self, listener: TcpListener, handler: impl Handler) -> io::Result<Server> {
        // The name is valid, so registering cannot fail.
        let _ = greenhub::notify::heartbeat_field("REQUESTS", served);
        let local = listener.local_addr()?;
        let name = self.name.unwrap_or_else(|| local.to_string());
        let mut limits = self.limits;
        limits.fields = limits.fields.min(crate::wire::head::MAX_FIELDS);
        let shared = Arc::new_cyclic(|weak: &Weak<Shared>| Shared {
            reg: Registration::new(weak.clone()),
            local,
            name,
            limits,
            handler: Box::new(handler),
            tls: self.tls,
            access_log: self.access_log,
            stack_size: self.stack_size,
            max_connections: self.max_connections,
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            ended: AtomicU64::new(0),
            next_conn: AtomicU64::new(1),
            acceptor: Mutex::new(None),
            stopped: Event::new(),
            permits: Semaphore::new(self.max_connections),
            books: Books::new(),
        });
        let s = shared.clone();
        let acceptor = greenhub::thread::Builder::new()
            .name(format!("http accept {}", shared.name))
            .spawn(move || accept_loop(s, listener))
            .map_err(io::Error::other)?;
        *shared.acceptor.lock() = Some(acceptor);
        Ok(Server { shared })
    }
}

/// Serves `addr` with `handler`, with the default [`Builder`].
///
/// ```
/// use std::io::{Read, Write};
/// use greenhub_http::{response, Request};
///
/// let server = greenhub_http::serve("127.0.0.1:0", |req: Request<'_>| {
///     response::text(format!("hello from {}", req.uri().path()))
/// })
/// .unwrap();
/// let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
/// conn.write_all(b"GET /there HTTP/1.0\r\n\r\n").unwrap();
/// let mut answer = String::new();
/// conn.read_to_string(&mut answer).unwrap();
/// assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
/// assert!(answer.ends_with("hello from /there"));
/// ```
pub fn serve<A>(addr: A, handler: impl Handler) -> io::Result<Server>
where
    A: ToSocketAddrs + Send + 'static,
{
    Builder::new().bind(addr, handler)
}

pub(crate) struct Shared {
    reg: Registration,
    local: SocketAddr,
    name: String,
    pub(crate) limits: Limits,
    pub(crate) handler: Box<dyn Handler>,
    tls: Option<TlsAcceptor>,
    pub(crate) access_log: bool,
    stack_size: Option<usize>,
    max_connections: usize,
    pub(crate) stopping: AtomicBool,
    conns: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Connections that have left `conns`.
    ended: AtomicU64,
    next_conn: AtomicU64,
    acceptor: Mutex<Option<GreenThread<()>>>,
    /// Set when a stop has ended every connection.
    stopped: Event,
    permits: Semaphore,
    pub(crate) books: Books,
}

impl Inspect for Shared {
    fn inspect(&self) -> ObjectInfo {
        let conns: Vec<Arc<Connection>> = self.conns.lock().values().cloned().collect();
        let in_flight = conns
            .iter()
            .filter(|c| c.phase() == Phase::Handling)
            .count();
        let [c1, c2, c3, c4, c5] = self.books.by_class();
        ObjectInfo::new(*KIND, self.reg.id(), Some(&self.name), 0)
            .count("connections", conns.len() as u64)
            .count("in_flight", in_flight as u64)
            .count("max_connections", self.max_connections as u64)
            .count("stopping", u64::from(self.stopping.load(Ordering::Relaxed)))
            .total("accepted", self.books.accepted.load(Ordering::Relaxed))
            .total("requests", self.books.requests.load(Ordering::Relaxed))
            .total("refused", self.books.refused.load(Ordering::Relaxed))
            .total("panics", self.books.panics.load(Ordering::Relaxed))
            .total("responses_1xx", c1)
            .total("responses_2xx", c2)
            .total("responses_3xx", c3)
            .total("responses_4xx", c4)
            .total("responses_5xx", c5)
            .with_detail(self.books.detail(&conns))
    }
}

fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        // A place first: past the cap, clients wait in the backlog, in order.
        let Ok(permit) = shared.permits.acquire() else {
            return;
        };
        permit.forget();
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                let _ = shared.permits.release();
                log::warn!("greenhub-http: {}: accept failed: {e}", shared.name);
                greenhub::sleep(Duration::from_millis(10)).ok();
                continue;
            }
        };
        shared.books.accepted.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Connection::new(id, peer));
        shared.conns.lock().insert(id, conn.clone());
        let leave = Leave {
            shared: shared.clone(),
            id,
        };
        let c = conn.clone();
        let mut builder = greenhub::thread::Builder::new().name(format!("http {peer}"));
        if let Some(bytes) = shared.stack_size {
            builder = builder.stack_size(bytes);
        }
        let spawned = builder.spawn(move || run_connection(leave, c, stream));
        match spawned {
            Ok(t) => {
                let _ = conn.thread.set(t);
            }
            // The closure, and the guard in it, are dropped: the place is given back.
            Err(e) => {
                log::warn!(
                    "greenhub-http: {}: no green thread for {peer}: {e}",
                    shared.name
                );
            }
        }
    }
}

/// Leaves the books and gives the place back however the connection ends, also when its
/// green thread is killed before it first runs (the closure holding this is dropped).
struct Leave {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Leave {
    fn drop(&mut self) {
        if self.shared.conns.lock().remove(&self.id).is_some() {
            self.shared.ended.fetch_add(1, Ordering::SeqCst);
        }
        let _ = self.shared.permits.release();
    }
}

fn run_connection(leave: Leave, conn: Arc<Connection>, stream: TcpStream) {
    let shared = leave.shared.clone();
    let _ = stream.set_nodelay(true);
    match &shared.tls {
        None => conn::serve(&shared, &conn, stream),
        Some(acceptor) => {
            let handshake =
                greenhub::with_timeout(shared.limits.header_timeout, || acceptor.accept(stream));
            match handshake {
                Ok(tls) => conn::serve(&shared, &conn, tls),
                Err(e) => log::debug!(
                    "greenhub-http: {}: TLS handshake with {} failed: {e}",
                    shared.name,
                    conn.peer
                ),
            }
        }
    }
}

/// Requests read by every server of the process: sent to a supervisor with each heartbeat
/// (`X_GREENHUB_REQUESTS`, see `greenhub::notify`), which may recycle the process after a
/// number of them.
pub(crate) static SERVED: AtomicU64 = AtomicU64::new(0);

fn served() -> u64 {
    SERVED.load(Ordering::Relaxed)
}

/// How often a graceful stop looks at its connections.
const STOP_POLL: Duration = Duration::from_millis(5);

/// A running server. Dropping the handle leaves it running; [`Server::stop`] stops it.
pub struct Server {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("name", &self.shared.name)
            .field("local", &self.shared.local)
            .field("connections", &self.connections())
            .finish()
    }
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// Its id in the snapshot (an object of kind `http server`).
    pub fn id(&self) -> u64 {
        self.shared.reg.id()
    }

    /// Requests read so far (answered, being answered, or refused for a bad head).
    pub fn requests(&self) -> u64 {
        self.shared.books.requests.load(Ordering::Relaxed)
    }

    /// Open connections now.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().len()
    }

    /// Stops gracefully: accepts no more connections; lets requests in flight finish, each
    /// answered with `Connection: close` (and the connection given up to two seconds for the
    /// client to read it); gives idle kept-alive connections [`Limits::drain_idle`] for their
    /// next request, answered the same way, then closes the silent ones; at `timeout` kills
    /// what is left. Returns when every connection has ended, with how many ended by
    /// themselves (idle ones closed, busy ones after their answer) and how many were killed.
    ///
    /// A client under steady keep-alive load sees every request it sent answered: the one
    /// it sent just as the stop began is answered with `Connection: close`, not cut.
    pub fn stop(&self, timeout: Duration) -> Stopped {
        let started = Instant::now();
        let deadline = started + timeout;
        let grace_end = started + self.shared.limits.drain_idle.min(timeout);
        let ended_before = self.shared.ended.load(Ordering::SeqCst);
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.shared.acceptor.lock().take() {
            let _ = acceptor.kill_and_wait(Duration::from_secs(5));
        }
        let mut killed = 0;
        loop {
            let left: Vec<Arc<Connection>> = self.shared.conns.lock().values().cloned().collect();
            if left.is_empty() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                // Every one is told first, then all are waited for together: N stuck
                // connections cost one wait, not N.
                for c in &left {
                    if let Some(t) = c.thread.get() {
                        t.kill();
                    }
                    killed += 1;
                }
                let until = Instant::now() + Duration::from_secs(5);
                for c in &left {
                    if let Some(t) = c.thread.get() {
                        let left = until.saturating_duration_since(Instant::now());
                        let _ = greenhub::ext::without_deadline(|| t.wait_timeout(left));
                    }
                }
                break;
            }
            if now >= grace_end {
                for c in &left {
                    // Idle past the grace: the client is silent, the connection closes.
                    if c.claim_for_stop()
                        && let Some(t) = c.thread.get()
                    {
                        t.kill();
                    }
                }
            }
            let _ = greenhub::ext::without_deadline(|| greenhub::sleep(STOP_POLL));
        }
        // Every connection open when the stop began, or accepted since, has left the map.
        let ended = self.shared.ended.load(Ordering::SeqCst) - ended_before;
        let stopped = Stopped {
            finished: (ended as usize).saturating_sub(killed),
            killed,
        };
        let _ = self.shared.stopped.set(());
        stopped
    }

    /// Waits until the server has stopped: another green thread (or a signal handler) calls
    /// [`Server::stop`], and every connection has ended.
    pub fn wait(&self) {
        let _ = self.shared.stopped.wait();
    }
}
