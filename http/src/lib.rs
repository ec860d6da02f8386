//! A green HTTP/1.1 server and client ([`client`]) on greenhub: eventlet's `wsgi` and
//! gevent's `pywsgi`, in Rust. Each connection is a green thread; a handler is a plain
//! function from a request to a response that may wait on anything (a database, another
//! service) without holding up the others; every wait is bounded by the server's limits and
//! by deadline scopes, and the inspector shows each connection and request in flight.
//!
//! ```
//! use greenhub_http::{response, Request};
//!
//! let server = greenhub_http::serve("127.0.0.1:0", |req: Request<'_>| match req.uri().path() {
//!     "/plaintext" => response::text("Hello, World!"),
//!     "/json" => response::json(&serde_json::json!({"message": "Hello, World!"})),
//!     _ => response::status(http::StatusCode::NOT_FOUND),
//! })
//! .unwrap();
//! println!("listening on {}", server.local_addr());
//! server.stop(std::time::Duration::from_secs(1));
//! ```
//!
//! Layers, lowest first: `wire/` (HTTP/1.1 on a connection: heads parsed by httparse,
//! bodies by length or chunked), then [`body`] and [`response`] (what handlers see), then
//! `server/` and `client/`. Requests and responses are the `http` crate's types.

pub mod body;
pub mod client;
mod date;
pub mod response;
mod server;
mod wire;
pub mod ws;

pub use body::{Body, BodyError, Payload};
pub use greenhub::net::Stopped;
pub use response::Response;
pub use server::{Builder, Handler, Limits, RemoteAddr, Request, Server, serve};
pub use wire::Upgraded;
