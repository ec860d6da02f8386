//! [`serve`]: a TCP server that runs each connection in a green thread from a bounded pool
//! (eventlet's `serve`, gevent's `StreamServer`), with a count of live connections and a
//! graceful stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use greenhub_snapshot::{ObjectInfo, ObjectKind};

use crate::core::object::Registration;
use crate::core::registry::Inspect;
use crate::core::report::{self, Throttle};
use crate::green::thread::{Builder, GreenThread};
use crate::green::time::sleep;
use crate::net::socket::{TcpListener, TcpStream};
use crate::sync::greenpool::GreenPool;

struct Inner {
    reg: Registration,
    local: SocketAddr,
    concurrency: usize,
    /// The handlers running now, by green thread id (kept to be killed by a stop).
    live: Mutex<HashMap<u64, GreenThread<()>>>,
    accepted: AtomicU64,
    stopping: AtomicBool,
    acceptor: Mutex<Option<GreenThread<()>>>,
}

impl Inspect for Inner {
    fn inspect(&self) -> ObjectInfo {
        ObjectInfo::new(
            ObjectKind::SERVER,
            self.reg.id(),
            Some(&self.local.to_string()),
            0,
        )
        .count("connections", self.live.lock().len() as u64)
        .count("accepted", self.accepted.load(Ordering::Relaxed))
        .count("concurrency", self.concurrency as u64)
    }
}

/// A running server; see [`serve`]. Dropping the handle leaves it running.
pub struct Server {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local", &self.inner.local)
            .field("connections", &self.connections())
            .finish()
    }
}

/// What [`Server::stop`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// Connections whose handlers ended by themselves within the timeout.
    pub finished: usize,
    /// Connections whose handlers were still running at the timeout and were killed.
    pub killed: usize,
}

/// Serves the connections of `listener`, each in a green thread running `handler`, at most
/// `concurrency` at a time: past that, the server stops accepting until a handler ends
/// (backpressure; waiting clients queue in the listen backlog). The server appears in the
/// snapshot as an object of kind `server` with its live connections.
///
/// ```
/// use std::io::{Read, Write};
/// use std::time::Duration;
/// use greenhub::net::{TcpListener, TcpStream};
///
/// let server = greenhub::net::serve(TcpListener::bind("127.0.0.1:0").unwrap(), 100, |mut conn, _peer| {
///     let mut buf = [0; 64];
///     while let Ok(n @ 1..) = conn.read(&mut buf) {
///         if conn.write_all(&buf[..n]).is_err() {
///             break;
///         }
///     }
/// })
/// .unwrap();
/// let addr = server.local_addr();
/// let echoed = greenhub::spawn(move || {
///     let mut s = TcpStream::connect(addr).unwrap();
///     s.write_all(b"ping").unwrap();
///     let mut back = [0; 4];
///     s.read_exact(&mut back).unwrap();
///     back
/// });
/// assert_eq!(&echoed.wait().unwrap(), b"ping");
/// // The client has gone, so its handler ends by itself: nothing to kill.
/// let stopped = server.stop(Duration::from_secs(1));
/// assert_eq!(stopped.killed, 0);
/// ```
pub fn serve<F>(listener: TcpListener, concurrency: usize, handler: F) -> std::io::Result<Server>
where
    F: Fn(TcpStream, SocketAddr) + Send + Sync + 'static,
{
    let local = listener.local_addr()?;
    let concurrency = concurrency.max(1);
    let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
        reg: Registration::new(weak.clone()),
        local,
        concurrency,
        live: Mutex::new(HashMap::new()),
        accepted: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        acceptor: Mutex::new(None),
    });
    let pool = GreenPool::new(concurrency).named(format!("server {local}"));
    let handler = Arc::new(handler);
    let weak = Arc::downgrade(&inner);
    let acceptor = Builder::new()
        .name(format!("server {local}"))
        .spawn(move || accept_loop(listener, pool, handler, weak))
        .map_err(std::io::Error::other)?;
    *inner.acceptor.lock() = Some(acceptor);
    Ok(Server { inner })
}

fn accept_loop<F>(listener: TcpListener, pool: GreenPool, handler: Arc<F>, server: Weak<Inner>)
where
    F: Fn(TcpStream, SocketAddr) + Send + Sync + 'static,
{
    loop {
        let (conn, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) => {
                // `accept` waits out a lack of descriptors itself; what is left is rare and
                // may last (a listener shut down under it): said once a minute.
                static REPORTED: Throttle = Throttle::new();
                if REPORTED.allow(Duration::from_secs(60)) {
                    report::warn(&format!(
                        "greenhub: server {:?}: accept failed: {e}",
                        listener.local_addr()
                    ));
                }
                if sleep(Duration::from_millis(10)).is_err() {
                    return;
                }
                continue;
            }
        };
        let Some(inner) = server.upgrade() else {
            return;
        };
        if inner.stopping.load(Ordering::Acquire) {
            return;
        }
        inner.accepted.fetch_add(1, Ordering::Relaxed);
        let h = handler.clone();
        // Past `concurrency` handlers this waits for one to end; meanwhile further clients
        // wait in the listen backlog.
        let Ok(t) = pool.spawn(move || h(conn, peer)) else {
            return;
        };
        let id = t.id();
        // The handler's end takes it off the list. The link runs in another green thread (or
        // here, if the handler has already ended), so a handler never drops the last handle
        // to itself; the flag, set under the list's lock, keeps an ended handler off it.
        let ended = Arc::new(AtomicBool::new(false));
        let (flag, done) = (ended.clone(), Arc::downgrade(&inner));
        t.link(move |_| {
            if let Some(inner) = done.upgrade() {
                let mut live = inner.live.lock();
                flag.store(true, Ordering::Relaxed);
                live.remove(&id);
            }
        });
        let mut live = inner.live.lock();
        if !ended.load(Ordering::Relaxed) {
            live.insert(id, t);
        }
    }
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Connections being handled now.
    pub fn connections(&self) -> usize {
        self.inner.live.lock().len()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Relaxed)
    }

    /// The server's id in the snapshot.
    pub fn id(&self) -> u64 {
        self.inner.reg.id()
    }

    /// Waits until the server stops accepting (after [`Server::stop`], or if its listener
    /// fails for good).
    pub fn wait(&self) {
        let acceptor = self.inner.acceptor.lock().take();
        if let Some(a) = acceptor {
            let _ = a.wait();
        }
    }

    /// Stops the server: no new connection is accepted (the listener closes), handlers
    /// running are given until `timeout` to end by themselves, and those still running then
    /// are killed (their destructors run). Works from green and OS threads.
    pub fn stop(&self, timeout: Duration) -> Stopped {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::Release);
        let acceptor = inner.acceptor.lock().take();
        if let Some(a) = acceptor {
            a.kill();
            let _ = a.wait();
        }
        let before = inner.live.lock().len();
        let deadline = Instant::now() + timeout;
        while !inner.live.lock().is_empty() && Instant::now() < deadline {
            nap(Duration::from_millis(2));
        }
        let left: Vec<GreenThread<()>> = inner.live.lock().drain().map(|(_, t)| t).collect();
        let killed = left.len();
        for t in &left {
            t.kill();
        }
        for t in left {
            // A handler that never waits cannot be killed: give up on it after a while
            // rather than hang the stop.
            if t.wait_timeout(Duration::from_secs(1)).is_ok() {
                let _ = t.wait();
            }
        }
        Stopped {
            finished: before.saturating_sub(killed),
            killed,
        }
    }
}

/// Sleeps the green thread, or the OS thread when called from one.
fn nap(d: Duration) {
    if may::coroutine::is_coroutine() {
        let _ = sleep(d);
    } else {
        std::thread::sleep(d);
    }
}
