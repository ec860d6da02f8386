//! Cooperative TCP: code that looks blocking (`accept`, `read`, `write`, `connect`) parks the
//! green thread, not the worker (eventlet's green sockets, gevent's `socket`).
//!
//! Every wait is bounded by the enclosing deadline scope and by the socket's own read or write
//! timeout (then `io::ErrorKind::TimedOut`), ends at once on a kill, and shows in the registry
//! as a wait on the descriptor (fd, read or write, owner, since). Host names are resolved off
//! the hub, on a helper OS thread, so `connect("example.com:80")` never blocks a worker.
//!
//! ```
//! use std::io::{Read, Write};
//! use greenhub::net::{TcpListener, TcpStream};
//!
//! let listener = TcpListener::bind("127.0.0.1:0").unwrap();
//! let addr = listener.local_addr().unwrap();
//! let server = greenhub::spawn(move || {
//!     let (mut conn, _) = listener.accept().unwrap();
//!     let mut buf = [0; 5];
//!     conn.read_exact(&mut buf).unwrap();
//!     conn.write_all(&buf).unwrap(); // echo
//! });
//! let client = greenhub::spawn(move || {
//!     let mut s = TcpStream::connect(addr).unwrap();
//!     s.write_all(b"hello").unwrap();
//!     let mut back = String::new();
//!     s.read_to_string(&mut back).unwrap();
//!     back
//! });
//! server.wait().unwrap();
//! assert_eq!(client.wait().unwrap(), "hello");
//! ```

//!
//! Also here: [`serve`], a connection per green thread from a bounded pool with a graceful
//! stop; [`trampoline`], a wait for readiness of any descriptor; and [`take_inherited`] and
//! [`listen_or_inherit`], the listening sockets a supervisor (`greenhub-serve`, systemd)
//! hands the process in the `LISTEN_FDS` convention.
//!
//! This layer may use `core`, `start.rs`, `green` and `sync`.

pub(crate) mod fd;
mod inherited;
mod ready;
mod server;
mod socket;

pub use fd::{TrampolineError, trampoline};
pub use inherited::{Inherited, ListenError, MAX_INHERITED, listen_or_inherit, take_inherited};
pub use server::{Server, Stopped, serve};
pub use socket::{Listen, TcpListener, TcpStream, UdpSocket, UnixListener, UnixStream};
