//! `serve`: bounded concurrency, live connections, graceful stop with clients connected.

use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use greenhub::ext::ObjectKind;
use greenhub::inspect::snapshot;
use greenhub::net::{TcpListener, TcpStream};
use greenhub::{net::serve, spawn};

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < give_up, "gave up waiting until {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Counts handlers running at once, and the most seen.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[test]
fn every_client_is_served_and_concurrency_is_bounded() {
    let gauge = Arc::new(Gauge::default());
    let g = gauge.clone();
    let server = serve(listener(), 4, move |mut conn, _| {
        g.enter();
        let mut buf = [0u8; 8];
        if conn.read_exact(&mut buf).is_ok() {
            greenhub::sleep(Duration::from_millis(2)).ok();
            let _ = conn.write_all(&buf);
        }
        g.leave();
    })
    .unwrap();
    let addr = server.local_addr();
    let clients: Vec<_> = (0..100u64)
        .map(|i| {
            spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(&i.to_be_bytes()).unwrap();
                let mut back = [0u8; 8];
                s.read_exact(&mut back).unwrap();
                u64::from_be_bytes(back)
            })
        })
        .collect();
    for (i, c) in clients.into_iter().enumerate() {
        assert_eq!(c.wait().unwrap(), i as u64);
    }
    assert!(
        gauge.max.load(Ordering::SeqCst) <= 4,
        "more than 4 handlers at once"
    );
    assert_eq!(server.accepted(), 100);
    wait_until("handlers end", || server.connections() == 0);
    let stopped = server.stop(Duration::from_millis(100));
    assert_eq!(stopped.killed, 0);
}

#[test]
fn stopping_lets_handlers_finish_then_kills_the_rest_and_refuses_new_clients() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    let server = serve(listener(), 100, move |mut conn, _| {
        let _guard = Dropped(d.clone());
        let mut first = [0u8; 1];
        if conn.read_exact(&mut first).is_err() {
            return;
        }
        if first[0] == b'q' {
            // A quick request: answered after a short while, within the stop's timeout.
            greenhub::sleep(Duration::from_millis(50)).ok();
            let _ = conn.write_all(b"done");
        } else {
            // An idle client: the handler waits for more that never comes.
            let mut more = [0u8; 1];
            let _ = conn.read(&mut more);
        }
    })
    .unwrap();
    let addr = server.local_addr();
    let quick: Vec<_> = (0..3)
        .map(|_| {
            spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(b"q").unwrap();
                let mut reply = Vec::new();
                s.read_to_end(&mut reply).unwrap();
                reply
            })
        })
        .collect();
    let idle: Vec<TcpStream> = (0..5)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            (&s).write_all(b"i").unwrap();
            s
        })
        .collect();
    wait_until("all eight are handled", || server.connections() == 8);
    let id = server.id();
    let obj = snapshot().objects.into_iter().find(|o| o.id == id).unwrap();
    assert_eq!(obj.kind, ObjectKind::SERVER);
    assert_eq!(obj.counts.get("connections"), Some(&8));

    let stopped = server.stop(Duration::from_millis(500));
    assert_eq!(stopped.finished, 3);
    assert_eq!(stopped.killed, 5);
    for q in quick {
        assert_eq!(q.wait().unwrap(), b"done");
    }
    // Every handler's destructors ran, killed ones included.
    wait_until("all handlers dropped their guards", || {
        dropped.load(Ordering::SeqCst) == 8
    });
    assert_eq!(server.connections(), 0);
    // The idle clients see their connection closed; no new client gets in.
    for s in idle {
        let mut buf = [0u8; 1];
        assert_eq!((&s).read(&mut buf).unwrap_or(0), 0);
    }
    let refused = TcpStream::connect(addr).map(drop).map_err(|e| e.kind());
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
}
