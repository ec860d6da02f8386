//! A plain blocking HTTP/1.1 client for the tests: raw bytes out, responses parsed strictly,
//! so that each test says exactly what went over the wire.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A response as read off the wire.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A connection to the server under test.
pub struct Client {
    pub reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Client {
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).unwrap();
    }

    /// Sends a GET for `path` with a Host header.
    pub fn get(&mut self, path: &str) -> Answer {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read(false)
    }

    /// Reads one response (`head`: to a HEAD request, so no body).
    pub fn read(&mut self, head: bool) -> Answer {
        self.try_read(head).expect("a response")
    }

    /// Reads one response, or `None` if the connection ends before one.
    pub fn try_read(&mut self, head: bool) -> Option<Answer> {
        let mut line = String::new();
        if self.reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let mut parts = line.trim_end().splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line {line:?}");
        let status: u16 = parts.next().unwrap().parse().unwrap();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            self.reader.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').expect("a header line");
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        let mut body = Vec::new();
        let bodiless = head || status / 100 == 1 || status == 204 || status == 304;
        if !bodiless {
            if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
                loop {
                    let mut size = String::new();
                    self.reader.read_line(&mut size).unwrap();
                    let n = usize::from_str_radix(size.trim_end(), 16).unwrap();
                    if n == 0 {
                        let mut end = String::new();
                        self.reader.read_line(&mut end).unwrap();
                        break;
                    }
                    let mut chunk = vec![0; n + 2];
                    self.reader.read_exact(&mut chunk).unwrap();
                    body.extend_from_slice(&chunk[..n]);
                }
            } else if let Some(len) = headers.get("content-length") {
                body = vec![0; len.parse().unwrap()];
                self.reader.read_exact(&mut body).unwrap();
            } else {
                self.reader.read_to_end(&mut body).unwrap();
            }
        }
        Some(Answer {
            status,
            headers,
            body,
        })
    }

    /// Whether the server has closed the connection (reads the end of the stream, within
    /// `limit`).
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.reader.get_ref().set_read_timeout(Some(limit)).unwrap();
        let mut rest = Vec::new();
        let r = self.reader.read_to_end(&mut rest);
        self.reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        r.is_ok() || r.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target() != "greenhub_http::access"
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("{} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Shows the server's own log lines (not the access log) in a failing test's output.
pub fn show_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        log::set_logger(&Stderr).unwrap();
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// A server and a client TLS configuration for `localhost`, with a certificate made now that
/// only this client trusts.
pub fn certified() -> (greenhub_tls::TlsAcceptor, greenhub_tls::TlsConnector) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key =
        greenhub_tls::rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
            .unwrap();
    let server = greenhub_tls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let mut roots = greenhub_tls::rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let client = greenhub_tls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        greenhub_tls::TlsAcceptor::new(std::sync::Arc::new(server)),
        greenhub_tls::TlsConnector::new(std::sync::Arc::new(client)),
    )
}
