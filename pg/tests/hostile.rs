//! A server that is not PostgreSQL, or a broken one: greenhub-pg answers each with an error,
//! never a panic, a hang past the deadline, or an allocation the size a server claims.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use greenhub_pg::{Client, Error};

/// A fake server on a loopback port that accepts one connection, reads the start-up message
/// and hands the socket to `then`. Returns the connection string for it.
fn fake(then: impl FnOnce(TcpStream) + Send + 'static) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
        s.read_exact(&mut rest).unwrap();
        then(s);
    });
    (
        format!("host=127.0.0.1 port={port} user=u password=p connect_timeout=30"),
        server,
    )
}

/// Connects to `conninfo` from a green thread, under a deadline that only a hang reaches.
fn connect(conninfo: String) -> Result<Client, Error> {
    greenhub::spawn(move || {
        greenhub::with_timeout(Duration::from_secs(20), || Client::connect(&conninfo))
    })
    .wait()
    .unwrap()
}

#[test]
fn a_message_claiming_a_gigabyte_is_refused_before_it_is_read() {
    let (conninfo, server) = fake(|mut s| {
        let mut m = vec![b'R'];
        m.extend_from_slice(&0x7fff_ffff_u32.to_be_bytes());
        let _ = s.write_all(&m);
        let _ = s.read(&mut [0; 1]);
    });
    let e = connect(conninfo).unwrap_err();
    assert!(
        matches!(e, Error::Protocol(ref m) if m.contains("bytes")),
        "{e}"
    );
    server.join().unwrap();
}

#[test]
fn an_http_server_is_not_taken_for_postgresql() {
    let (conninfo, server) = fake(|mut s| {
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        let _ = s.read(&mut [0; 1]);
    });
    let e = connect(conninfo).unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    server.join().unwrap();
}

#[test]
fn a_server_that_hangs_up_mid_message_gives_an_io_error() {
    let (conninfo, server) = fake(|mut s| {
        // An authentication request cut after two of its eight bytes.
        let _ = s.write_all(&[b'R', 0, 0, 0, 8, 0, 0]);
    });
    let e = connect(conninfo).unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
    server.join().unwrap();
}

#[test]
fn a_silent_server_is_left_at_the_deadline() {
    let (conninfo, server) = fake(|mut s| {
        // Says nothing; waits for the client to leave.
        let _ = s.read(&mut [0; 1]);
    });
    let e = greenhub::spawn(move || {
        greenhub::with_timeout(Duration::from_millis(200), || Client::connect(&conninfo))
    })
    .wait()
    .unwrap()
    .unwrap_err();
    assert!(matches!(e, Error::TimedOut), "{e}");
    server.join().unwrap();
}

#[test]
fn an_unknown_login_method_is_named() {
    let (conninfo, server) = fake(|mut s| {
        // AuthenticationGSS.
        let _ = s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 7]);
        let _ = s.read(&mut [0; 1]);
    });
    let e = connect(conninfo).unwrap_err();
    assert!(
        matches!(e, Error::Config(ref m) if m.contains("GSSAPI")),
        "{e}"
    );
    server.join().unwrap();
}
