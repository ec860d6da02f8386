//! The server against real sockets: HTTP/1.1 as clients use it (keep-alive, pipelining,
//! chunked both ways, 100-continue, HEAD, HTTP/1.0, Connection: close), every limit with the
//! status it promises, slow and vanishing clients, panicking and killed handlers, graceful
//! stop with requests in flight, and what the inspector shows.

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::Client;
use greenhub::Event;
use greenhub_http::{Body, Builder, Limits, Request, Response, Server, response};
use http::StatusCode;

/// The handler every test serves.
fn app(gate: Event) -> impl Fn(Request<'_>) -> Response + Send + Sync + 'static {
    move |mut req: Request<'_>| {
        let path = req.uri().path().to_string();
        match path.as_str() {
            "/echo" => match req.body_mut().bytes() {
                Ok(body) => {
                    let mut r = response::text(body);
                    r.headers_mut()
                        .insert("x-method", req.method().as_str().parse().unwrap());
                    r
                }
                Err(e) => e.response(),
            },
            "/ignore" => response::text("ignored"),
            "/stream" => response::stream(
                "text/plain",
                std::io::Cursor::new(b"one two three".repeat(1000)),
            ),
            "/panic" => panic!("the handler fell over"),
            "/wait" => {
                gate.wait().unwrap();
                response::text("waited")
            }
            "/sleep" => {
                greenhub::sleep(Duration::from_millis(50)).unwrap();
                response::text("slept")
            }
            "/json" => match req.body_mut().json::<serde_json::Value>() {
                Ok(v) => response::json(&serde_json::json!({ "got": v["n"] })),
                Err(e) => e.response(),
            },
            "/nocontent" => response::status(StatusCode::NO_CONTENT),
            "/notmodified" => {
                let mut r = http::Response::new(greenhub_http::Payload::Empty);
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            }
            "/declared" => {
                // A HEAD handler that says how long the GET answer would be, without it.
                let mut r = http::Response::new(greenhub_http::Payload::Empty);
                r.headers_mut()
                    .insert("content-length", "1234".parse().unwrap());
                r
            }
            _ => response::text(format!("path {path}")),
        }
    }
}

fn start(limits: Limits) -> (Server, Event) {
    common::show_logs();
    let gate = Event::new();
    let server = Builder::new()
        .limits(limits)
        .bind("127.0.0.1:0", app(gate.clone()))
        .unwrap();
    (server, gate)
}

fn quick_limits() -> Limits {
    Limits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        body_timeout: Some(Duration::from_millis(500)),
        body: 1024,
        request_line: 256,
        head: 1024,
        fields: 16,
        ..Limits::default()
    }
}

#[test]
fn keep_alive_and_pipelined_requests_answered_in_order() {
    let (server, _) = start(Limits::default());
    let mut c = Client::connect(server.local_addr());
    let a = c.get("/first");
    assert_eq!((a.status, a.text().as_str()), (200, "path /first"));
    assert!(a.header("date").is_some_and(|d| d.ends_with("GMT")));
    assert_eq!(a.header("content-length"), Some("11"));
    assert_eq!(
        c.get("/second").text(),
        "path /second",
        "the connection was kept"
    );

    // 200 requests in one write: 200 answers, in order.
    let burst: String = (0..200)
        .map(|i| format!("GET /p{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    c.send(burst.as_bytes());
    for i in 0..200 {
        assert_eq!(c.read(false).text(), format!("path /p{i}"));
    }
    // Pipelined bodies, mixed with body-less requests.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
    assert_eq!(c.read(false).text(), "hello");
    assert_eq!(c.read(false).text(), "path /x");
    assert_eq!(c.read(false).text(), "abc");
    server.stop(Duration::from_secs(5));
}

#[test]
fn chunked_in_and_out_whatever_the_write_sizes() {
    let (server, _) = start(Limits::default());
    let mut c = Client::connect(server.local_addr());
    let body = "x".repeat(5000);
    let mut chunked = Vec::new();
    for piece in body.as_bytes().chunks(333) {
        chunked.extend_from_slice(format!("{:x};ext=1\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\nTrailer: yes\r\n\r\n");
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    // Dribbled out a few bytes at a time.
    for piece in chunked.chunks(7) {
        c.send(piece);
    }
    assert_eq!(c.read(false).text(), body);
    let streamed = c.get("/stream");
    assert_eq!(streamed.header("transfer-encoding"), Some("chunked"));
    assert_eq!(streamed.body, b"one two three".repeat(1000));
    assert_eq!(c.get("/after").text(), "path /after");
    server.stop(Duration::from_secs(5));
}

#[test]
fn expect_100_continue_head_and_no_content() {
    let (server, _) = start(Limits::default());
    let mut c = Client::connect(server.local_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n");
    let interim = c.read(false);
    assert_eq!(interim.status, 100, "the handler's read asks for the body");
    c.send(b"body");
    assert_eq!(c.read(false).text(), "body");

    // A handler that never reads: no 100, the answer, and the connection closes (the
    // client may or may not send the body now).
    c.send(
        b"POST /ignore HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
    );
    let a = c.read(false);
    assert_eq!((a.status, a.header("connection")), (200, Some("close")));
    assert!(c.closed_within(Duration::from_secs(10)));

    let mut c = Client::connect(server.local_addr());
    c.send(b"HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n");
    let h = c.read(true);
    assert_eq!(h.status, 200);
    c.send(b"HEAD /anything HTTP/1.1\r\nHost: t\r\n\r\n");
    let h = c.read(true);
    assert_eq!(
        h.header("content-length"),
        Some("14"),
        "the length a GET would have"
    );
    let n = c.get("/nocontent");
    assert_eq!(
        (n.status, n.body.len(), n.header("content-length")),
        (204, 0, None)
    );
    assert_eq!(c.get("/still").text(), "path /still");
    server.stop(Duration::from_secs(5));
}

#[test]
fn http_1_0_and_connection_close() {
    let (server, _) = start(Limits::default());
    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /old HTTP/1.0\r\n\r\n");
    let a = c.read(false);
    assert_eq!(
        (a.text().as_str(), a.header("connection")),
        ("path /old", Some("close"))
    );
    assert!(c.closed_within(Duration::from_secs(10)));

    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let a = c.read(false);
    assert_eq!(a.header("connection"), Some("keep-alive"));
    // A stream to an HTTP/1.0 client: no chunks, the end of the connection ends it.
    c.send(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let s = c.read(false);
    assert_eq!(s.header("transfer-encoding"), None);
    assert_eq!(s.body, b"one two three".repeat(1000));

    let mut c = Client::connect(server.local_addr());
    c.send(b"GET /bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(c.read(false).header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(10)));
    server.stop(Duration::from_secs(5));
}

#[test]
fn every_limit_answers_with_its_status_and_closes() {
    // Sizes are what this test is about: time limits generous enough for a busy machine.
    let (server, _) = start(Limits {
        header_timeout: Duration::from_secs(30),
        body_timeout: Some(Duration::from_secs(30)),
        ..quick_limits()
    });
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(300)).into_bytes(), 414),
        (format!("GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n", "b".repeat(2000)).into_bytes(), 431),
        (
            format!("GET / HTTP/1.1\r\nHost: t\r\n{}\r\n", "X: y\r\n".repeat(20)).into_bytes(),
            431,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413),
        (b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 501),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n".to_vec(), 505),
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), 400),
        (
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            400,
        ),
    ];
    for (request, status) in cases {
        let mut c = Client::connect(server.local_addr());
        c.send(&request);
        let a = c.read(false);
        assert_eq!(a.status, status, "{:?}", String::from_utf8_lossy(&request));
        assert_eq!(a.header("connection"), Some("close"));
        assert!(c.closed_within(Duration::from_secs(10)));
    }
    // A chunked body past the limit: the handler's read fails, and it answers 413.
    let mut c = Client::connect(server.local_addr());
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        c.send(format!("400\r\n{}\r\n", "z".repeat(0x400)).as_bytes());
    }
    let a = c.read(false);
    assert_eq!(a.status, 413);
    assert!(c.closed_within(Duration::from_secs(10)));
    // Malformed JSON: the handler says 400.
    let mut c = Client::connect(server.local_addr());
    c.send(b"POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\n{\"n\": }");
    assert_eq!(c.read(false).status, 400);
    c.send(b"POST /json HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\n{\"n\": 3}");
    assert_eq!(c.read(false).text(), "{\"got\":3}");
    server.stop(Duration::from_secs(5));
}

#[test]
fn slow_silent_and_vanishing_clients_are_closed_at_their_deadlines_and_cost_nothing_meanwhile() {
    let (server, _) = start(quick_limits());
    let addr = server.local_addr();
    // Slowloris: many clients sending a head a byte at a time.
    let slow: Vec<_> = (0..100)
        .map(|_| {
            let mut c = Client::connect(addr);
            c.send(b"GET / HTTP/1.1\r\nHo");
            c
        })
        .collect();
    // Silent clients: connected, nothing sent.
    let silent: Vec<_> = (0..100).map(|_| Client::connect(addr)).collect();
    // Meanwhile the server serves.
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/busy").text(), "path /busy");
    for mut s in slow {
        let a = s.read(false);
        assert_eq!(a.status, 408);
        assert!(s.closed_within(Duration::from_secs(10)));
    }
    for mut s in silent {
        assert!(
            s.closed_within(Duration::from_secs(10)),
            "a silent client stays open"
        );
    }
    // Idle past the keep-alive limit: closed.
    assert!(c.closed_within(Duration::from_secs(10)));

    // A body that stops coming: the handler's read times out, it answers 408.
    let mut c = Client::connect(addr);
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly part");
    assert_eq!(c.read(false).status, 408);
    // A client that vanishes mid-body: the server goes on.
    let mut gone = Client::connect(addr);
    gone.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\npart");
    drop(gone);
    let mut c = Client::connect(addr);
    assert_eq!(c.get("/after").text(), "path /after");
    let t0 = Instant::now();
    while server.connections() > 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "closed clients' connections linger"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    server.stop(Duration::from_secs(5));
}

#[test]
fn a_panicking_handler_gets_a_500_and_the_connection_goes_on() {
    let (server, _) = start(Limits::default());
    let mut c = Client::connect(server.local_addr());
    for _ in 0..3 {
        assert_eq!(c.get("/panic").status, 500);
        assert_eq!(c.get("/fine").text(), "path /fine");
    }
    let info = greenhub::inspect::snapshot();
    let shown = info.objects.iter().find(|o| o.id == server.id()).unwrap();
    assert_eq!(shown.totals["panics"], 3);
    assert_eq!(shown.totals["responses_5xx"], 3);
    server.stop(Duration::from_secs(5));
}

#[test]
fn in_flight_requests_show_in_the_snapshot_and_a_killed_handler_closes_only_its_connection() {
    let (server, gate) = start(Limits::default());
    let addr = server.local_addr();
    let mut waiting = Client::connect(addr);
    waiting.send(b"GET /wait?who=me HTTP/1.1\r\nHost: t\r\n\r\n");
    let t0 = Instant::now();
    let flight = loop {
        let snap = greenhub::inspect::snapshot();
        let shown = snap
            .objects
            .iter()
            .find(|o| o.id == server.id())
            .unwrap()
            .clone();
        if shown.counts["in_flight"] == 1 {
            break shown;
        }
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    };
    let detail = flight.detail.unwrap();
    let req = &detail["in_flight"][0];
    assert_eq!(
        (req["method"].as_str(), req["target"].as_str()),
        (Some("GET"), Some("/wait?who=me"))
    );
    let thread = req["thread"].as_u64().unwrap();
    // The connection's green thread waits on the event, as the snapshot says.
    let snap = greenhub::inspect::snapshot();
    let t = snap.threads.iter().find(|t| t.id == thread).unwrap();
    assert_eq!(
        t.waiting_on,
        Some(greenhub::ext::WaitOn::Object {
            object: greenhub::ext::ObjectKind::EVENT,
            id: gate.id(),
        })
    );
    let mut other = Client::connect(addr);
    // Killing the handler's thread closes that connection only.
    let killer = greenhub::spawn(move || {
        let snap = greenhub::inspect::snapshot();
        snap.threads.iter().any(|t| t.id == thread)
    });
    assert!(killer.wait().unwrap());
    kill_thread(thread);
    assert!(waiting.closed_within(Duration::from_secs(10)));
    assert_eq!(other.get("/ok").text(), "path /ok");
    server.stop(Duration::from_secs(5));
}

/// Kills a green thread by id, as an operator would.
fn kill_thread(id: u64) {
    assert!(
        greenhub::thread::kill(id),
        "green thread #{id} is gone already"
    );
}

#[test]
fn graceful_stop_finishes_requests_in_flight_closes_idle_ones_and_loses_none() {
    let (server, gate) = start(Limits::default());
    let addr = server.local_addr();
    let busy: Vec<_> = (0..20)
        .map(|i| {
            let mut c = Client::connect(addr);
            c.send(format!("GET /wait?{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
            c
        })
        .collect();
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/warm").status, 200);
    let t0 = Instant::now();
    while server.connections() < 21 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    let server = Arc::new(server);
    let stopper = {
        let server = server.clone();
        greenhub::spawn(move || server.stop(Duration::from_secs(30)))
    };
    // Idle connections close at once; new ones are refused.
    assert!(idle.closed_within(Duration::from_secs(10)));
    let t0 = Instant::now();
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still accepting after stop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    gate.set(()).unwrap();
    let answered = AtomicUsize::new(0);
    for mut c in busy {
        let a = c.read(false);
        assert_eq!((a.status, a.text().as_str()), (200, "waited"));
        assert_eq!(a.header("connection"), Some("close"));
        answered.fetch_add(1, Ordering::SeqCst);
    }
    let stopped = stopper.wait().unwrap();
    assert_eq!(answered.load(Ordering::SeqCst), 20);
    assert_eq!((stopped.finished, stopped.killed), (21, 0));
}

#[test]
fn graceful_stop_under_steady_keep_alive_load_answers_every_request_sent() {
    // Clients that send their next request the moment an answer arrives: at any instant
    // some of their connections are idle between two requests. Each request sent is
    // answered; the last one says `Connection: close`; none is cut.
    for round in 0..5 {
        let (server, _) = start(Limits {
            drain_idle: Duration::from_secs(10),
            ..Limits::default()
        });
        let addr = server.local_addr();
        // Clients that have had their first answer: the stop comes after all have, so that
        // none is still connecting (a client thread may start late on a busy machine).
        let serving = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = (0..16)
            .map(|i| {
                let serving = serving.clone();
                std::thread::spawn(move || {
                    let mut c = Client::connect(addr);
                    let mut answered = 0u64;
                    loop {
                        c.send(
                            format!("GET /n{i}-{answered} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
                        );
                        let Some(a) = c.try_read(false) else {
                            return Err(format!("client {i}: cut after {answered} answers"));
                        };
                        assert_eq!(a.text(), format!("path /n{i}-{answered}"));
                        answered += 1;
                        if answered == 1 {
                            serving.fetch_add(1, Ordering::SeqCst);
                        }
                        if a.header("connection") == Some("close") {
                            return Ok(answered);
                        }
                    }
                })
            })
            .collect();
        let t0 = Instant::now();
        while serving.load(Ordering::SeqCst) < 16 || server.requests() < 16 * 20 {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "round {round}: not every client was served"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        let stopped = server.stop(Duration::from_secs(30));
        for c in clients {
            let answered = c
                .join()
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert!(answered > 0);
        }
        assert_eq!((stopped.finished, stopped.killed), (16, 0), "round {round}");
    }
}

#[test]
fn graceful_stop_kills_what_outlives_its_timeout() {
    let (server, _gate) = start(Limits::default());
    let mut stuck = Client::connect(server.local_addr());
    stuck.send(b"GET /wait HTTP/1.1\r\nHost: t\r\n\r\n");
    let t0 = Instant::now();
    while server.connections() < 1 {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(20));
    let stopped = server.stop(Duration::from_millis(100));
    assert_eq!((stopped.finished, stopped.killed), (0, 1));
    assert!(stuck.closed_within(Duration::from_secs(10)));
}

#[test]
fn past_the_connection_cap_clients_wait_in_order_and_are_served() {
    let gate = Event::new();
    let server = Builder::new()
        .max_connections(2)
        .bind("127.0.0.1:0", app(gate.clone()))
        .unwrap();
    let addr = server.local_addr();
    let mut a = Client::connect(addr);
    let mut b = Client::connect(addr);
    assert_eq!(a.get("/a").status, 200);
    assert_eq!(b.get("/b").status, 200);
    // A third waits in the backlog while both are open.
    let mut c = Client::connect(addr);
    c.send(b"GET /c HTTP/1.1\r\nHost: t\r\n\r\n");
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        c.reader.get_mut().read(&mut byte).is_err(),
        "served past the cap"
    );
    c.reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    drop(a);
    let answer = c.read(false);
    assert_eq!(answer.text(), "path /c");
    drop(b);
    server.stop(Duration::from_secs(5));
}

#[test]
fn hundreds_of_connections_each_answered_right() {
    let (server, _) = start(Limits::default());
    let addr = server.local_addr();
    let failures = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..200)
        .map(|i| {
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                for j in 0..20 {
                    let body = format!("{i}-{j}");
                    c.send(
                        format!(
                            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let a = c.read(false);
                    if a.status != 200 || a.text() != body || a.header("x-method") != Some("POST") {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    // Each answer is booked once it is out: the last ones may still be on their way.
    let t0 = Instant::now();
    let shown = loop {
        let snap = greenhub::inspect::snapshot();
        let shown = snap
            .objects
            .into_iter()
            .find(|o| o.id == server.id())
            .unwrap();
        if shown.totals["responses_2xx"] == 4000 {
            break shown;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", shown.totals);
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(
        shown.detail.as_ref().unwrap()["latency"]["2xx"]["p99_us"]
            .as_u64()
            .is_some()
    );
    server.stop(Duration::from_secs(5));
}

#[test]
fn handlers_can_be_called_directly() {
    let handler = app(Event::new());
    let mut src: &[u8] = b"direct";
    let mut req = http::Request::new(Body::new(&mut src, Some(6)));
    *req.uri_mut() = "/echo".parse().unwrap();
    let r = handler(req);
    assert_eq!(r.status(), 200);
}

#[test]
fn a_crlf_after_a_body_is_not_a_request_and_answers_are_not_held_back() {
    let (server, _) = start(Limits {
        header_timeout: Duration::from_secs(120),
        ..Limits::default()
    });
    let mut c = Client::connect(server.local_addr());
    // Older clients end a body with CRLF: the answer comes at once, no 408 follows.
    // (Held back, it would come only with a 408 after the header limit, past the client's
    // read timeout.)
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi\r\n");
    assert_eq!(c.read(false).text(), "hi");
    assert_eq!(c.get("/next").text(), "path /next");
    // A pipelined request and half of the next: the first answer does not wait for the rest.
    c.send(b"GET /whole HTTP/1.1\r\nHost: t\r\n\r\nGET /half HTTP/1.1\r\nHo");
    assert_eq!(c.read(false).text(), "path /whole");
    c.send(b"st: t\r\n\r\n");
    assert_eq!(c.read(false).text(), "path /half");
    server.stop(Duration::from_secs(5));
}

#[test]
fn body_less_answers_keep_the_length_their_handler_gave() {
    let (server, _) = start(Limits::default());
    let mut c = Client::connect(server.local_addr());
    c.send(b"HEAD /declared HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read(true).header("content-length"), Some("1234"));
    let n = c.get("/notmodified");
    assert_eq!((n.status, n.header("content-length")), (304, None));
    assert_eq!(c.get("/after").text(), "path /after");
    server.stop(Duration::from_secs(5));
}

#[test]
fn wait_returns_when_another_thread_stops_the_server() {
    let (server, _) = start(Limits::default());
    let server = Arc::new(server);
    let addr = server.local_addr();
    let waiter = {
        let server = server.clone();
        greenhub::spawn(move || server.wait())
    };
    let mut idle = Client::connect(addr);
    assert_eq!(idle.get("/x").status, 200);
    let stopped = server.stop(Duration::from_secs(5));
    assert_eq!(stopped.killed, 0);
    waiter.wait().unwrap();
    assert!(idle.closed_within(Duration::from_secs(10)));
    // Stopped means no longer accepting.
    assert!(std::net::TcpStream::connect(addr).is_err());
}
