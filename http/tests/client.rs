//! The green client against the green server (and against raw sockets that misbehave):
//! connections reused, redirects followed as browsers do, chunked bodies both ways,
//! deadlines, stale kept connections retried, and broken servers reported for what they are.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use greenhub::net::TcpListener;
use greenhub_http::client::{Client, ClientError};
use greenhub_http::{Builder, Limits, Request, Response, Server, response};
use http::StatusCode;

fn redirect(status: StatusCode, to: &str) -> Response {
    let mut r = response::status(status);
    r.headers_mut().insert("location", to.parse().unwrap());
    r
}

fn app(mut req: Request<'_>) -> Response {
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_string());
    match req.uri().path() {
        "/hello" => response::text("hello"),
        "/echo" => {
            let body = req.body_mut().bytes().unwrap();
            let mut r = response::text(body);
            r.headers_mut()
                .insert("x-method", req.method().as_str().parse().unwrap());
            r
        }
        "/stream" => response::stream("text/plain", std::io::Cursor::new(vec![b'q'; 100_000])),
        "/a/first" => redirect(StatusCode::FOUND, "second"),
        "/a/second" => redirect(StatusCode::MOVED_PERMANENTLY, "/hello"),
        "/see-other" => redirect(StatusCode::SEE_OTHER, "/echo"),
        "/keep" => redirect(StatusCode::TEMPORARY_REDIRECT, "/echo"),
        "/loop" => redirect(StatusCode::FOUND, "/loop"),
        "/auth" => response::text(auth.unwrap_or_else(|| "none".into())),
        "/seen" => response::text(req.uri().to_string()),
        "/slow" => {
            greenhub::sleep(Duration::from_secs(10)).ok();
            response::text("late")
        }
        "/big" => response::text(vec![b'b'; 2_000_000]),
        "/query" => redirect(StatusCode::FOUND, "/seen?page=2"),
        "/rel" if req.uri().query() == Some("page=3") => response::text(req.uri().to_string()),
        "/rel" => redirect(StatusCode::FOUND, "?page=3"),
        "/switch" => {
            // A 101 with nothing after it: the client must not send HTTP on this connection.
            let mut r = response::status(StatusCode::SWITCHING_PROTOCOLS);
            r.headers_mut()
                .insert("upgrade", "nothing".parse().unwrap());
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            *r.body_mut() = greenhub_http::Payload::Upgrade(Box::new(|_io| {}));
            r
        }
        _ => response::status(StatusCode::NOT_FOUND),
    }
}

fn start() -> Server {
    Builder::new().bind("127.0.0.1:0", app).unwrap()
}

fn accepted(server: &Server) -> u64 {
    let snap = greenhub::inspect::snapshot();
    snap.objects
        .iter()
        .find(|o| o.id == server.id())
        .unwrap()
        .totals["accepted"]
}

#[test]
fn connections_are_reused_and_shared_by_many_green_threads() {
    let server = start();
    let base = format!("http://{}", server.local_addr());
    let client = Client::new();
    for _ in 0..50 {
        assert_eq!(
            client.get(&format!("{base}/hello")).send().unwrap().text(),
            "hello"
        );
    }
    assert_eq!(
        accepted(&server),
        1,
        "one connection for fifty requests in a row"
    );
    assert_eq!(client.idle_connections(), 1);

    let wrong = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let (client, base, wrong) = (client.clone(), base.clone(), wrong.clone());
            greenhub::spawn(move || {
                for j in 0..20 {
                    let body = format!("{i}/{j}");
                    let r = client
                        .post(&format!("{base}/echo"))
                        .body(body.clone())
                        .send()
                        .unwrap();
                    if r.text() != body || r.headers()["x-method"] != "POST" {
                        wrong.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.wait().unwrap();
    }
    assert_eq!(wrong.load(Ordering::SeqCst), 0);
    assert!(
        accepted(&server) <= 101,
        "connections are kept: {}",
        accepted(&server)
    );
    // From a plain OS thread too.
    assert_eq!(
        client.get(&format!("{base}/hello")).send().unwrap().text(),
        "hello"
    );
    server.stop(Duration::from_secs(5));
}

#[test]
fn redirects_are_followed_as_browsers_do() {
    let server = start();
    let base = format!("http://{}", server.local_addr());
    let client = Client::new();
    let r = client.get(&format!("{base}/a/first")).send().unwrap();
    assert_eq!((r.status(), r.text().as_str()), (StatusCode::OK, "hello"));
    assert_eq!(r.url(), format!("{base}/hello"));
    // 303: the POST becomes a GET without its body.
    let r = client
        .post(&format!("{base}/see-other"))
        .body("data")
        .send()
        .unwrap();
    assert_eq!(
        (r.headers()["x-method"].to_str().unwrap(), r.text().as_str()),
        ("GET", "")
    );
    // 307: method and body kept.
    let r = client
        .post(&format!("{base}/keep"))
        .body("data")
        .send()
        .unwrap();
    assert_eq!(
        (r.headers()["x-method"].to_str().unwrap(), r.text().as_str()),
        ("POST", "data")
    );
    assert!(matches!(
        client.get(&format!("{base}/loop")).send(),
        Err(ClientError::TooManyRedirects(10))
    ));
    let raw = Client::builder().max_redirects(0).build();
    assert_eq!(
        raw.get(&format!("{base}/loop")).send().unwrap().status(),
        302
    );

    // Credentials do not follow a redirect to another origin.
    let other = start();
    let elsewhere = format!("http://{}/auth", other.local_addr());
    let hop = Builder::new()
        .bind("127.0.0.1:0", move |_req: Request<'_>| {
            redirect(StatusCode::FOUND, &elsewhere)
        })
        .unwrap();
    let r = client
        .get(&format!("http://{}/", hop.local_addr()))
        .header("authorization", "Bearer secret")
        .send()
        .unwrap();
    assert_eq!(r.text(), "none");
    let same = client
        .get(&format!("{base}/auth"))
        .header("authorization", "Bearer secret")
        .send()
        .unwrap();
    assert_eq!(same.text(), "Bearer secret");
    for s in [server, other, hop] {
        s.stop(Duration::from_secs(5));
    }
}

#[test]
fn chunked_both_ways_head_and_limits() {
    let server = start();
    let base = format!("http://{}", server.local_addr());
    let client = Client::builder().max_body(1_000_000).build();
    let r = client.get(&format!("{base}/stream")).send().unwrap();
    assert_eq!(r.headers()["transfer-encoding"], "chunked");
    assert_eq!(r.bytes(), vec![b'q'; 100_000].as_slice());
    let upload = std::io::Cursor::new(vec![b'u'; 300_000]);
    let r = client
        .post(&format!("{base}/echo"))
        .body_stream(upload)
        .send()
        .unwrap();
    assert_eq!(r.bytes().len(), 300_000);
    let r = client
        .request(http::Method::HEAD, &format!("{base}/hello"))
        .send()
        .unwrap();
    assert_eq!((r.status(), r.bytes().len()), (StatusCode::OK, 0));
    assert_eq!(r.headers()["content-length"], "5");
    let big = client.get(&format!("{base}/big")).send().unwrap_err();
    assert!(big.to_string().contains("larger than the limit"), "{big}");
    // The connection that carried the refused body is not reused; the next request works.
    assert_eq!(
        client.get(&format!("{base}/hello")).send().unwrap().text(),
        "hello"
    );
    let v: serde_json::Value = client
        .post(&format!("{base}/echo"))
        .json(&serde_json::json!({"a": [1, 2]}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(v["a"][1], 2);
    server.stop(Duration::from_secs(5));
}

#[test]
fn deadlines_bound_requests_and_stale_connections_are_retried() {
    let server = Builder::new()
        .limits(Limits {
            idle_timeout: Duration::from_millis(50),
            ..Limits::default()
        })
        .bind("127.0.0.1:0", app)
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let client = Client::new();
    let slow = client
        .get(&format!("{base}/slow"))
        .timeout(Duration::from_millis(100))
        .send();
    assert!(matches!(slow, Err(ClientError::TimedOut)), "{slow:?}");
    let scoped = greenhub::with_timeout(Duration::from_millis(100), || {
        client.get(&format!("{base}/slow")).send()
    });
    assert!(matches!(scoped, Err(ClientError::TimedOut)));
    // The server closes kept connections after 50 ms idle: the next request notices and
    // goes again on a new one.
    assert_eq!(
        client.get(&format!("{base}/hello")).send().unwrap().text(),
        "hello"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(client.idle_connections(), 1);
    assert_eq!(
        client.get(&format!("{base}/hello")).send().unwrap().text(),
        "hello"
    );
    server.stop(Duration::from_millis(100));
}

#[test]
fn broken_servers_and_bad_urls_are_reported_for_what_they_are() {
    let client = Client::builder()
        .timeout(Some(Duration::from_secs(10)))
        .build();
    for bad in ["ftp://x/", "http://", "not a url", "/relative"] {
        assert!(
            matches!(client.get(bad).send(), Err(ClientError::InvalidUrl(_))),
            "{bad}"
        );
    }
    // Nothing listens: refused.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap();
    drop(free);
    assert!(matches!(
        client.get(&format!("http://{addr}/")).send(),
        Err(ClientError::Connect { .. })
    ));
    // Raw servers: garbage, and a response cut short.
    for answer in [
        &b"SMTP ready\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = greenhub::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            s.write_all(answer).unwrap();
        });
        let err = client.get(&format!("http://{addr}/")).send().unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        server.wait().unwrap();
    }
}

#[test]
fn https_with_a_connector_that_trusts_the_servers_certificate() {
    let (acceptor, connector) = common::certified();
    let server = Builder::new()
        .tls(acceptor)
        .stack_size(512 * 1024)
        .bind("127.0.0.1:0", app)
        .unwrap();
    let port = server.local_addr().port();
    let client = Client::builder().tls(connector).build();
    let t = greenhub::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || {
            let a = client
                .get(&format!("https://localhost:{port}/hello"))
                .send()
                .unwrap();
            let b = client
                .get(&format!("https://localhost:{port}/hello"))
                .send()
                .unwrap();
            (a.text(), b.text(), client.idle_connections())
        })
        .unwrap();
    assert_eq!(t.wait().unwrap(), ("hello".into(), "hello".into(), 1));
    // The web's roots do not trust a self-signed certificate.
    let strict = Client::new();
    let t = greenhub::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || {
            strict
                .get(&format!("https://localhost:{port}/hello"))
                .send()
        })
        .unwrap();
    assert!(matches!(t.wait().unwrap(), Err(ClientError::Tls { .. })));
    server.stop(Duration::from_secs(5));
}

#[test]
fn a_101_connection_is_not_reused_and_query_redirects_keep_the_path() {
    let server = start();
    let base = format!("http://{}", server.local_addr());
    let client = Client::new();
    let r = client.get(&format!("{base}/switch")).send().unwrap();
    assert_eq!(r.status(), 101);
    assert_eq!(
        client.idle_connections(),
        0,
        "a switched connection is not kept"
    );
    assert_eq!(
        client.get(&format!("{base}/hello")).send().unwrap().text(),
        "hello"
    );
    let r = client.get(&format!("{base}/query")).send().unwrap();
    assert_eq!(r.text(), "/seen?page=2");
    // `?page=3` is relative to /rel: the same path with a new query.
    let r = client.get(&format!("{base}/rel")).send().unwrap();
    assert_eq!(r.text(), "/rel?page=3");
    server.stop(Duration::from_secs(5));
}

#[test]
fn kept_connections_the_server_closed_are_noticed_before_use_even_for_a_post() {
    // A server that closes each connection after answering, without saying so.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let closed: greenhub::Queue<()> = greenhub::Queue::unbounded();
    let (count, told) = (served.clone(), closed.clone());
    let acceptor = greenhub::spawn(move || {
        while let Ok((mut s, _)) = listener.accept() {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            drop(s);
            let _ = told.put(());
        }
    });
    let client = Client::new();
    for _ in 0..5 {
        let r = client
            .post(&format!("http://{addr}/"))
            .body("x")
            .send()
            .unwrap();
        assert_eq!(r.text(), "ok");
        // The server has closed the kept connection before the next request is made.
        closed.get_timeout(Duration::from_secs(30)).unwrap();
    }
    assert_eq!(
        served.load(Ordering::SeqCst),
        5,
        "a new connection for each, no failure"
    );
    acceptor.kill();
}
