//! HTTPS: the server behind greenhub-tls, with a certificate made at test time; keep-alive
//! over TLS, and clients that do not speak TLS or say nothing are closed without harm.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use greenhub::net::TcpStream;
use greenhub_http::{Builder, Limits, Request, response};

#[test]
fn https_keep_alive_and_clients_that_do_not_speak_tls() {
    common::show_logs();
    let (acceptor, connector) = common::certified();
    let server = Builder::new()
        .tls(acceptor)
        .stack_size(512 * 1024)
        .limits(Limits {
            header_timeout: Duration::from_millis(500),
            ..Limits::default()
        })
        .bind("127.0.0.1:0", |req: Request<'_>| {
            response::text(format!("secure {}", req.uri().path()))
        })
        .unwrap();
    let addr = server.local_addr();
    let client = greenhub::thread::Builder::new()
        .stack_size(512 * 1024)
        .spawn(move || {
            let tcp = TcpStream::connect(addr).unwrap();
            let mut tls = connector.connect("localhost", tcp).unwrap();
            let mut answers = Vec::new();
            for i in 0..3 {
                write!(tls, "GET /r{i} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
                let mut buf = vec![0u8; 4096];
                let n = tls.read(&mut buf).unwrap();
                answers.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
            answers
        })
        .unwrap();
    let answers = client.wait().unwrap();
    for (i, a) in answers.iter().enumerate() {
        assert!(a.starts_with("HTTP/1.1 200 OK\r\n"), "{a}");
        assert!(a.ends_with(&format!("secure /r{i}")), "{a}");
    }
    // Plain HTTP to the TLS port: the handshake fails and the connection closes.
    let mut plain = common::Client::connect(addr);
    plain.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(plain.closed_within(Duration::from_secs(10)));
    // Silent: closed at the header time limit.
    let mut silent = common::Client::connect(addr);
    assert!(silent.closed_within(Duration::from_secs(10)));
    server.stop(Duration::from_secs(5));
}
