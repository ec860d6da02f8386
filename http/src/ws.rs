//! WebSocket (RFC 6455), as eventlet's `websocket` module offered: a server handler upgrades
//! a request with [`upgrade`], a client opens one with [`connect`]. Frames, masking, ping and
//! pong, the close handshake and size limits are tungstenite's (its synchronous API, over the
//! green connection), so a socket's reads and writes park only its green thread; each read
//! and write is bounded by the socket's time limits and the enclosing deadline scopes.
//!
//! ```
//! use greenhub_http::ws::{self, Message};
//! use greenhub_http::{response, Request};
//!
//! let server = greenhub_http::serve("127.0.0.1:0", |req: Request<'_>| {
//!     ws::upgrade(&req, ws::Config::default(), |mut socket| {
//!         while let Ok(msg) = socket.read() {
//!             if msg.is_text() || msg.is_binary() {
//!                 let _ = socket.send(msg); // echo
//!             }
//!         }
//!     })
//! })
//! .unwrap();
//! let url = format!("ws://{}/echo", server.local_addr());
//! let (mut socket, _) = ws::connect(&url, ws::Config::default()).unwrap();
//! socket.send(Message::text("hello")).unwrap();
//! assert_eq!(socket.read().unwrap(), Message::text("hello"));
//! socket.close(None).unwrap();
//! ```

use std::time::Duration;

use greenhub::net::TcpStream;
use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderValue, Method, StatusCode, Version};
use tungstenite::protocol::{Role, WebSocketConfig};

pub use tungstenite::protocol::CloseFrame;
pub use tungstenite::protocol::frame::coding::CloseCode;
pub use tungstenite::{Error, Message};

use crate::body::Payload;
use crate::client::web_roots;
use crate::response::{self, Response};
use crate::server::Request;
use crate::wire::head::has_token;
use crate::wire::{Stream, Upgraded};

/// A WebSocket over a green connection (either side).
pub type WebSocket = tungstenite::WebSocket<Upgraded>;

/// A socket's limits.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The largest message, in bytes (a larger one closes the socket with 1009). Default
    /// 16 MiB.
    pub max_message: usize,
    /// The largest frame, in bytes. Default 4 MiB.
    pub max_frame: usize,
    /// A read that waits longer fails with `TimedOut` (the socket is then unusable; a server
    /// wanting to keep quiet clients sends pings). Default 5 minutes; `None`: no limit.
    pub read_timeout: Option<Duration>,
    /// A write that makes no progress for this long fails with `TimedOut`. Default 30 s.
    pub write_timeout: Option<Duration>,
    /// [`connect`]: the connection, TLS and the handshake within this. Default 10 s.
    pub connect_timeout: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            max_message: 16 << 20,
            max_frame: 4 << 20,
            read_timeout: Some(Duration::from_secs(300)),
            write_timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    fn tungstenite(&self) -> WebSocketConfig {
        WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_frame))
    }
}

/// Answers a WebSocket handshake: `101 Switching Protocols`, then `f` runs with the socket in
/// this connection's green thread (the connection ends when it returns). A request that is
/// not a valid handshake gets `400` (or `426 Upgrade Required` when it is plain HTTP).
pub fn upgrade<F>(req: &Request<'_>, config: Config, f: F) -> Response
where
    F: FnOnce(WebSocket) + Send + 'static,
{
    let h = req.headers();
    if !h
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
    {
        let mut r = response::text_status(
            StatusCode::UPGRADE_REQUIRED,
            "this resource speaks WebSocket only\n",
        );
        r.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    }
    let valid = req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && has_token(h, CONNECTION, "upgrade")
        && h.get(SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
    let Some(key) = h.get(SEC_WEBSOCKET_KEY).filter(|_| valid) else {
        let mut r = response::text_status(
            StatusCode::BAD_REQUEST,
            "not a WebSocket handshake: a GET over HTTP/1.1 with Connection: Upgrade, \
             Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key is needed\n",
        );
        r.headers_mut()
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = http::Response::new(Payload::Upgrade(Box::new(move |mut io: Upgraded| {
        io.read_timeout = config.read_timeout;
        io.write_timeout = config.write_timeout;
        f(WebSocket::from_raw_socket(
            io,
            Role::Server,
            Some(config.tungstenite()),
        ));
    })));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = r.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        headers.insert(SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// Opens a WebSocket to a `ws://` or `wss://` URL (a `wss://` one trusting the web's roots),
/// within the time limits of `config` and the enclosing deadline scopes.
pub fn connect(
    url: &str,
    config: Config,
) -> Result<(WebSocket, tungstenite::handshake::client::Response), Error> {
    connect_with(url, config, None)
}

/// Like [`connect`], with the TLS connector for `wss://` given.
pub fn connect_with(
    url: &str,
    config: Config,
    tls: Option<&greenhub_tls::TlsConnector>,
) -> Result<(WebSocket, tungstenite::handshake::client::Response), Error> {
    let uri: http::Uri = url.parse().map_err(|_| bad_url(url))?;
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(bad_url(url)),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad_url(url))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    // A silent peer cannot hold the caller: connection, TLS and handshake within the limit.
    greenhub::with_timeout(config.connect_timeout, || {
        let tcp = TcpStream::connect((host.clone(), port))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Stream> = if secure {
            let connector = tls.unwrap_or_else(|| web_roots());
            let stream = connector
                .connect(&host, tcp)
                .map_err(|e| Error::Io(std::io::Error::other(e)))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let io = Upgraded {
            io,
            early: Vec::new(),
            read_timeout: config.read_timeout,
            write_timeout: config.write_timeout,
        };
        tungstenite::client::client_with_config(url, io, Some(config.tungstenite())).map_err(|e| {
            match e {
                tungstenite::HandshakeError::Failure(e) => e,
                tungstenite::HandshakeError::Interrupted(_) => Error::Io(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    "the handshake was interrupted",
                )),
            }
        })
    })
}

fn bad_url(url: &str) -> Error {
    log::debug!("greenhub-http: not a ws:// or wss:// URL: {url:?}");
    Error::Url(tungstenite::error::UrlError::UnsupportedUrlScheme)
}
