//! A green HTTP/1.1 client (eventlet's `httpc` and green `urllib`): code that looks blocking,
//! connections reused per origin, redirects followed, chunked bodies both ways, HTTPS through
//! greenhub-tls, JSON helpers. Names resolve off the workers, every wait parks only the green
//! thread, and the request's timeout and the enclosing deadline scopes bound all of it.
//!
//! ```
//! use greenhub_http::{client::Client, response, Request};
//!
//! let server = greenhub_http::serve("127.0.0.1:0", |_req: Request<'_>| {
//!     response::json(&serde_json::json!({"message": "Hello, World!"}))
//! })
//! .unwrap();
//! let client = Client::new();
//! let url = format!("http://{}/json", server.local_addr());
//! let reply = client.get(&url).send().unwrap();
//! assert_eq!(reply.status(), 200);
//! let v: serde_json::Value = reply.json().unwrap();
//! assert_eq!(v["message"], "Hello, World!");
//! ```

mod exchange;

use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use greenhub::net::TcpStream;
use greenhub_tls::TlsConnector;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use thiserror::Error;

use crate::wire::head::HeadLimits;
use crate::wire::{Stream, Wire};
use exchange::{Conn, Failed, Idle, Origin, Outgoing, Received};

/// Why a request got no response.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Not an `http://` or `https://` URL with a host.
    #[error("not a URL the client can request: {0}")]
    InvalidUrl(String),
    /// A header name or value is not valid HTTP.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
    /// The connection could not be made (name not found, refused, unreachable).
    #[error("could not connect to {host}:{port}: {source}")]
    Connect {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The TLS handshake failed (certificate refused, not TLS).
    #[error("TLS with {host} failed: {source}")]
    Tls {
        /// The host.
        host: String,
        /// What went wrong.
        #[source]
        source: greenhub_tls::TlsError,
    },
    /// The request's timeout or the enclosing deadline passed.
    #[error("timed out: the response did not come before the deadline")]
    TimedOut,
    /// More redirects than the client follows.
    #[error("more than {0} redirects")]
    TooManyRedirects(u32),
    /// The response was not HTTP/1.x, or was cut short.
    #[error("the response was malformed or cut short: {0}")]
    Protocol(#[source] io::Error),
    /// Another error of the connection.
    #[error("the connection failed: {0}")]
    Io(#[source] io::Error),
    /// The body was not the JSON asked for ([`Response::json`]).
    #[error("the response body is not the expected JSON: {0}")]
    Json(#[source] serde_json::Error),
}

impl From<greenhub::TimedOut> for ClientError {
    fn from(_: greenhub::TimedOut) -> ClientError {
        ClientError::TimedOut
    }
}

impl greenhub::timeout::IsTimeout for ClientError {
    fn is_timeout(&self) -> bool {
        matches!(self, ClientError::TimedOut)
    }
}

fn from_io(e: io::Error) -> ClientError {
    match e.kind() {
        io::ErrorKind::TimedOut => ClientError::TimedOut,
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => ClientError::Protocol(e),
        _ => ClientError::Io(e),
    }
}

/// Configures a [`Client`].
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    timeout: Option<Duration>,
    connect_timeout: Duration,
    max_redirects: u32,
    idle_per_origin: usize,
    idle_timeout: Duration,
    max_body: u64,
    tls: Option<TlsConnector>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            timeout: Some(Duration::from_secs(30)),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 10,
            idle_per_origin: 32,
            idle_timeout: Duration::from_secs(20),
            max_body: 64 * 1024 * 1024,
            tls: None,
        }
    }
}

impl ClientBuilder {
    /// Each request, redirects included, within this (default 30 s; `None`: only the
    /// enclosing deadline scopes bound it).
    pub fn timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Making a connection (and its TLS handshake) within this (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Follow at most this many redirects (default 10; 0: return redirects as they are).
    pub fn max_redirects(mut self, n: u32) -> Self {
        self.max_redirects = n;
        self
    }

    /// Keep at most this many idle connections per origin (default 32), each for at most
    /// `idle` (default 20 s, under most servers' keep-alive limit).
    pub fn idle(mut self, per_origin: usize, idle: Duration) -> Self {
        self.idle_per_origin = per_origin;
        self.idle_timeout = idle;
        self
    }

    /// Refuse response bodies larger than this (default 64 MiB).
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// HTTPS with this connector (its trusted roots, client certificate). By default the
    /// client trusts the web's roots (webpki-roots).
    pub fn tls(mut self, connector: TlsConnector) -> Self {
        self.tls = Some(connector);
        self
    }

    /// The client.
    pub fn build(self) -> Client {
        let idle = Idle::new(self.idle_per_origin, self.idle_timeout);
        Client {
            inner: Arc::new(Inner { config: self, idle }),
        }
    }
}

struct Inner {
    config: ClientBuilder,
    idle: Idle,
}

/// A TLS connector that trusts the web's roots (webpki-roots), made once.
pub(crate) fn web_roots() -> &'static TlsConnector {
    static CONNECTOR: std::sync::OnceLock<TlsConnector> = std::sync::OnceLock::new();
    CONNECTOR.get_or_init(|| {
        let roots = greenhub_tls::rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let config = greenhub_tls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsConnector::new(Arc::new(config))
    })
}

/// A green HTTP client. A handle: clones share the idle connections; share one across the
/// green threads of a program.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("idle_connections", &self.inner.idle.count())
            .finish()
    }
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A client with the default settings (see [`ClientBuilder`]).
    pub fn new() -> Client {
        ClientBuilder::default().build()
    }

    /// A builder for a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Idle connections kept now.
    pub fn idle_connections(&self) -> usize {
        self.inner.idle.count()
    }

    /// A GET request to `url`.
    pub fn get(&self, url: &str) -> RequestBuilder<'_> {
        self.request(Method::GET, url)
    }

    /// A POST request to `url`.
    pub fn post(&self, url: &str) -> RequestBuilder<'_> {
        self.request(Method::POST, url)
    }

    /// A request with `method` to `url`.
    pub fn request(&self, method: Method, url: &str) -> RequestBuilder<'_> {
        RequestBuilder {
            client: self,
            method,
            url: url.to_string(),
            headers: HeaderMap::new(),
            body: RequestBody::Empty,
            timeout: self.inner.config.timeout,
            error: None,
        }
    }

    fn tls(&self) -> &TlsConnector {
        match &self.inner.config.tls {
            Some(c) => c,
            None => web_roots(),
        }
    }

    fn connect(&self, origin: &Origin) -> Result<Conn, ClientError> {
        let connect_timeout = self.inner.config.connect_timeout;
        greenhub::with_timeout(connect_timeout, || {
            let tcp = TcpStream::connect((origin.host.clone(), origin.port)).map_err(|source| {
                if source.kind() == io::ErrorKind::TimedOut {
                    ClientError::TimedOut
                } else {
                    ClientError::Connect {
                        host: origin.host.clone(),
                        port: origin.port,
                        source,
                    }
                }
            })?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Stream> = if origin.tls {
                let tls = self
                    .tls()
                    .connect(&origin.host, tcp)
                    .map_err(|source| match source {
                        greenhub_tls::TlsError::TimedOut => ClientError::TimedOut,
                        source => ClientError::Tls {
                            host: origin.host.clone(),
                            source,
                        },
                    })?;
                Box::new(tls)
            } else {
                Box::new(tcp)
            };
            Ok(Wire::new(io, 4096, 64 * 1024))
        })
    }
}

enum RequestBody {
    Empty,
    Bytes(Vec<u8>),
    Stream(Box<dyn Read + Send>),
}

/// A request being built: headers, body, timeout; [`RequestBuilder::send`] sends it.
pub struct RequestBuilder<'c> {
    client: &'c Client,
    method: Method,
    url: String,
    headers: HeaderMap,
    body: RequestBody,
    timeout: Option<Duration>,
    error: Option<ClientError>,
}

impl std::fmt::Debug for RequestBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("method", &self.method)
            .field("url", &self.url)
            .finish()
    }
}

impl RequestBuilder<'_> {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => self.error = Some(ClientError::InvalidHeader(format!("{name}: {value}"))),
        }
        self
    }

    /// Sends these bytes as the body, with a `Content-Length`.
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = RequestBody::Bytes(bytes.into());
        self
    }

    /// Sends what `reader` gives as the body, chunked. A redirect that must resend the body
    /// (307, 308) is returned as it is, since the stream cannot be read twice.
    pub fn body_stream(mut self, reader: impl Read + Send + 'static) -> Self {
        self.body = RequestBody::Stream(Box::new(reader));
        self
    }

    /// Sends `value` as a JSON body.
    pub fn json<T: serde::Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(b) => {
                self.headers
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                self.body = RequestBody::Bytes(b);
            }
            Err(e) => self.error = Some(ClientError::Json(e)),
        }
        self
    }

    /// This request within `timeout` instead of the client's.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request and reads the whole response (following redirects).
    pub fn send(self) -> Result<Response, ClientError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        match self.timeout {
            Some(t) => greenhub::with_timeout(t, || send(self)),
            None => send(self),
        }
    }
}

fn parse_url(url: &str) -> Result<(Origin, String, Uri), ClientError> {
    let uri: Uri = url
        .parse()
        .map_err(|_| ClientError::InvalidUrl(url.to_string()))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(ClientError::InvalidUrl(url.to_string())),
    };
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ClientError::InvalidUrl(url.to_string()))?;
    // An IPv6 literal comes bracketed; the socket wants it bare.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let target = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".to_string());
    Ok((Origin { tls, host, port }, target, uri))
}

/// Where a redirect's `Location` points, from the URL that answered it.
fn resolve(base: &Uri, location: &str) -> String {
    if location.contains("://") {
        return location.to_string();
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or("");
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    // A new query (or fragment) for the same path.
    if location.starts_with('?') || location.starts_with('#') {
        return format!("{scheme}://{authority}{}{location}", base.path());
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let path = base.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{authority}{dir}{location}")
}

fn send(mut req: RequestBuilder<'_>) -> Result<Response, ClientError> {
    let client = req.client;
    let config = &client.inner.config;
    let limits = HeadLimits {
        line: 64 * 1024,
        head: 64 * 1024,
        fields: crate::wire::head::MAX_FIELDS,
    };
    let mut url = req.url.clone();
    let mut redirects = 0u32;
    loop {
        let (origin, target, uri) = parse_url(&url)?;
        let received = {
            let mut attempt = 0;
            loop {
                attempt += 1;
                // A retry makes a new connection: the other kept ones may be as stale.
                let kept = if attempt == 1 {
                    client.inner.idle.take(&origin)
                } else {
                    None
                };
                let (mut conn, reused) = match kept {
                    Some(c) => (c, true),
                    None => (client.connect(&origin)?, false),
                };
                // Tried again only if sending twice is safe and possible.
                let idempotent =
                    !matches!(req.body, RequestBody::Stream(_)) && req.method.is_idempotent();
                let body = match &mut req.body {
                    RequestBody::Empty => Outgoing::Empty,
                    RequestBody::Bytes(b) => Outgoing::Bytes(b),
                    RequestBody::Stream(r) => Outgoing::Stream(&mut **r),
                };
                match exchange::exchange(
                    &mut conn,
                    reused,
                    &req.method,
                    &origin,
                    &target,
                    &req.headers,
                    body,
                    &limits,
                    config.max_body,
                ) {
                    Ok(r) => {
                        if r.reusable {
                            client.inner.idle.put(origin.clone(), conn);
                        }
                        break r;
                    }
                    // A kept connection the server had closed meanwhile: once more, anew.
                    Err(Failed { retry: true, .. }) if attempt == 1 && idempotent => continue,
                    Err(Failed { error, .. }) => return Err(from_io(error)),
                }
            }
        };
        let Received {
            status,
            version,
            headers,
            body,
            ..
        } = received;
        let location = headers.get(LOCATION).and_then(|l| l.to_str().ok());
        if status.is_redirection()
            && status != StatusCode::NOT_MODIFIED
            && let Some(location) = location
            && config.max_redirects > 0
        {
            if redirects >= config.max_redirects {
                return Err(ClientError::TooManyRedirects(config.max_redirects));
            }
            let keeps_body = status == StatusCode::TEMPORARY_REDIRECT
                || status == StatusCode::PERMANENT_REDIRECT;
            if keeps_body && matches!(req.body, RequestBody::Stream(_)) {
                return Ok(Response {
                    status,
                    version,
                    headers,
                    body,
                    url,
                });
            }
            let next = resolve(&uri, location);
            if !keeps_body && req.method != Method::HEAD {
                req.method = Method::GET;
                req.body = RequestBody::Empty;
                req.headers.remove(CONTENT_TYPE);
            }
            // Credentials, and a Host set by the caller, stay with their origin.
            if let Ok((next_origin, _, _)) = parse_url(&next)
                && next_origin != origin
            {
                req.headers.remove(AUTHORIZATION);
                req.headers.remove(http::header::HOST);
            }
            redirects += 1;
            url = next;
            continue;
        }
        return Ok(Response {
            status,
            version,
            headers,
            body,
            url,
        });
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Response {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Vec<u8>,
    url: String,
}

impl Response {
    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The HTTP version the server answered with.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The URL that gave this response (after redirects).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The body.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body, taken.
    pub fn into_bytes(self) -> Vec<u8> {
        self.body
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        serde_json::from_slice(&self.body).map_err(ClientError::Json)
    }
}
