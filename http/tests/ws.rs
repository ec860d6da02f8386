//! WebSocket on the green server and client: many sockets echoing in order, ping and pong,
//! the close handshake, size and time limits, refused handshakes, and what the inspector
//! shows.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use greenhub::Queue;
use greenhub_http::ws::{self, Config, Error, Message};
use greenhub_http::{Builder, Request, Response, Server, response};

/// Echoes until the socket ends; each server-side ending is reported on `ends`.
fn echo(config: Config, ends: Queue<String>) -> impl Fn(Request<'_>) -> Response + Send + Sync {
    move |req: Request<'_>| {
        if req.uri().path() != "/ws" {
            return response::text("plain");
        }
        let ends = ends.clone();
        ws::upgrade(&req, config, move |mut socket| {
            let end = loop {
                match socket.read() {
                    Ok(m) if m.is_text() || m.is_binary() => {
                        if let Err(e) = socket.send(m) {
                            break format!("send: {e}");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break format!("{e}"),
                }
            };
            let _ = ends.put(end);
        })
    }
}

fn start(config: Config) -> (Server, Queue<String>) {
    let ends = Queue::unbounded();
    let server = Builder::new()
        .bind("127.0.0.1:0", echo(config, ends.clone()))
        .unwrap();
    (server, ends)
}

#[test]
fn many_sockets_echo_in_order_and_close_cleanly() {
    let (server, ends) = start(Config::default());
    let url = format!("ws://{}/ws", server.local_addr());
    let wrong = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..100)
        .map(|i| {
            let (url, wrong) = (url.clone(), wrong.clone());
            greenhub::spawn(move || {
                let (mut s, _) = ws::connect(&url, Config::default()).unwrap();
                for j in 0..20 {
                    let text = format!("{i}:{j}");
                    s.send(Message::text(text.clone())).unwrap();
                    s.send(Message::binary(vec![i as u8, j as u8])).unwrap();
                    if s.read().unwrap() != Message::text(text) {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                    if s.read().unwrap() != Message::binary(vec![i as u8, j as u8]) {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // Ping: the server answers pong by itself.
                s.send(Message::Ping(b"are you there".to_vec().into()))
                    .unwrap();
                let pong = s.read().unwrap();
                assert_eq!(pong, Message::Pong(b"are you there".to_vec().into()));
                s.close(None).unwrap();
                loop {
                    match s.read() {
                        Ok(_) => {}
                        Err(Error::ConnectionClosed) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.wait().unwrap();
    }
    assert_eq!(wrong.load(Ordering::SeqCst), 0);
    for _ in 0..100 {
        let end = ends.get_timeout(Duration::from_secs(10)).unwrap();
        assert!(end.contains("closed normally"), "{end}");
    }
    server.stop(Duration::from_secs(5));
}

#[test]
fn limits_end_sockets_that_send_too_much_or_nothing() {
    let (server, ends) = start(Config {
        max_message: 1024,
        read_timeout: Some(Duration::from_millis(100)),
        ..Config::default()
    });
    let url = format!("ws://{}/ws", server.local_addr());
    let t = greenhub::spawn(move || {
        let (mut big, _) = ws::connect(&url, Config::default()).unwrap();
        big.send(Message::binary(vec![0u8; 4000])).unwrap();
        let big_end = big.read();
        let (mut silent, _) = ws::connect(&url, Config::default()).unwrap();
        let silent_end = silent.read();
        (big_end.is_err(), silent_end.is_err())
    });
    assert_eq!(t.wait().unwrap(), (true, true));
    let mut seen = vec![
        ends.get_timeout(Duration::from_secs(10)).unwrap(),
        ends.get_timeout(Duration::from_secs(10)).unwrap(),
    ];
    seen.sort();
    assert!(
        seen.iter().any(|e| e.contains("Space limit exceeded")),
        "{seen:?}"
    );
    assert!(seen.iter().any(|e| e.contains("timed out")), "{seen:?}");
    server.stop(Duration::from_secs(5));
}

#[test]
fn refused_handshakes_and_the_inspector() {
    let (server, _ends) = start(Config::default());
    let addr = server.local_addr();
    let mut c = common::Client::connect(addr);
    c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\n\r\n");
    let a = c.read(false);
    assert_eq!((a.status, a.header("upgrade")), (426, Some("websocket")));
    c.send(b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(c.read(false).status, 400, "no key");
    assert!(ws::connect("http://example.invalid/", Config::default()).is_err());

    // An open socket shows as an upgraded connection.
    let url = format!("ws://{addr}/ws");
    let held = greenhub::spawn(move || {
        let (s, _) = ws::connect(&url, Config::default()).unwrap();
        greenhub::sleep(Duration::from_secs(60)).ok();
        drop(s);
    });
    let t0 = std::time::Instant::now();
    loop {
        let snap = greenhub::inspect::snapshot();
        let shown = snap.objects.iter().find(|o| o.id == server.id()).unwrap();
        let conns = shown.detail.as_ref().unwrap()["connections"]
            .as_array()
            .unwrap()
            .clone();
        if conns.iter().any(|c| c["phase"] == "upgraded") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{conns:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    held.kill();
    let _ = held.wait();
    server.stop(Duration::from_secs(5));
}

#[test]
fn the_servers_http_time_limits_do_not_apply_to_an_upgraded_socket() {
    let ends = Queue::unbounded();
    let server = Builder::new()
        .limits(greenhub_http::Limits {
            idle_timeout: Duration::from_millis(100),
            ..greenhub_http::Limits::default()
        })
        .bind("127.0.0.1:0", echo(Config::default(), ends))
        .unwrap();
    let url = format!("ws://{}/ws", server.local_addr());
    let t = greenhub::spawn(move || {
        let (mut s, _) = ws::connect(&url, Config::default()).unwrap();
        // Quiet for longer than the HTTP idle limit: the socket's own limit (minutes) holds.
        greenhub::sleep(Duration::from_millis(400)).unwrap();
        s.send(Message::text("still here")).unwrap();
        s.read().unwrap()
    });
    assert_eq!(t.wait().unwrap(), Message::text("still here"));
    server.stop(Duration::from_secs(5));
}
