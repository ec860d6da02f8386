//! Bodies: [`Body`], a request's, read as a stream or whole (bytes, text, JSON); and
//! [`Payload`], a response's: bytes, a stream sent chunked, or a file.

use std::fs::File;
use std::io::{self, Read};

use bytes::Bytes;
use http::StatusCode;
use thiserror::Error;

/// The body of a request: read it as a stream (`Read`) or whole ([`Body::bytes`],
/// [`Body::text`], [`Body::json`]). It reads from the connection as it goes, bounded by the
/// server's body size and time limits; what the handler leaves unread is skipped (or the
/// connection closed) after it answers.
pub struct Body<'a> {
    src: Option<&'a mut dyn Read>,
    length: Option<u64>,
}

impl std::fmt::Debug for Body<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("length", &self.length)
            .finish()
    }
}

impl Body<'static> {
    /// No body.
    pub fn empty() -> Body<'static> {
        Body {
            src: None,
            length: Some(0),
        }
    }
}

impl<'a> Body<'a> {
    /// A body read from `src`, of `length` bytes if known: for calling a handler directly
    /// (in a test).
    ///
    /// ```
    /// use greenhub_http::Body;
    ///
    /// let mut src: &[u8] = b"{\"n\": 3}";
    /// let mut body = Body::new(&mut src, None);
    /// let v: serde_json::Value = body.json().unwrap();
    /// assert_eq!(v["n"], 3);
    /// ```
    pub fn new(src: &'a mut dyn Read, length: Option<u64>) -> Body<'a> {
        Body {
            src: Some(src),
            length,
        }
    }

    /// The length the client announced (`Content-Length`); `None` for a chunked body.
    pub fn content_length(&self) -> Option<u64> {
        self.length
    }

    /// The whole body.
    pub fn bytes(&mut self) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::with_capacity(self.length.unwrap_or(0).min(1 << 20) as usize);
        self.read_to_end(&mut out).map_err(BodyError::from_io)?;
        Ok(out)
    }

    /// The whole body as UTF-8 text.
    pub fn text(&mut self) -> Result<String, BodyError> {
        String::from_utf8(self.bytes()?).map_err(|_| BodyError::NotUtf8)
    }

    /// The whole body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, BodyError> {
        serde_json::from_slice(&self.bytes()?).map_err(BodyError::Json)
    }
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.src {
            Some(src) => src.read(buf),
            None => Ok(0),
        }
    }
}

/// The server's body size limit, passed through `io::Error` so that a handler reading the
/// body as a stream sees an error and [`Body::bytes`] can say which.
#[derive(Debug, Error)]
#[error("the request body is larger than the server's limit of {limit} bytes")]
pub(crate) struct TooLarge {
    pub limit: u64,
}

/// Why a request body could not be read.
#[derive(Debug, Error)]
pub enum BodyError {
    /// Larger than the server's body limit (`Limits::body`). Answer 413.
    #[error("the request body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The client sent it too slowly: the server's body time limit passed. Answer 408.
    #[error("the request body did not arrive within the time limit")]
    TimedOut,
    /// The client closed the connection before the end of the body.
    #[error("the client closed the connection in the middle of the body")]
    Incomplete,
    /// Malformed chunked coding. Answer 400.
    #[error("malformed request body: {0}")]
    Malformed(String),
    /// Not UTF-8 ([`Body::text`]). Answer 400.
    #[error("the request body is not UTF-8 text")]
    NotUtf8,
    /// Not the JSON the handler expects ([`Body::json`]). Answer 400 (or 422).
    #[error("the request body is not the expected JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// Another error of the connection.
    #[error("reading the request body failed: {0}")]
    Io(#[source] io::Error),
}

impl BodyError {
    fn from_io(e: io::Error) -> BodyError {
        if let Some(t) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<TooLarge>())
        {
            return BodyError::TooLarge { limit: t.limit };
        }
        match e.kind() {
            io::ErrorKind::TimedOut => BodyError::TimedOut,
            io::ErrorKind::UnexpectedEof => BodyError::Incomplete,
            io::ErrorKind::InvalidData => BodyError::Malformed(e.to_string()),
            _ => BodyError::Io(e),
        }
    }

    /// The status to answer with.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::TimedOut => StatusCode::REQUEST_TIMEOUT,
            BodyError::Incomplete | BodyError::Malformed(_) => StatusCode::BAD_REQUEST,
            BodyError::NotUtf8 | BodyError::Json(_) => StatusCode::BAD_REQUEST,
            BodyError::Io(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A plain-text response that says what went wrong, with [`BodyError::status`].
    pub fn response(&self) -> http::Response<Payload> {
        let mut r = http::Response::new(Payload::from(format!("{self}\n")));
        *r.status_mut() = self.status();
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    }
}

/// What a response carries.
pub enum Payload {
    /// Nothing.
    Empty,
    /// These bytes, with a `Content-Length`.
    Bytes(Bytes),
    /// What the reader gives until its end, sent chunked (to an HTTP/1.0 client: until the
    /// connection closes). The reader runs in the connection's green thread: a blocking
    /// reader blocks its worker.
    Stream(Box<dyn Read + Send>),
    /// A file's first `len` bytes, with a `Content-Length`, read off the worker threads.
    File {
        /// The open file.
        file: File,
        /// Its length (what the response says).
        len: u64,
    },
    /// The connection, handed to the function once the `101 Switching Protocols` head is
    /// out (a WebSocket, say).
    Upgrade(Box<dyn FnOnce(crate::wire::Upgraded) + Send>),
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payload::Empty => f.write_str("Empty"),
            Payload::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Payload::Stream(_) => f.write_str("Stream"),
            Payload::File { len, .. } => write!(f, "File({len} bytes)"),
            Payload::Upgrade(_) => f.write_str("Upgrade"),
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Payload {
        Payload::Bytes(v.into())
    }
}

impl From<String> for Payload {
    fn from(s: String) -> Payload {
        Payload::Bytes(s.into())
    }
}

impl From<&'static str> for Payload {
    fn from(s: &'static str) -> Payload {
        Payload::Bytes(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&'static [u8]> for Payload {
    fn from(s: &'static [u8]) -> Payload {
        Payload::Bytes(Bytes::from_static(s))
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Payload {
        Payload::Bytes(b)
    }
}
