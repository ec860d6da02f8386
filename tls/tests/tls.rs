//! TLS over cooperative sockets on loopback, with certificates made at test time: many
//! sessions at once, certificates refused for the right reason, peers that vanish, do not speak
//! TLS or say nothing, clean and truncated ends.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use greenhub::net::{TcpListener, TcpStream};
use greenhub::{net::serve, spawn, with_timeout};
use greenhub_tls::rustls::{self, pki_types::PrivateKeyDer};
use greenhub_tls::{TlsAcceptor, TlsConnector, TlsError};

/// Debug builds need more stack for a handshake than greenhub's default (see the crate docs).
fn setup() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        greenhub::Config::new()
            .stack_size(256 * 1024)
            .init()
            .unwrap()
    });
}

/// A certificate authority and what it signs.
struct Ca {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        Ca {
            issuer: rcgen::CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    /// A server configuration with a certificate for `names`, signed by this authority.
    fn server(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), self.issuer.der().clone()], key)
            .unwrap();
        Arc::new(config)
    }

    /// A client configuration that trusts this authority only.
    fn client(&self) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::new(Arc::new(config))
    }
}

/// A TLS echo server: one green thread per connection; handshake failures are sent back on
/// `failures`.
fn echo_server(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, greenhub::Queue<Result<(), TlsError>>) {
    let acceptor = TlsAcceptor::new(config);
    let outcomes = greenhub::Queue::unbounded();
    let sink = outcomes.clone();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = serve(listener, 1000, move |tcp, _| {
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut tls = match acceptor.accept(tcp) {
            Ok(tls) => tls,
            Err(e) => {
                sink.put(Err(e)).ok();
                return;
            }
        };
        sink.put(Ok(())).ok();
        let mut buf = [0u8; 4096];
        loop {
            match tls.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tls.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        tls.shutdown().ok();
    })
    .unwrap();
    // The server lives as long as the test process.
    std::mem::forget(server);
    (addr, outcomes)
}

#[test]
fn many_sessions_at_once_get_every_message_back_exactly_once() {
    setup();
    let ca = Ca::new("test authority");
    let (addr, outcomes) = echo_server(ca.server(&["localhost"]));
    let connector = ca.client();
    for round in 0..2 {
        let clients: Vec<_> = (0..100u32)
            .map(|c| {
                let connector = connector.clone();
                spawn(move || {
                    let tcp = TcpStream::connect(addr).unwrap();
                    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut tls = connector.connect("localhost", tcp).unwrap();
                    assert_eq!(
                        tls.connection().protocol_version(),
                        Some(rustls::ProtocolVersion::TLSv1_3)
                    );
                    let mut got = Vec::new();
                    for m in 0..20u32 {
                        let msg = (c * 1000 + m).to_be_bytes();
                        tls.write_all(&msg).unwrap();
                        let mut back = [0u8; 4];
                        tls.read_exact(&mut back).unwrap();
                        got.push(u32::from_be_bytes(back));
                    }
                    tls.shutdown().unwrap();
                    // The server ends with close_notify: a clean end, not a truncation.
                    let mut rest = Vec::new();
                    tls.read_to_end(&mut rest).unwrap();
                    assert!(rest.is_empty());
                    got
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for (c, t) in clients.into_iter().enumerate() {
            let got = t.wait().unwrap();
            let want: Vec<u32> = (0..20).map(|m| c as u32 * 1000 + m).collect();
            assert_eq!(got, want, "round {round}: client {c}");
            for v in got {
                assert!(seen.insert(v), "{v} echoed twice");
            }
        }
        assert_eq!(seen.len(), 100 * 20);
    }
    for _ in 0..200 {
        outcomes.get().unwrap().unwrap();
    }
}

#[test]
fn a_certificate_for_another_name_is_refused_on_both_sides() {
    setup();
    let ca = Ca::new("test authority");
    let (addr, outcomes) = echo_server(ca.server(&["localhost"]));
    let connector = ca.client();
    let client = spawn(move || {
        let tcp = TcpStream::connect(addr).unwrap();
        connector.connect("db.internal", tcp).map(drop)
    });
    match client.wait().unwrap() {
        Err(TlsError::Handshake(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForNameContext { .. }
            | rustls::CertificateError::NotValidForName,
        ))) => {}
        other => panic!("expected a certificate not valid for the name, got {other:?}"),
    }
    // The server's handshake fails too: with the client's alert, or with a reset when the
    // client closed with the rest of the server's flight unread (the kernel then sends RST,
    // which can overtake the alert).
    match outcomes.get().unwrap() {
        Err(TlsError::Handshake(rustls::Error::AlertReceived(_)) | TlsError::Closed) => {}
        other => panic!("expected the client's alert or a reset, got {other:?}"),
    }
}

#[test]
fn a_certificate_from_an_authority_the_client_does_not_trust_is_refused() {
    setup();
    let (addr, _outcomes) = echo_server(Ca::new("their authority").server(&["localhost"]));
    let connector = Ca::new("our authority").client();
    let client = spawn(move || {
        let tcp = TcpStream::connect(addr).unwrap();
        connector.connect("localhost", tcp).map(drop)
    });
    match client.wait().unwrap() {
        Err(TlsError::Handshake(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        ))) => {}
        other => panic!("expected an unknown issuer, got {other:?}"),
    }
}

#[test]
fn an_ip_address_is_a_server_name_and_garbage_is_not() {
    setup();
    let ca = Ca::new("test authority");
    let (addr, _outcomes) = echo_server(ca.server(&["127.0.0.1"]));
    let connector = ca.client();
    let client = spawn(move || {
        let bad = TcpStream::connect(addr).unwrap();
        let refused = connector.connect("not a name!", bad).map(drop);
        let tcp = TcpStream::connect(addr).unwrap();
        let mut tls = connector.connect("127.0.0.1", tcp).unwrap();
        tls.write_all(b"ip").unwrap();
        let mut back = [0u8; 2];
        tls.read_exact(&mut back).unwrap();
        (refused, back)
    });
    let (refused, back) = client.wait().unwrap();
    match refused {
        Err(TlsError::InvalidServerName(name)) => assert_eq!(name, "not a name!"),
        other => panic!("expected an invalid server name, got {other:?}"),
    }
    assert_eq!(&back, b"ip");
}

#[test]
fn a_client_that_does_not_speak_tls_is_an_error_not_a_hang() {
    setup();
    let ca = Ca::new("test authority");
    let (addr, outcomes) = echo_server(ca.server(&["localhost"]));
    let client = spawn(move || {
        let mut tcp = TcpStream::connect(addr).unwrap();
        tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        // The server answers with an alert and closes.
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).ok();
        answer
    });
    match outcomes.get().unwrap() {
        Err(TlsError::Handshake(_)) => {}
        other => panic!("expected a handshake error, got {other:?}"),
    }
    let answer = client.wait().unwrap();
    assert_eq!(answer.first(), Some(&21), "a TLS alert record: {answer:?}");
}

#[test]
fn a_peer_that_vanishes_mid_handshake_ends_it_with_closed() {
    setup();
    let ca = Ca::new("test authority");
    let (addr, outcomes) = echo_server(ca.server(&["localhost"]));
    let client = spawn(move || drop(TcpStream::connect(addr).unwrap()));
    client.wait().unwrap();
    match outcomes.get().unwrap() {
        Err(TlsError::Closed) => {}
        other => panic!("expected Closed, got {other:?}"),
    }

    // And from the client's side: a server that accepts and closes at once.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(move || drop(listener.accept().unwrap()));
    let connector = ca.client();
    let client = spawn(move || {
        let tcp = TcpStream::connect(addr).unwrap();
        connector.connect("localhost", tcp).map(drop)
    });
    server.wait().unwrap();
    match client.wait().unwrap() {
        Err(TlsError::Closed) => {}
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn a_silent_peer_makes_the_handshake_time_out() {
    setup();
    let ca = Ca::new("test authority");
    // A server that accepts and says nothing.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = spawn(move || {
        let held: Vec<_> = (0..2).map(|_| listener.accept().unwrap()).collect();
        greenhub::sleep(Duration::from_secs(5)).ok();
        drop(held);
    });
    let connector = ca.client();
    let client = spawn(move || {
        // Bounded by the socket's read timeout...
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let by_socket = connector.connect("localhost", tcp).map(drop);
        // ... or by a deadline scope.
        let tcp = TcpStream::connect(addr).unwrap();
        let by_scope = with_timeout(Duration::from_millis(200), || {
            connector.connect("localhost", tcp).map(drop)
        });
        (by_socket, by_scope)
    });
    let (by_socket, by_scope) = client.wait().unwrap();
    assert!(
        matches!(by_socket, Err(TlsError::TimedOut)),
        "{by_socket:?}"
    );
    assert!(matches!(by_scope, Err(TlsError::TimedOut)), "{by_scope:?}");
}

#[test]
fn an_end_without_close_notify_is_reported_as_truncation() {
    setup();
    let ca = Ca::new("test authority");
    let acceptor = TlsAcceptor::new(ca.server(&["localhost"]));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let mut tls = acceptor.accept(tcp).unwrap();
        tls.write_all(b"partial").unwrap();
        tls.flush().unwrap();
        // Dropped without shutdown: the TCP connection ends, the TLS session does not.
    });
    let connector = ca.client();
    let client = spawn(move || {
        let tcp = TcpStream::connect(addr).unwrap();
        let mut tls = connector.connect("localhost", tcp).unwrap();
        let mut got = [0u8; 7];
        tls.read_exact(&mut got).unwrap();
        let mut more = [0u8; 8];
        (got, tls.read(&mut more).map_err(|e| e.kind()))
    });
    server.wait().unwrap();
    let (got, end) = client.wait().unwrap();
    assert_eq!(&got, b"partial");
    assert_eq!(end, Err(ErrorKind::UnexpectedEof));
}
